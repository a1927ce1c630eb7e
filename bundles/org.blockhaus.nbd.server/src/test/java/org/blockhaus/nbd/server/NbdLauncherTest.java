package org.blockhaus.nbd.server;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.zip.ZipFile;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code blk nbd} end to end through the real launcher ({@code features/target/full}): a separate
 * JVM serves, is stopped by SIGTERM ({@link Process#destroy()}), and leaves the image flushed,
 * closed and unlocked; {@code --fork} returns once the child listens and writes its pid file.
 *
 * <p>The feature is built after the bundles in the reactor, so this test needs a previous
 * {@code mvn install} of features/full; without it (or with one that predates {@code blk nbd}) it
 * fails and says so.
 */
@Timeout(value = 180, unit = TimeUnit.SECONDS)
class NbdLauncherTest {
    @TempDir
    Path dir;
    private final List<ProcessHandle> started = new ArrayList<>();

    @AfterEach
    void killEverything() throws Exception {
        for (ProcessHandle h : started) {
            h.destroy();
        }
        for (ProcessHandle h : started) {
            try {
                h.onExit().get(20, TimeUnit.SECONDS);
            } catch (Exception e) {
                h.destroyForcibly();
            }
        }
    }

    private static Path launcherJar() throws Exception {
        Path full = Path.of("").toAbsolutePath().resolve("../../features/target/full").normalize();
        Path jar = full.resolve("org.blockhaus.launcher.jar");
        Path bundle = full.resolve("bundles/org.blockhaus.nbd.server.jar");
        if (!Files.isRegularFile(jar) || !Files.isRegularFile(bundle)) {
            throw new AssertionError("the full feature is not built (" + jar + "): run"
                    + " `mvn -q -B install -Dmaven.test.skip=true -pl features/full -am` first");
        }
        try (ZipFile z = new ZipFile(bundle.toFile())) {
            if (z.getEntry("org/blockhaus/nbd/server/impl/NbdCommand.class") == null) {
                throw new AssertionError(bundle + " predates `blk nbd`: rebuild the feature with"
                        + " `mvn -q -B install -Dmaven.test.skip=true -pl features/full -am`");
            }
        }
        return jar;
    }

    private List<String> blk(String... args) throws Exception {
        String java = ProcessHandle.current().info().command().orElseThrow();
        List<String> cmd = new ArrayList<>(List.of(java, "--sun-misc-unsafe-memory-access=allow",
                "--enable-native-access=ALL-UNNAMED", "-Dblk.deploy=" + dir.resolve("deploy"), "-jar",
                launcherJar().toString(), "nbd"));
        cmd.addAll(List.of(args));
        return cmd;
    }

    private Path image() throws Exception {
        Path img = dir.resolve("disk.qcow2");
        Peers.check(Peers.require("qemu-img", "qemu-utils"), "create", "-q", "-f", "qcow2", img.toString(), "16M");
        return img;
    }

    private static void await(Path file, Process p) throws Exception {
        long deadline = System.nanoTime() + Duration.ofSeconds(60).toNanos();
        while (!Files.exists(file) || Files.size(file) == 0 && !file.toString().endsWith(".sock")) {
            if (p != null && !p.isAlive()) {
                throw new AssertionError("blk nbd exited with " + p.exitValue() + ": "
                        + new String(p.getErrorStream().readAllBytes(), StandardCharsets.UTF_8));
            }
            assertTrue(System.nanoTime() < deadline, "nothing at " + file);
            Thread.sleep(20);
        }
    }

    @Test
    void sigtermFlushesClosesAndUnlocks() throws Exception {
        Path img = image();
        Path sock = dir.resolve("l.sock");
        Process p = new ProcessBuilder(blk("--persistent", "-k", sock.toString(), "-x", "disk", "-f", "qcow2",
                img.toString())).redirectOutput(dir.resolve("out.log").toFile())
                .redirectError(dir.resolve("err.log").toFile()).start();
        started.add(p.toHandle());
        await(sock, p);
        String uri = "nbd+unix:///disk?socket=" + sock;
        Peers.check(Peers.require("qemu-io", "qemu-utils"), "-f", "raw", "-c", "write -P 0x3c 5M 1M", uri);
        // while it serves, the image is locked against a second writer: the launcher's process as well
        Peers.Result second = Peers.run(blk("-k", dir.resolve("m.sock").toString(), img.toString())
                .toArray(String[]::new));
        assertEquals(1, second.exit(), second.out());
        assertTrue(second.out().contains("qemu-nbd: Failed to blk_new_open '" + img + "': Failed to get \"write\""
                + " lock\nIs another process using the image [" + img + "]?"), second.out());

        p.destroy(); // SIGTERM
        assertTrue(p.waitFor(30, TimeUnit.SECONDS), "blk nbd did not exit on SIGTERM");
        assertFalse(Files.exists(sock), "socket left behind");
        String info = Peers.check(Peers.require("qemu-img", "qemu-utils"), "info", img.toString()).out();
        assertTrue(info.contains("file format: qcow2"), info);
        Peers.check(Peers.require("qemu-img", "qemu-utils"), "check", img.toString());
        Peers.check(Peers.require("qemu-io", "qemu-utils"), "-f", "qcow2", "-c", "read -P 0x3c 5M 1M",
                img.toString());
        String log = Files.readString(dir.resolve("err.log"));
        assertFalse(log.contains("Exception"), log);
    }

    @Test
    void forkReturnsOnceTheChildListensAndWritesItsPid() throws Exception {
        Path img = image();
        int port = Peers.freePort();
        Path pid = dir.resolve("nbd.pid");
        Peers.Result parent = Peers.run(blk("--fork", "-t", "--pid-file=" + pid, "-b", "127.0.0.1", "-p",
                String.valueOf(port), img.toString()).toArray(String[]::new));
        assertEquals(0, parent.exit(), parent.out());
        long childPid = Long.parseLong(Files.readString(pid).trim());
        ProcessHandle child = ProcessHandle.of(childPid).orElseThrow(() -> new AssertionError("no process " + childPid));
        started.add(child);
        String uri = "nbd://127.0.0.1:" + port + "/";
        Peers.check(Peers.require("qemu-io", "qemu-utils"), "-f", "raw", "-c", "write -P 0x11 0 64k", uri);
        Peers.check(Peers.require("qemu-img", "qemu-utils"), "info", uri);
        child.destroy(); // kill $(cat pid)
        child.onExit().get(30, TimeUnit.SECONDS);
        Peers.check(Peers.require("qemu-img", "qemu-utils"), "check", img.toString());
        Peers.check(Peers.require("qemu-io", "qemu-utils"), "-f", "qcow2", "-c", "read -P 0x11 0 64k",
                img.toString());
    }

    @Test
    void forkReportsTheChildsFailure() throws Exception {
        Peers.Result r = Peers.run(blk("--fork", "-k", dir.resolve("f.sock").toString(),
                dir.resolve("missing.qcow2").toString()).toArray(String[]::new));
        assertEquals(1, r.exit(), r.out());
        assertTrue(r.out().contains("qemu-nbd: Failed to blk_new_open '" + dir.resolve("missing.qcow2")
                + "': Could not open '" + dir.resolve("missing.qcow2") + "': No such file or directory"), r.out());
    }
}
