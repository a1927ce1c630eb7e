package org.blockhaus.launcher;

import java.io.IOException;
import java.nio.channels.FileChannel;
import java.nio.channels.FileLock;
import java.nio.channels.OverlappingFileLockException;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.time.Duration;
import java.time.Instant;

/**
 * Removes framework storage left behind by launcher processes that were killed outright
 * (SIGKILL skips the shutdown hook). Felix holds a file lock on {@code cache.lock} for as long
 * as its framework lives, so a directory whose lock can be taken belongs to a dead process.
 */
final class StaleStorage {
    static final String PREFIX = "blk-osgi-";
    /** A directory without a lock file may be a launcher between creating it and starting Felix. */
    static final Duration UNLOCKED_GRACE = Duration.ofMinutes(10);

    private StaleStorage() {
    }

    /** Sweeps {@code tmp} for dead launchers' storage, skipping {@code own}; never throws. */
    static void sweep(Path tmp, Path own) {
        try (DirectoryStream<Path> dirs = Files.newDirectoryStream(tmp, PREFIX + "*")) {
            for (Path dir : dirs) {
                if (!dir.equals(own) && Files.isDirectory(dir) && isAbandoned(dir)) {
                    Main.deleteTree(dir);
                }
            }
        } catch (IOException | RuntimeException ignored) {
            // best effort: a leftover directory costs a little disk, never correctness
        }
    }

    static boolean isAbandoned(Path dir) throws IOException {
        Path lock = dir.resolve("cache.lock");
        if (!Files.exists(lock)) {
            return Files.getLastModifiedTime(dir).toInstant().isBefore(Instant.now().minus(UNLOCKED_GRACE));
        }
        try (FileChannel ch = FileChannel.open(lock, StandardOpenOption.WRITE)) {
            FileLock l = ch.tryLock();
            if (l == null) {
                return false; // a live framework holds it
            }
            l.release();
            return true;
        } catch (OverlappingFileLockException e) {
            return false; // held inside this JVM
        }
    }
}
