package org.blockhaus.launcher;

import java.io.IOException;
import java.net.URISyntaxException;
import java.nio.file.Files;
import java.nio.file.Path;

/**
 * {@code java -jar org.blockhaus.launcher.jar [qemu-img arguments]}: runs the feature directory
 * this jar sits in (see features/pom.xml for its layout).
 *
 * <ul>
 * <li>With arguments (CLI mode) it calls the shell bundle's {@code CommandLine} service once,
 * prints nothing of its own and exits with the command's exit code, as qemu-img does.</li>
 * <li>Without arguments it opens the interactive Gogo shell; {@code exit} or Ctrl-D stops it.
 * A deploy directory is watched meanwhile: jars dropped in are installed and started, jars
 * removed are uninstalled.</li>
 * </ul>
 *
 * System properties: {@code blk.home} (feature directory; default: where this jar is),
 * {@code blk.deploy} (or env {@code BLK_DEPLOY}: the deploy directory; none by default),
 * {@code blk.wait} (seconds to wait for the shell service, default 10),
 * {@code blk.verbose=true} (start-up timings on stderr).
 */
public final class Main {
    private Main() {
    }

    public static void main(String[] args) {
        int code;
        try {
            code = new Launcher(settings()).run(args);
        } catch (LaunchException e) {
            System.err.println("blk: " + e.getMessage());
            code = 1;
        }
        System.out.flush();
        System.err.flush();
        System.exit(code);
    }

    static Launcher.Settings settings() throws LaunchException {
        Path home = System.getProperty("blk.home") != null ? Path.of(System.getProperty("blk.home")) : jarDirectory();
        String deploy = System.getProperty("blk.deploy", System.getenv("BLK_DEPLOY"));
        long waitSeconds;
        try {
            waitSeconds = Long.parseLong(System.getProperty("blk.wait", "10"));
        } catch (NumberFormatException e) {
            throw new LaunchException("blk.wait must be a number of seconds");
        }
        if (!Files.isDirectory(home.resolve("bundles"))) {
            throw new LaunchException("no feature at " + home + " (missing bundles/): build it with"
                    + " 'mvn -q -B install -DskipTests' or set -Dblk.home");
        }
        return new Launcher.Settings(home.toAbsolutePath().normalize(),
                deploy == null || deploy.isBlank() ? null : Path.of(deploy).toAbsolutePath().normalize(),
                waitSeconds * 1000, Boolean.getBoolean("blk.verbose"));
    }

    private static Path jarDirectory() throws LaunchException {
        try {
            Path self = Path.of(Main.class.getProtectionDomain().getCodeSource().getLocation().toURI());
            return Files.isDirectory(self) ? self : self.getParent();
        } catch (URISyntaxException | SecurityException e) {
            throw new LaunchException("cannot tell where the launcher jar is; set -Dblk.home: " + e.getMessage());
        }
    }

    /** Recursively deletes {@code dir}; best effort (used for the framework's temporary storage). */
    static void deleteTree(Path dir) {
        if (dir == null || !Files.exists(dir)) {
            return;
        }
        try (var walk = Files.walk(dir)) {
            walk.sorted(java.util.Comparator.reverseOrder()).forEach(p -> {
                try {
                    Files.deleteIfExists(p);
                } catch (IOException ignored) {
                    // a file still held open; the rest goes
                }
            });
        } catch (IOException ignored) {
            // nothing more to do
        }
    }
}
