package org.blockhaus.shell.impl;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import org.blockhaus.core.BlockCore;
import org.blockhaus.format.raw.RawDriver;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/** Runs ./blk's command line and the real qemu-img on the same arguments, for comparison. */
abstract class QemuComparison {
    @TempDir
    Path dir;
    protected CliService cli;

    @BeforeEach
    void setUp() {
        BlockCore core = BlockCore.standalone();
        core.addDriver(new RawDriver());
        core.addDriver(TestDrivers.file());
        cli = new CliService(core);
    }

    /**
     * Runs ./blk's command line. Both tools get absolute file names (a JVM cannot change its
     * working directory), and both outputs are shown relative to {@link #dir}.
     */
    protected Qemu.Run blk(String... args) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        int rc = cli.run(resolve(args), System.in, new PrintStream(out, true, StandardCharsets.UTF_8),
                new PrintStream(err, true, StandardCharsets.UTF_8));
        return new Qemu.Run(rc, relative(out.toString(StandardCharsets.UTF_8)),
                relative(err.toString(StandardCharsets.UTF_8)));
    }

    protected String relative(String s) {
        return s.replace(dir.toString() + "/", "");
    }

    protected String[] resolve(String[] args) {
        String[] r = args.clone();
        for (int i = 1; i < r.length; i++) {
            String a = r[i];
            int eq = a.indexOf('=');
            if (!a.startsWith("-") && eq > 0 && a.endsWith(".raw") && !a.contains(",")) {
                r[i] = a.substring(0, eq + 1) + dir.resolve(a.substring(eq + 1));
            } else if (!a.startsWith("-") && (a.endsWith(".raw") || a.equals("nofile") || a.equals("sub"))) {
                r[i] = dir.resolve(a).toString();
            } else if (a.contains("file.filename=")) {
                r[i] = a.replace("file.filename=", "file.filename=" + dir + "/");
            }
        }
        return r;
    }

    protected Qemu.Run qemu(String... args) throws Exception {
        String[] full = new String[args.length + 1];
        full[0] = "qemu-img";
        System.arraycopy(resolve(args), 0, full, 1, args.length);
        Qemu.Run r = Qemu.run(dir, full);
        return new Qemu.Run(r.exitCode(), relative(r.out()), relative(r.err()));
    }

    protected void assertSame(Qemu.Run expected, Qemu.Run actual) {
        assertEquals(expected.err(), actual.err(), "stderr");
        assertEquals(expected.out(), actual.out(), "stdout");
        assertEquals(expected.exitCode(), actual.exitCode(), "exit code");
    }
}
