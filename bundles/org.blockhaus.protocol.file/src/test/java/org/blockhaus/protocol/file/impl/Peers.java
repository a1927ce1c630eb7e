package org.blockhaus.protocol.file.impl;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.TreeSet;
import java.util.concurrent.TimeUnit;

/**
 * The real QEMU tools and util-linux, as oracles. A missing tool fails the test (never skips):
 * interop is the point of these tests.
 */
final class Peers {
    private Peers() {
    }

    /** The absolute path of {@code tool} on PATH (or /usr/sbin, /sbin), or an AssertionError. */
    static String require(String tool, String packageName) {
        List<String> dirs = new ArrayList<>(List.of(System.getenv().getOrDefault("PATH", "").split(File.pathSeparator)));
        dirs.addAll(List.of("/usr/sbin", "/sbin", "/usr/bin", "/bin"));
        for (String d : dirs) {
            if (d.isEmpty()) {
                continue;
            }
            Path p = Path.of(d, tool);
            if (Files.isExecutable(p)) {
                return p.toString();
            }
        }
        throw new AssertionError(tool + " not found; install " + packageName);
    }

    static String qemuImg() {
        return require("qemu-img", "qemu-utils");
    }

    static String qemuIo() {
        return require("qemu-io", "qemu-utils");
    }

    static String qemuNbd() {
        return require("qemu-nbd", "qemu-utils");
    }

    static String losetup() {
        return require("losetup", "mount (util-linux)");
    }

    /** Exit code and output of a finished command. */
    record Result(int exit, String stdout, String stderr) {
        String all() {
            return stdout + stderr;
        }
    }

    /** Runs a command to its end (60 s at most) and returns what it printed. */
    static Result run(String... command) throws IOException, InterruptedException {
        ProcessBuilder pb = new ProcessBuilder(command);
        Path out = Files.createTempFile("peer", ".out");
        Path err = Files.createTempFile("peer", ".err");
        pb.redirectOutput(out.toFile()).redirectError(err.toFile()).redirectInput(ProcessBuilder.Redirect.PIPE);
        Process p = pb.start();
        try {
            p.getOutputStream().close();
            if (!p.waitFor(60, TimeUnit.SECONDS)) {
                throw new AssertionError("timed out: " + String.join(" ", command));
            }
            return new Result(p.exitValue(), Files.readString(out, StandardCharsets.UTF_8),
                    Files.readString(err, StandardCharsets.UTF_8));
        } finally {
            p.destroyForcibly();
            p.waitFor();
            Files.deleteIfExists(out);
            Files.deleteIfExists(err);
        }
    }

    /** Runs a command that must succeed; returns its stdout. */
    static String check(String... command) throws IOException, InterruptedException {
        Result r = run(command);
        if (r.exit() != 0) {
            throw new AssertionError(String.join(" ", command) + " failed (" + r.exit() + "): " + r.all());
        }
        return r.stdout();
    }

    /**
     * A long-running peer that holds an image open (qemu-io reading commands from a pipe we keep
     * open, or qemu-nbd). Closing it stops the process by its own handle and waits for it.
     */
    static final class Holder implements AutoCloseable {
        private final Process process;
        private final Path image;

        private Holder(Process process, Path image) {
            this.process = process;
            this.image = image;
        }

        /**
         * Starts {@code command} and waits until it holds at least {@code expectedBytes} lock
         * bytes on {@code image} (see /proc/locks).
         */
        static Holder start(Path image, int expectedBytes, String... command) throws Exception {
            ProcessBuilder pb = new ProcessBuilder(command).redirectErrorStream(true)
                    .redirectOutput(ProcessBuilder.Redirect.DISCARD);
            Holder h = new Holder(pb.start(), image);
            try {
                long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(15);
                while (lockedBytes(image).size() < expectedBytes) {
                    if (!h.process.isAlive()) {
                        throw new AssertionError(String.join(" ", command) + " exited with " + h.process.exitValue());
                    }
                    if (System.nanoTime() > deadline) {
                        throw new AssertionError(String.join(" ", command) + " did not lock " + image
                                + "; /proc/locks has " + lockedBytes(image));
                    }
                    Thread.sleep(10);
                }
            } catch (Exception | Error e) {
                h.close();
                throw e;
            }
            return h;
        }

        @Override
        public void close() throws Exception {
            try {
                process.getOutputStream().close(); // qemu-io quits at the end of its input
            } catch (IOException ignored) {
                // already gone
            }
            boolean readsInput = process.info().command().map(c -> c.endsWith("qemu-io")).orElse(true);
            if (!readsInput || !process.waitFor(5, TimeUnit.SECONDS)) {
                process.destroy();
                if (!process.waitFor(5, TimeUnit.SECONDS)) {
                    process.destroyForcibly();
                    process.waitFor();
                }
            }
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
            while (!lockedBytes(image).isEmpty() && System.nanoTime() < deadline) {
                Thread.sleep(10);
            }
        }
    }

    /** Bytes of {@code file} locked by anyone, from /proc/locks (OFD and POSIX alike). */
    static TreeSet<Long> lockedBytes(Path file) throws IOException {
        return lockedBytes(file, null);
    }

    /** Bytes of {@code file} locked with the given /proc/locks class ("OFDLCK", "POSIX"), or any if null. */
    static TreeSet<Long> lockedBytes(Path file, String kind) throws IOException {
        long inode = ((Number) Files.getAttribute(file, "unix:ino")).longValue();
        TreeSet<Long> bytes = new TreeSet<>();
        for (String line : Files.readAllLines(Path.of("/proc/locks"))) {
            String[] f = line.trim().split("\\s+");
            // "1: OFDLCK ADVISORY  READ -1 fe:00:2146594 100 101"; blocked waiters have "->" after the id
            int i = f.length > 1 && f[1].equals("->") ? 2 : 1;
            if (f.length < i + 7) {
                continue;
            }
            String[] dev = f[i + 4].split(":");
            if (dev.length != 3 || Long.parseLong(dev[2]) != inode) {
                continue;
            }
            if (kind != null && !f[i].equals(kind)) {
                continue;
            }
            long start = Long.parseLong(f[i + 5]);
            long end = f[i + 6].equals("EOF") ? start : Long.parseLong(f[i + 6]);
            for (long b = start; b <= end; b++) {
                bytes.add(b);
            }
        }
        return bytes;
    }
}
