package org.blockhaus.shell.impl;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.blockhaus.core.BlockCore;
import org.blockhaus.format.raw.RawDriver;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.io.TempDir;

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
        core.addDriver(TestDrivers.qcow2());
        core.addObjectType(org.blockhaus.nbd.common.TlsCreds.objectType()); // --object tls-creds-*, as in the framework
        cli = new CliService(core);
    }

    /**
     * Runs ./blk's command line. Both tools get absolute file names (a JVM cannot change its
     * working directory), and both outputs are shown relative to {@link #dir}.
     */
    protected Qemu.Run blk(String... args) {
        return blkIn(dir, args);
    }

    protected Qemu.Run blkIn(Path base, String... args) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        int rc = cli.run(resolve(base, args), System.in, new PrintStream(out, true, StandardCharsets.UTF_8),
                new PrintStream(err, true, StandardCharsets.UTF_8));
        return new Qemu.Run(rc, relative(base, out.toString(StandardCharsets.UTF_8)),
                relative(base, err.toString(StandardCharsets.UTF_8)));
    }

    protected String relative(String s) {
        return relative(dir, s);
    }

    protected static String relative(Path base, String s) {
        return s.replace(base.toString() + "/", "");
    }

    protected String[] resolve(String[] args) {
        return resolve(dir, args);
    }

    protected static String[] resolve(Path base, String[] args) {
        String[] r = args.clone();
        for (int i = 1; i < r.length; i++) {
            String a = r[i];
            int eq = a.indexOf('=');
            if (a.contains("file.filename=")) {
                r[i] = a.replace("file.filename=", "file.filename=" + base + "/");
            } else if (!a.startsWith("-") && eq > 0 && isImageName(a) && !a.contains(",")) {
                r[i] = a.substring(0, eq + 1) + base.resolve(a.substring(eq + 1));
            } else if (!a.startsWith("-") && (isImageName(a) || a.equals("nofile") || a.equals("sub"))) {
                r[i] = base.resolve(a).toString();
            }
        }
        return r;
    }

    private static boolean isImageName(String a) {
        return a.endsWith(".raw") || a.endsWith(".qcow2");
    }

    protected Qemu.Run qemu(String... args) throws Exception {
        return qemuIn(dir, args);
    }

    protected static Qemu.Run qemuIn(Path base, String... args) throws Exception {
        String[] full = new String[args.length + 1];
        full[0] = "qemu-img";
        System.arraycopy(resolve(base, args), 0, full, 1, args.length);
        Qemu.Run r = Qemu.run(base, full);
        return new Qemu.Run(r.exitCode(), relative(base, r.out()), relative(base, r.err()));
    }

    /** Runs a shell tool (qemu-img, qemu-io) in {@link #dir} with names as given; it must succeed. */
    protected Qemu.Run sh(String... cmd) throws Exception {
        return Qemu.ok(dir, cmd);
    }

    protected void assertSame(Qemu.Run expected, Qemu.Run actual) {
        assertEquals(expected.err(), actual.err(), "stderr");
        assertEquals(expected.out(), actual.out(), "stdout");
        assertEquals(expected.exitCode(), actual.exitCode(), "exit code");
    }

    /**
     * Copies {@code files} from {@link #dir} into two fresh folders, runs qemu-img in one and ./blk
     * in the other on the same arguments, and returns both runs; {@link #assertSameImages} then
     * compares what they left behind. Images that name backing files must name them relatively.
     */
    protected Twin twin(List<String> files, String... args) throws Exception {
        // Files.copy writes sparse images out in full: only the latest twin stays on disk, so a
        // test of hundreds of cases never holds more than two copies of its images
        if (lastTwin != null) {
            deleteTree(lastTwin.q());
            deleteTree(lastTwin.b());
        }
        Path q = Files.createTempDirectory(dir, "q");
        Path b = Files.createTempDirectory(dir, "b");
        for (String f : files) {
            Files.copy(dir.resolve(f), q.resolve(f));
            Files.copy(dir.resolve(f), b.resolve(f));
        }
        lastTwin = new Twin(q, b, qemuIn(q, args), blkIn(b, args));
        return lastTwin;
    }

    private Twin lastTwin;

    private static void deleteTree(Path root) throws java.io.IOException {
        if (!Files.exists(root)) {
            return;
        }
        try (var paths = Files.walk(root)) {
            for (Path p : paths.sorted(java.util.Comparator.reverseOrder()).toList()) {
                Files.deleteIfExists(p);
            }
        }
    }

    /** The two sides of {@link #twin}. */
    protected record Twin(Path q, Path b, Qemu.Run theirs, Qemu.Run ours) {
    }

    /** Runs both tools and asserts the same output, exit code and resulting images. */
    protected Twin assertSameEffect(List<String> files, String... args) throws Exception {
        Twin t = twin(files, args);
        assertSame(t.theirs(), t.ours());
        assertSameImages(t);
        return t;
    }

    /**
     * Every file qemu-img left exists on our side too (and no other), with the same guest content
     * (qemu-img compare), the same info (but for disk usage) and the same allocation map (but for
     * host offsets); our images pass qemu-img check.
     */
    protected void assertSameImages(Twin t) throws Exception {
        assertSameImages(t, true);
    }

    /**
     * As {@link #assertSameImages(Twin)}; {@code compareMaps} false skips the allocation map where
     * a driver is known to record zeroes differently (see the callers).
     */
    protected void assertSameImages(Twin t, boolean compareMaps) throws Exception {
        List<String> theirs = list(t.q());
        assertEquals(theirs, list(t.b()), "files left behind");
        for (String f : theirs) {
            String what = f + " after " + t;
            assertEquals(infoFacts(t.q(), f), infoFacts(t.b(), f), "info of " + what);
            if (compareMaps) {
                assertEquals(mapFacts(t.q(), f), mapFacts(t.b(), f), "map of " + what);
            }
            Qemu.Run cmp = Qemu.run(dir, "qemu-img", "compare", "-U", t.q().resolve(f).toString(),
                    t.b().resolve(f).toString());
            assertEquals(0, cmp.exitCode(), "content of " + what + ": " + cmp.out() + cmp.err());
            Qemu.Run check = Qemu.run(t.b(), "qemu-img", "check", "-U", f);
            assertTrue(check.exitCode() == 0 || check.exitCode() == 63, "check of our " + what + ": " + check.out());
        }
    }

    private static List<String> list(Path d) throws Exception {
        try (var s = Files.list(d)) {
            return s.map(p -> p.getFileName().toString()).sorted().toList();
        }
    }

    private static String infoFacts(Path base, String f) throws Exception {
        Qemu.Run r = qemuIn(base, "info", "-U", "--output=json", f);
        return r.out().lines().filter(l -> !l.contains("\"actual-size\"") && !l.contains("date-"))
                .reduce("", (x, y) -> x + y + "\n") + r.err();
    }

    /**
     * The allocation map without host offsets; neighbouring extents of the same kind are merged
     * (where clusters land in the file, and so where qemu-img map splits, is the writer's choice).
     */
    private static String mapFacts(Path base, String f) throws Exception {
        Qemu.Run r = qemuIn(base, "map", "-U", "--output=json", f);
        var entry = java.util.regex.Pattern.compile("\"start\": (\\d+), \"length\": (\\d+), (.*?)(, \"offset\": \\d+)?}");
        StringBuilder sb = new StringBuilder();
        long start = -1;
        long length = 0;
        String kind = null;
        for (String line : r.out().lines().toList()) {
            var m = entry.matcher(line);
            if (!m.find()) {
                continue;
            }
            long s = Long.parseLong(m.group(1));
            long l = Long.parseLong(m.group(2));
            if (m.group(3).equals(kind) && start + length == s) {
                length += l;
                continue;
            }
            if (kind != null) {
                sb.append(start).append('+').append(length).append(' ').append(kind).append('\n');
            }
            start = s;
            length = l;
            kind = m.group(3);
        }
        if (kind != null) {
            sb.append(start).append('+').append(length).append(' ').append(kind).append('\n');
        }
        return sb + r.err();
    }
}
