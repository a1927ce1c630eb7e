package org.blockhaus.itests;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;

import java.io.IOException;
import java.net.ServerSocket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.After;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;
import org.junit.rules.Timeout;

/**
 * {@code ./blk nbd} end to end through the real launcher of the full feature: a separate JVM
 * serves, is stopped by SIGTERM ({@link Process#destroy()}), and leaves the image flushed, closed
 * and unlocked; {@code --fork} returns once the child listens and wrote its pid file. (Here, not
 * in the NBD server bundle: the reactor builds the feature after the bundles, before the itests.)
 */
public class NbdLauncherIT {
    @Rule
    public TemporaryFolder tmp = new TemporaryFolder();
    @Rule
    public Timeout timeout = Timeout.seconds(180);

    private final List<ProcessHandle> started = new ArrayList<>();

    /** What a finished process printed (stdout and stderr together) and its exit code. */
    record Result(int exit, String out) {
    }

    @After
    public void killEverything() {
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

    private Path dir() {
        return tmp.getRoot().toPath();
    }

    private static String tool(String name) {
        for (String d : List.of("/usr/bin", "/usr/local/bin", "/bin", "/usr/sbin")) {
            Path p = Path.of(d, name);
            if (Files.isExecutable(p)) {
                return p.toString();
            }
        }
        throw new AssertionError(name + " not found; install qemu-utils (see .ci/run)");
    }

    private static Result run(List<String> cmd) throws IOException, InterruptedException {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        byte[] out = p.getInputStream().readAllBytes();
        if (!p.waitFor(120, TimeUnit.SECONDS)) {
            p.destroyForcibly();
            throw new AssertionError("timed out: " + cmd);
        }
        return new Result(p.exitValue(), new String(out, StandardCharsets.UTF_8));
    }

    private static Result ok(String... cmd) throws IOException, InterruptedException {
        List<String> c = new ArrayList<>(List.of(cmd));
        c.set(0, tool(cmd[0]));
        Result r = run(c);
        if (r.exit() != 0) {
            throw new AssertionError(String.join(" ", cmd) + " failed (" + r.exit() + "): " + r.out());
        }
        return r;
    }

    private static int freePort() throws IOException {
        try (ServerSocket s = new ServerSocket(0, 1, java.net.InetAddress.getLoopbackAddress())) {
            return s.getLocalPort();
        }
    }

    private List<String> blk(String... args) {
        return blkCommand("nbd", args);
    }

    private List<String> blkCommand(String command, String... args) {
        Path full = Path.of(System.getProperty("blk.itest.feature.full", "../features/target/full"));
        Path jar = full.resolve("org.blockhaus.launcher.jar");
        if (!Files.isRegularFile(jar)) {
            throw new AssertionError("the full feature is not built: " + jar);
        }
        String java = ProcessHandle.current().info().command().orElseThrow();
        List<String> cmd = new ArrayList<>(List.of(java, "--sun-misc-unsafe-memory-access=allow",
                "--enable-native-access=ALL-UNNAMED", "-Dblk.deploy=" + dir().resolve("deploy"), "-jar",
                jar.toString(), command));
        cmd.addAll(List.of(args));
        return cmd;
    }

    private Path image() throws Exception {
        Path img = dir().resolve("disk.qcow2");
        ok("qemu-img", "create", "-q", "-f", "qcow2", img.toString(), "16M");
        return img;
    }

    /** Waits until the unix socket accepts: the file exists from bind(), a moment before listen(). */
    private static void await(Path file, Process p) throws Exception {
        long deadline = System.nanoTime() + Duration.ofSeconds(60).toNanos();
        while (!accepts(file)) {
            if (!p.isAlive()) {
                throw new AssertionError("blk nbd exited with " + p.exitValue());
            }
            assertTrue("nothing at " + file, System.nanoTime() < deadline);
            Thread.sleep(20);
        }
    }

    private static boolean accepts(Path socket) {
        if (!Files.exists(socket)) {
            return false;
        }
        try (java.nio.channels.SocketChannel c = java.nio.channels.SocketChannel.open(
                java.net.UnixDomainSocketAddress.of(socket))) {
            return true;
        } catch (IOException e) {
            return false;
        }
    }

    @Test
    public void sigtermFlushesClosesAndUnlocks() throws Exception {
        Path img = image();
        Path sock = dir().resolve("l.sock");
        Process p = new ProcessBuilder(blk("--persistent", "-k", sock.toString(), "-x", "disk", "-f", "qcow2",
                img.toString())).redirectOutput(dir().resolve("out.log").toFile())
                .redirectError(dir().resolve("err.log").toFile()).start();
        started.add(p.toHandle());
        await(sock, p);
        String uri = "nbd+unix:///disk?socket=" + sock;
        ok("qemu-io", "-f", "raw", "-c", "write -P 0x3c 5M 1M", uri);
        // while it serves, the image is locked against a second writer, across processes
        Result second = run(blk("-k", dir().resolve("m.sock").toString(), img.toString()));
        assertEquals(second.out(), 1, second.exit());
        assertTrue(second.out(), second.out().contains("qemu-nbd: Failed to blk_new_open '" + img
                + "': Failed to get \"write\" lock\nIs another process using the image [" + img + "]?"));

        p.destroy(); // SIGTERM
        assertTrue("blk nbd did not exit on SIGTERM", p.waitFor(30, TimeUnit.SECONDS));
        assertFalse("socket left behind", Files.exists(sock));
        String info = ok("qemu-img", "info", img.toString()).out();
        assertTrue(info, info.contains("file format: qcow2"));
        ok("qemu-img", "check", img.toString());
        ok("qemu-io", "-f", "qcow2", "-c", "read -P 0x3c 5M 1M", img.toString());
        String log = Files.readString(dir().resolve("err.log"));
        assertFalse(log, log.contains("Exception"));
    }

    /**
     * TLS-PSK end to end in the real framework: Bouncy Castle's TLS bundles resolve, the server
     * takes {@code --object tls-creds-psk} and the client {@code tls-creds=ID}; qemu-io is the peer.
     */
    @Test
    public void tlsPskServerAndClientThroughTheLauncher() throws Exception {
        Path img = image();
        Path keys = Files.createDirectories(dir().resolve("psk"));
        ok("psktool", "-u", "alice", "-p", keys.resolve("keys.psk").toString());
        Path sock = dir().resolve("psk.sock");
        Process p = new ProcessBuilder(blk("--persistent", "-k", sock.toString(), "-x", "disk", "--object",
                "tls-creds-psk,id=tls0,endpoint=server,dir=" + keys, "--tls-creds=tls0", img.toString()))
                .redirectOutput(dir().resolve("psk-out.log").toFile())
                .redirectError(dir().resolve("psk-err.log").toFile()).start();
        started.add(p.toHandle());
        await(sock, p);
        String object = "tls-creds-psk,id=tls0,endpoint=client,dir=" + keys + ",username=alice";
        String opts = "driver=nbd,server.type=unix,server.path=" + sock + ",export=disk,tls-creds=tls0";
        ok("qemu-io", "--object", object, "--image-opts", "-c", "write -P 0x5e 1M 64k", opts);
        Result info = run(blkCommand("info", "--object", object, "--image-opts", opts));
        assertEquals(info.out(), 0, info.exit());
        assertTrue(info.out(), info.out().contains("virtual size: 16 MiB"));
        Result wrongUser = run(blkCommand("info", "--object", "tls-creds-psk,id=tls0,endpoint=client,dir=" + keys,
                "--image-opts", opts));
        assertEquals(wrongUser.out(), 1, wrongUser.exit());
        assertTrue(wrongUser.out(), wrongUser.out().contains("Username qemu not found in PSK file "
                + keys.resolve("keys.psk")));
        p.destroy();
        assertTrue("blk nbd did not exit on SIGTERM", p.waitFor(30, TimeUnit.SECONDS));
        ok("qemu-io", "-f", "qcow2", "-c", "read -P 0x5e 1M 64k", img.toString());
    }

    @Test
    public void forkReturnsOnceTheChildListensAndWritesItsPid() throws Exception {
        Path img = image();
        int port = freePort();
        Path pid = dir().resolve("nbd.pid");
        Result parent = run(blk("--fork", "-t", "--pid-file=" + pid, "-b", "127.0.0.1", "-p",
                String.valueOf(port), img.toString()));
        assertEquals(parent.out(), 0, parent.exit());
        long childPid = Long.parseLong(Files.readString(pid).trim());
        ProcessHandle child = ProcessHandle.of(childPid).orElseThrow(() -> new AssertionError("no process " + childPid));
        started.add(child);
        String uri = "nbd://127.0.0.1:" + port + "/";
        ok("qemu-io", "-f", "raw", "-c", "write -P 0x11 0 64k", uri);
        ok("qemu-img", "info", uri);
        child.destroy(); // kill $(cat pid)
        child.onExit().get(30, TimeUnit.SECONDS);
        ok("qemu-img", "check", img.toString());
        ok("qemu-io", "-f", "qcow2", "-c", "read -P 0x11 0 64k", img.toString());
    }

    @Test
    public void forkReportsTheChildsFailure() throws Exception {
        Path missing = dir().resolve("missing.qcow2");
        Result r = run(blk("--fork", "-k", dir().resolve("f.sock").toString(), missing.toString()));
        assertEquals(r.out(), 1, r.exit());
        assertTrue(r.out(), r.out().contains("qemu-nbd: Failed to blk_new_open '" + missing + "': Could not open '"
                + missing + "': No such file or directory"));
    }
}
