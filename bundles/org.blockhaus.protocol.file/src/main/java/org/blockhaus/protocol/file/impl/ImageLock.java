package org.blockhaus.protocol.file.impl;

import java.io.IOException;
import java.nio.channels.FileChannel;
import java.nio.channels.FileLock;
import java.nio.channels.OverlappingFileLockException;
import java.util.HashMap;
import java.util.Map;
import java.util.Set;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.spi.Permission;

/**
 * QEMU's image locking (block/file-posix.c, docs/system/qemu-block-drivers "Image locking"):
 * one byte per permission. A user holding permission {@code bit} read-locks byte
 * {@code 100 + bit}; a user that does not let others have it read-locks byte {@code 200 + bit}.
 * Read locks never block each other, so taking ours always works; a conflict is found by asking
 * whether a write lock could be taken on the byte that matters: for each permission we hold, the
 * other side's "not shared" byte, and for each permission we refuse to share, the other side's
 * "held" byte. QEMU takes the locks first and checks afterwards, so two openers racing each
 * other both see the conflict; we do the same.
 *
 * <p>The locks are Linux open-file-description (OFD) locks, the kind QEMU uses, on a descriptor
 * of our own, so they do not depend on Java's FileChannel and are not lost when some other
 * descriptor of the file is closed. Where OFD locks cannot be used (no native access), POSIX
 * locks through {@link FileChannel#tryLock} stand in, as QEMU falls back to F_SETLK: they
 * conflict with QEMU's OFD locks, but are per process and vanish when any descriptor of the file
 * in this JVM is closed.
 */
final class ImageLock implements AutoCloseable {
    static final int PERM_BASE = 100;
    static final int SHARED_BASE = 200;

    /** One way of taking and testing single-byte read locks. */
    interface Bytes {
        void readLock(long at) throws IOException;

        void unlock(long at) throws IOException;

        /** True when somebody else holds a lock on the byte that a write lock would collide with. */
        boolean lockedByOthers(long at) throws IOException;

        default void close() {
        }
    }

    private final Bytes bytes;
    private final String filename;
    private final Set<Long> held = new java.util.TreeSet<>();

    private ImageLock(Bytes bytes, String filename) {
        this.bytes = bytes;
        this.filename = filename;
    }

    /**
     * Locks the bytes for {@code perm}/{@code shared} and checks for conflicts; on a conflict
     * releases everything and throws {@link Reason#LOCKED} with QEMU's words.
     */
    static ImageLock acquire(Bytes bytes, String filename, Set<Permission> perm, Set<Permission> shared)
            throws BlockException {
        ImageLock lock = new ImageLock(bytes, filename);
        try {
            lock.apply(perm, shared);
            lock.check(perm, shared);
        } catch (BlockException | RuntimeException e) {
            lock.close();
            throw e;
        }
        return lock;
    }

    /**
     * Moves to new permissions: takes the new bytes first and checks for conflicts, and only then
     * drops bytes no longer needed, so there is no moment without protection. On a conflict the
     * lock is back where it was.
     */
    void update(Set<Permission> perm, Set<Permission> shared) throws BlockException {
        Set<Long> before = Set.copyOf(held);
        try {
            for (Permission p : Permission.values()) {
                if (perm.contains(p)) {
                    set(PERM_BASE + p.bit(), true);
                }
                if (!shared.contains(p)) {
                    set(SHARED_BASE + p.bit(), true);
                }
            }
            check(perm, shared);
        } catch (BlockException | RuntimeException e) {
            for (Long at : Set.copyOf(held)) {
                if (!before.contains(at)) {
                    try {
                        set(at, false);
                    } catch (BlockException ignored) {
                        // the conflict is what the caller needs to hear about
                    }
                }
            }
            throw e;
        }
        apply(perm, shared);
    }

    private void apply(Set<Permission> perm, Set<Permission> shared) throws BlockException {
        for (Permission p : Permission.values()) {
            set(PERM_BASE + p.bit(), perm.contains(p));
            set(SHARED_BASE + p.bit(), !shared.contains(p));
        }
    }

