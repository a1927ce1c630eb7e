package org.blockhaus.testkit;

import java.io.IOException;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * Real peers for interop tests (qemu-img, qemu-nbd, nbdkit, nbdinfo...): finds the tools (a missing one fails the test, it never
 * skips), runs commands with a time limit, and keeps every daemon it starts so that
 * {@link #close()} stops each one by its own PID.
 */
public final class Peers implements AutoCloseable {
    private static final String[] DIRS = {"/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin", "/sbin"};
    private final List<ProcessHandle> daemons = new ArrayList<>();

    public static String require(String tool, String pkg) {
        for (String d : DIRS) {
            Path p = Path.of(d, tool);
            if (Files.isExecutable(p)) {
                return p.toString();
            }
        }
        throw new AssertionError(tool + " not found; install " + pkg);
    }

    public record Result(int exit, String out) {
    }

    /** Runs a command to completion (at most 60 s), stdout and stderr together. */
    public static Result run(String... cmd) throws IOException, InterruptedException {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        try {
            byte[] out = p.getInputStream().readAllBytes();
            if (!p.waitFor(60, TimeUnit.SECONDS)) {
                throw new AssertionError("timed out: " + String.join(" ", cmd));
            }
            return new Result(p.exitValue(), new String(out, StandardCharsets.UTF_8));
        } finally {
            p.destroyForcibly();
        }
    }

    public static Result check(String... cmd) throws IOException, InterruptedException {
        Result r = run(cmd);
        if (r.exit() != 0) {
            throw new AssertionError(String.join(" ", cmd) + " failed (" + r.exit() + "): " + r.out());
        }
        return r;
    }

    /** A TCP port on 127.0.0.1 that was free a moment ago. */
    public static int freePort() throws IOException {
        try (ServerSocket s = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
            return s.getLocalPort();
        }
    }

    /**
     * Starts qemu-nbd with --fork (it returns once it listens) and remembers the daemon's PID
     * from its pid file.
     */
    public void qemuNbd(Path dir, String... args) throws IOException, InterruptedException {
        String qemuNbd = require("qemu-nbd", "qemu-utils");
        Path pid = Files.createTempFile(dir, "qemu-nbd", ".pid");
        Files.delete(pid);
        List<String> cmd = new ArrayList<>(List.of(qemuNbd, "--fork", "--persistent", "--shared=8",
                "--pid-file=" + pid));
        cmd.addAll(List.of(args));
        check(cmd.toArray(String[]::new));
        adopt(pid);
    }

    /** Starts a daemon in the foreground as our child and waits for its pid file (= ready). */
    public void foreground(Path pidFile, String... cmd) throws IOException, InterruptedException {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true)
                .redirectOutput(pidFile.resolveSibling(pidFile.getFileName() + ".log").toFile()).start();
        daemons.add(p.toHandle());
        long deadline = System.nanoTime() + Duration.ofSeconds(20).toNanos();
        while (!Files.exists(pidFile) || Files.size(pidFile) == 0) {
            if (!p.isAlive()) {
                throw new AssertionError(String.join(" ", cmd) + " exited with " + p.exitValue() + ": "
                        + Files.readString(pidFile.resolveSibling(pidFile.getFileName() + ".log")));
            }
            if (System.nanoTime() > deadline) {
                throw new AssertionError(String.join(" ", cmd) + " did not become ready");
            }
            Thread.sleep(10);
        }
    }

    /** Runs a daemon that forks itself, waits for its pid file and remembers the PID. */
    public void daemon(Path pidFile, String... cmd) throws IOException, InterruptedException {
        check(cmd);
        long deadline = System.nanoTime() + Duration.ofSeconds(20).toNanos();
        while (!Files.exists(pidFile) || Files.readString(pidFile).isBlank()) {
            if (System.nanoTime() > deadline) {
                throw new AssertionError(String.join(" ", cmd) + " wrote no pid file");
            }
            Thread.sleep(10);
        }
        adopt(pidFile);
    }

    private void adopt(Path pidFile) throws IOException {
        long pid = Long.parseLong(Files.readString(pidFile).trim());
        ProcessHandle.of(pid).ifPresent(daemons::add);
    }

    @Override
    public void close() {
        for (ProcessHandle h : daemons) {
            h.destroy();
        }
        for (ProcessHandle h : daemons) {
            try {
                h.onExit().get(10, TimeUnit.SECONDS);
            } catch (Exception e) {
                h.destroyForcibly();
            }
        }
        daemons.clear();
    }
}
