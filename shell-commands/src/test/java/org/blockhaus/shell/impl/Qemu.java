package org.blockhaus.shell.impl;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/** Runs the real qemu-img (the oracle); a missing qemu-img fails the test, never skips it. */
final class Qemu {
    /** What a process printed and how it ended. */
    record Run(int exitCode, String out, String err) {
    }

    private Qemu() {
    }

    static Path tool(String name) {
        for (String dir : List.of("/usr/bin", "/usr/local/bin", "/bin")) {
            Path p = Path.of(dir, name);
            if (Files.isExecutable(p)) {
                return p;
            }
        }
        throw new AssertionError(name + " not found; install qemu-utils (see .ci/run)");
    }

    static Run run(Path cwd, String... args) throws IOException, InterruptedException {
        List<String> cmd = new ArrayList<>();
        cmd.add(tool(args[0]).toString());
        cmd.addAll(List.of(args).subList(1, args.length));
        ProcessBuilder pb = new ProcessBuilder(cmd).directory(cwd.toFile());
        Process p = pb.start();
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        Thread t1 = Thread.ofVirtual().start(() -> copy(p.getInputStream(), out));
        Thread t2 = Thread.ofVirtual().start(() -> copy(p.getErrorStream(), err));
        if (!p.waitFor(120, TimeUnit.SECONDS)) {
            p.destroyForcibly();
            throw new AssertionError("timed out: " + cmd);
        }
        t1.join();
        t2.join();
        return new Run(p.exitValue(), out.toString(StandardCharsets.UTF_8), err.toString(StandardCharsets.UTF_8));
    }

    private static void copy(java.io.InputStream in, ByteArrayOutputStream out) {
        try {
            in.transferTo(out);
        } catch (IOException ignored) {
            // the process ended
        }
    }

    static Run ok(Path cwd, String... args) throws IOException, InterruptedException {
        Run r = run(cwd, args);
        if (r.exitCode() != 0) {
            throw new AssertionError(String.join(" ", args) + " failed (" + r.exitCode() + "): " + r.err());
        }
        return r;
    }

    /** Blocks allocated on the host (st_blocks, 512-byte units). */
    static long blocks(Path p) throws IOException, InterruptedException {
        return Long.parseLong(ok(p.getParent(), "stat", "-c", "%b", p.toString()).out().trim());
    }
}