    private void set(long at, boolean locked) throws BlockException {
        try {
            if (locked && !held.contains(at)) {
                bytes.readLock(at);
                held.add(at);
            } else if (!locked && held.contains(at)) {
                bytes.unlock(at);
                held.remove(at);
            }
        } catch (IOException e) {
            throw new BlockException(Reason.LOCKED, "Failed to lock byte " + at + ": " + e.getMessage(), e);
        }
    }

    private void check(Set<Permission> perm, Set<Permission> shared) throws BlockException {
        try {
            for (Permission p : Permission.values()) {
                if (perm.contains(p) && bytes.lockedByOthers(SHARED_BASE + p.bit())) {
                    throw conflict("Failed to get \"" + p.qemuName() + "\" lock");
                }
            }
            for (Permission p : Permission.values()) {
                if (!shared.contains(p) && bytes.lockedByOthers(PERM_BASE + p.bit())) {
                    throw conflict("Failed to get shared \"" + p.qemuName() + "\" lock");
                }
            }
        } catch (IOException e) {
            throw new BlockException(Reason.LOCKED, "Failed to check lock bytes: " + e.getMessage(), e);
        }
    }

    private BlockException conflict(String what) {
        return new BlockException(Reason.LOCKED, what + "\nIs another process using the image [" + filename + "]?");
    }

    /** The bytes this lock holds, for tests and diagnostics. */
    Set<Long> heldBytes() {
        return Set.copyOf(held);
    }

    @Override
    public void close() {
        for (Long at : held) {
            try {
                bytes.unlock(at);
            } catch (IOException ignored) {
                // closing the descriptor drops the lock anyway
            }
        }
        held.clear();
        bytes.close();
    }

    /** OFD locks on a descriptor of our own (what QEMU uses). */
    static Bytes ofd(Native nat, int fd) {
        return new Bytes() {
            @Override
            public void readLock(long at) throws IOException {
                call(() -> nat.setOfdLock(fd, Native.F_RDLCK, at, 1));
            }

            @Override
            public void unlock(long at) throws IOException {
                call(() -> nat.setOfdLock(fd, Native.F_UNLCK, at, 1));
            }

            @Override
            public boolean lockedByOthers(long at) throws IOException {
                short[] type = new short[1];
                call(() -> type[0] = nat.testOfdLock(fd, Native.F_WRLCK, at, 1));
                return type[0] != Native.F_UNLCK;
            }
        };
    }

    private interface Call {
        void run() throws Native.Errno;
    }

    private static void call(Call c) throws IOException {
        try {
            c.run();
        } catch (Native.Errno e) {
            throw new IOException(e.getMessage(), e);
        }
    }

    /**
     * POSIX locks through the FileChannel, the fallback. A conflict test needs a write lock, so
     * it needs a channel open for writing: {@code probe} (may be the node's own channel); without
     * one, conflicts cannot be seen and {@link #lockedByOthers} answers false.
     */
    static Bytes posix(FileChannel channel, FileChannel probe) {
        return new Bytes() {
            private final Map<Long, FileLock> locks = new HashMap<>();

            @Override
            public void readLock(long at) throws IOException {
                try {
                    FileLock l = channel.tryLock(at, 1, true);
                    if (l == null) {
                        throw new IOException("byte " + at + " is write-locked by another process");
                    }
                    locks.put(at, l);
                } catch (OverlappingFileLockException e) {
                    // another node of this JVM holds it; POSIX locks are per process anyway
                }
            }

            @Override
            public void unlock(long at) throws IOException {
                FileLock l = locks.remove(at);
                if (l != null && l.isValid()) {
                    l.release();
                }
            }

            @Override
            public boolean lockedByOthers(long at) throws IOException {
                if (probe == null) {
                    return false;
                }
                try {
                    FileLock l = probe.tryLock(at, 1, false);
                    if (l == null) {
                        return true;
                    }
                    l.release();
                    return false;
                } catch (OverlappingFileLockException e) {
                    return false; // only this JVM holds it: POSIX locks cannot conflict within a process
                }
            }
        };
    }
}
