package org.blockhaus.format.qcow2;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/** Runs the real qemu-img / qemu-io 7.2, the oracle. A missing tool fails the test, never skips it. */
final class Qemu {
    record Result(int exit, String out, String err) {
        Result ok() {
            if (exit != 0) {
                throw new AssertionError("exit " + exit + "\nstdout: " + out + "\nstderr: " + err);
            }
            return this;
        }
    }

    private Qemu() {
    }

    static String tool(String name) {
        Path p = Path.of("/usr/bin", name);
        if (!Files.isExecutable(p)) {
            throw new AssertionError(name + " not found; install qemu-utils");
        }
        return p.toString();
    }

    static Result img(String... args) {
        return run(tool("qemu-img"), args);
    }

    static Result io(String... args) {
        return run(tool("qemu-io"), args);
    }

    private static Result run(String tool, String... args) {
        List<String> cmd = new ArrayList<>();
        cmd.add(tool);
        cmd.addAll(List.of(args));
        try {
            // stderr goes to a file: reading two pipes one after the other deadlocks once the
            // tool fills the other one (qemu-img check lists every leaked cluster on stderr)
            java.io.File errFile = java.io.File.createTempFile("qemu", ".err");
            try {
                Process p = new ProcessBuilder(cmd)
                        .redirectInput(ProcessBuilder.Redirect.from(new java.io.File("/dev/null")))
                        .redirectError(errFile).start();
                byte[] out = p.getInputStream().readAllBytes();
                if (!p.waitFor(120, TimeUnit.SECONDS)) {
                    p.destroyForcibly();
                    throw new AssertionError("timeout: " + cmd);
                }
                return new Result(p.exitValue(), new String(out, StandardCharsets.UTF_8),
                        Files.readString(errFile.toPath(), StandardCharsets.UTF_8));
            } finally {
                errFile.delete();
            }
        } catch (IOException e) {
            throw new AssertionError("cannot run " + cmd + ": " + e, e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new AssertionError(e);
        }
    }
}
