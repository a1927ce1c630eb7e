package org.blockhaus.format.qcow2;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.BlockStatus;
import org.blockhaus.api.Image;
import org.blockhaus.api.spi.BitmapNode;
import org.blockhaus.api.spi.CheckResult;
import org.blockhaus.api.spi.CheckableNode;
import org.blockhaus.api.spi.SnapshotNode;
import org.blockhaus.core.BlockCore;

/**
 * Mutation fuzzer for qcow2 metadata. Runs in its own JVM (started by {@link MetadataFuzzTest}
 * with a small heap, so unbounded allocation shows as OutOfMemoryError): for each case it copies a
 * valid image, overwrites random bytes in one metadata region (header and extensions, L1, L2,
 * refcount table, refcount blocks, snapshot table and snapshot L1 tables, bitmap directory and
 * bitmap tables), then opens it read-only (read everything, walk block status, list snapshots and
 * bitmaps, check) and read-write on a copy (write, write zeroes, discard, flush, close). Every case
 * must end in success or a BlockException, within the time limit, and the read-only pass must not
 * change a byte of the file. Prints one line per failure, "FAIL seed=S case=N ...", and exits 1.
 *
 * <p>Arguments: image, seed, cases, per-case seconds.
 */
public final class MetadataFuzzer {
    private MetadataFuzzer() {
    }

    /** Outcomes, for the summary line: how many cases opened and read, how many were refused. */
    private static final java.util.concurrent.atomic.AtomicInteger RO_OK = new java.util.concurrent.atomic.AtomicInteger();
    private static final java.util.concurrent.atomic.AtomicInteger RW_OK = new java.util.concurrent.atomic.AtomicInteger();
    private static final java.util.Map<String, Integer> REFUSALS = new java.util.concurrent.ConcurrentHashMap<>();

    /** A metadata region of the file: its name and byte range. */
    record Region(String name, long offset, long length) {
    }

    public static void main(String[] args) throws Exception {
        Path base = Path.of(args[0]);
        long seed = Long.parseLong(args[1]);
        int cases = Integer.parseInt(args[2]);
        int seconds = Integer.parseInt(args[3]);
        int failures = run(base, seed, cases, seconds);
        System.out.flush();
        System.exit(failures == 0 ? 0 : 1);
    }

    static int run(Path base, long seed, int cases, int seconds) throws Exception {
        byte[] good = Files.readAllBytes(base);
        List<Region> regions = regions(good);
        Path work = Files.createTempDirectory(base.getParent(), "fuzz");
        ExecutorService ex = Executors.newSingleThreadExecutor(r -> {
            Thread t = new Thread(r, "fuzz-case");
            t.setDaemon(true);
            return t;
        });
        int failures = 0;
        for (int n = 0; n < cases; n++) {
            long caseSeed = seed * 1_000_003L + n;
            Random r = new Random(caseSeed);
            byte[] bad = good.clone();
            String what = mutate(bad, regions, r);
            if (r.nextInt(12) == 0) {
                int cut = r.nextInt(bad.length);
                bad = Arrays.copyOf(bad, cut);
                what += " truncated to " + cut;
            }
            Path img = work.resolve("c" + n + ".qcow2");
            Files.write(img, bad);
            String id = "seed=" + seed + " case=" + n + " image=" + base.getFileName() + " mutation=" + what;
            Future<String> f = ex.submit(() -> oneCase(img, caseSeed));
            try {
                String outcome = f.get(seconds, TimeUnit.SECONDS);
                if (outcome != null) {
                    failures++;
                    System.out.println("FAIL " + id + ": " + outcome);
                }
            } catch (TimeoutException e) {
                System.out.println("FAIL " + id + ": took more than " + seconds + " s");
                System.out.flush();
                // the stuck thread cannot be stopped; nothing after this case is trustworthy
                return failures + 1;
            } catch (java.util.concurrent.ExecutionException e) {
                failures++;
                System.out.println("FAIL " + id + ": " + e.getCause());
            }
            Path rw = work.resolve("c" + n + ".rw.qcow2");
            Repaired ours = REPAIRED.remove(rw);
            // qemu-img's repair of a twin costs four runs of qemu-img: every third case
            if (CHECK_WITH_QEMU && ours != null && n % 3 == 0) {
                String gap = compareRepair(img, rw, ours, id);
                if (gap != null) {
                    failures++;
                    System.out.println("FAIL " + id + ": " + gap);
                }
            }
            Files.deleteIfExists(img);
            Files.deleteIfExists(work.resolve("c" + n + ".rw.qcow2"));
        }
        ex.shutdownNow();
        System.out.println("done " + base.getFileName() + " seed=" + seed + " cases=" + cases + " failures=" + failures
                + " read-only passes completed=" + RO_OK + " read-write passes completed=" + RW_OK
                + " cases qemu repairs better=" + REPAIR_GAPS + " (and broken snapshots where qemu dropped every"
                + " snapshot=" + SNAPSHOTS_DROPPED + ")");
        if (Boolean.getBoolean("fuzz.verbose")) {
            REFUSALS.forEach((m, c) -> System.out.println("  " + c + " x " + m));
        }
        GAP_CLASSES.forEach((m, c) -> System.out.println("  gap " + c + " x " + m));
        return failures;
    }

    /** Returns null when the case behaved, else what went wrong. */
    private static String oneCase(Path img, long caseSeed) throws Exception {
        byte[] before = Files.readAllBytes(img);
        Path rw = img.resolveSibling(img.getFileName().toString().replace(".qcow2", ".rw.qcow2"));
        Files.copy(img, rw, StandardCopyOption.REPLACE_EXISTING);
        try {
            readOnlyPass(img);
            RO_OK.incrementAndGet();
        } catch (BlockException expected) {
            // a clear refusal is a good outcome
            REFUSALS.merge(expected.getMessage().replaceAll("[0-9]+", "N"), 1, Integer::sum);
        } catch (Throwable t) {
            return "read-only pass threw " + describe(t);
        }
        if (!Arrays.equals(before, Files.readAllBytes(img))) {
            return "read-only pass modified the file";
        }
        try {
            readWritePass(rw, new Random(caseSeed ^ 0x5DEECE66DL));
            RW_OK.incrementAndGet();
        } catch (BlockException expected) {
            // refused: fine
        } catch (Throwable t) {
            return "read-write pass threw " + describe(t);
        }
        Files.copy(img, rw, StandardCopyOption.REPLACE_EXISTING);
        List<String> findings = java.util.Collections.synchronizedList(new ArrayList<>());
        try {
            CheckResult res = ourRepair(rw, findings);
            if (res != null) {
                REPAIRED.put(rw, new Repaired(res, null, findings));
            }
            if (emptySnapshotTableMisaligned(img) && !findings.contains("Repairing snapshot table offset invalid")) {
                // a class of gap closed: -r all clears the offset of an empty table that is not
                // cluster aligned (qemu-img check reports it and fails; CheckOpenGapsTest)
                return "check -r all left an empty snapshot table's unaligned offset: " + findings;
            }
        } catch (BlockException refused) {
            // the check could not go on (qemu-img's "Check failed") or the image cannot be opened
            if (refused.getMessage().contains("Reference count table entry")) {
                // a class of gap closed: check opens take these entries and report them as qemu does
                return "check -r all refused a refcount table qemu's check repairs: " + refused.getMessage();
            }
            String closed = closedCheckOpenGap(refused.getMessage(), img);
            if (closed != null) {
                return "check -r all refused " + closed + ", which qemu's check opens: " + refused.getMessage();
            }
            REPAIRED.put(rw, new Repaired(null, refused.getMessage(), findings));
        } catch (Throwable t) {
            return "check -r all threw " + describe(t);
        }
        return null;
    }

    /**
     * Classes of gap closed (CheckOpenGapsTest): check opens take a refcount table or a snapshot
     * table that reaches past the end of the file, an empty refcount table, an empty snapshot
     * table's unaligned offset and bitmap directory padding that is not zero, as qemu-img check
     * opens them, and do not allocate from such refcount tables before the check. Returns what a
     * refusal of our check refused, where it is one of these, else null.
     */
    private static String closedCheckOpenGap(String refusal, Path img) throws java.io.IOException {
        if (refusal.matches("(?s)qcow2: Reference count table at offset .* lies beyond the end of the file.*")) {
            return "a refcount table past the end of the file";
        }
        if (refusal.startsWith("qcow2: Invalid reference count table: ")) {
            return "an empty refcount table";
        }
        if (refusal.startsWith("qcow2: Refcounts are corrupt: metadata cluster ") && refcountTableUnusable(img)) {
            // a check open's read-write start (marking bitmaps in use) allocating from a refcount
            // table that is empty or reaches past the end of the file, before check rebuilt it
            return "refcounts to rebuild (it allocated from them before the check)";
        }
        if (refusal.matches("(?s)qcow2: Snapshot table (entry \\d+ )?at offset .* lies beyond the end of the file.*")) {
            return "a snapshot table past the end of the file";
        }
        if (refusal.contains("also when there are no snapshots")) {
            return "an empty snapshot table's unaligned offset";
        }
        if (refusal.matches("(?s).*the padding of bitmap '.*' is not zero.*")) {
            return "bitmap directory padding that is not zero";
        }
        return null;
    }

    /**
     * Whether the header's refcount table is empty or reaches past the end of the file (its
     * length rounded up to 512 bytes, as the file driver reports it, as qemu's).
     */
    private static boolean refcountTableUnusable(Path img) throws java.io.IOException {
        int clusterBits = headerInt(img, 20);
        if (Files.size(img) < 72 || clusterBits < 9 || clusterBits > 21) {
            return false;
        }
        long clusters = Integer.toUnsignedLong(headerInt(img, 56));
        long end = (Files.size(img) + 511) & ~511L;
        try (var ch = java.nio.channels.FileChannel.open(img)) {
            ByteBuffer b = ByteBuffer.allocate(8);
            ch.read(b, 48);
            long offset = b.flip().getLong();
            return clusters == 0 || offset > end - (clusters << clusterBits);
        }
    }

    /** Whether the header says no snapshots and gives a snapshot table offset that is not cluster aligned. */
    private static boolean emptySnapshotTableMisaligned(Path img) throws java.io.IOException {
        int clusterBits = headerInt(img, 20);
        if (Files.size(img) < 72 || nbSnapshots(img) != 0 || clusterBits < 9 || clusterBits > 21) {
            return false;
        }
        try (var ch = java.nio.channels.FileChannel.open(img)) {
            ByteBuffer b = ByteBuffer.allocate(8);
            ch.read(b, 64);
            return (b.flip().getLong() & ((1L << clusterBits) - 1)) != 0;
        }
    }

    /** Our check -r all: its result, or why it refused; and what it printed. */
    private record Repaired(CheckResult result, String refusal, List<String> findings) {
        /** The gap's class, for the accounting: the refusal, else the first error left, numbers elided. */
        String gapClass() {
            if (refusal != null) {
                return "refused: " + refusal.replaceAll("[0-9]+", "N");
            }
            synchronized (findings) {
                for (String l : findings) {
                    if (l.startsWith("ERROR")) {
                        return "left: " + l.replaceAll("[0-9a-f]*[0-9][0-9a-f]*", "N");
                    }
                }
            }
            return "left, no error printed: " + result;
        }
    }

    /** Our repair results, for the comparison with qemu's that runs after the timed part. */
    private static final java.util.Map<Path, Repaired> REPAIRED = new java.util.concurrent.ConcurrentHashMap<>();

    private static String describe(Throwable t) {
        StringBuilder sb = new StringBuilder(t.toString());
        for (StackTraceElement e : t.getStackTrace()) {
            if (e.getClassName().startsWith("org.blockhaus")) {
                sb.append("\n    at ").append(e);
            }
        }
        return sb.toString();
    }

    private static void readOnlyPass(Path img) throws Exception {
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRo(core, img)) {
            long size = i.size();
            BlockNode n = i.driverNode();
            if (n instanceof SnapshotNode s) {
                s.snapshots();
            }
            if (n instanceof BitmapNode b) {
                for (BitmapNode.Bitmap bm : b.bitmaps()) {
                    if (!bm.inconsistent()) {
                        BitmapsTest.ourDirty(b, bm.name());
                    }
                }
            }
            ByteBuffer buf = ByteBuffer.allocate(1 << 20);
            for (long off = 0; off < size; off += buf.capacity()) {
                buf.clear().limit((int) Math.min(buf.capacity(), size - off));
                i.read(off, buf);
            }
            for (long off = 0; off < size;) {
                BlockStatus st = n.blockStatus(off, size - off);
                off += st.length();
            }
            if (n instanceof CheckableNode c) {
                c.check(CheckResult.Repair.NONE, line -> { });
            }
        }
    }

    private static void readWritePass(Path img, Random r) throws Exception {
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRw(core, img)) {
            long size = i.size();
            for (int k = 0; k < 6; k++) {
                long len = 1 + r.nextInt(200_000);
                long off = (long) (r.nextDouble() * Math.max(1, size - len));
                len = Math.min(len, size - off);
                if (len <= 0) {
                    break;
                }
                switch (r.nextInt(4)) {
                    case 0 -> i.writeZeroes(off, len, r.nextBoolean() ? BlockNode.MAY_UNMAP : 0);
                    case 1 -> i.discard(off, len);
                    default -> i.write(off, ByteBuffer.wrap(Fixtures.pattern((int) len, k)), 0);
                }
            }
            i.flush();
            BlockNode n = i.driverNode();
            try {
                if (n instanceof SnapshotNode sn && r.nextInt(3) == 0) {
                    var list = sn.snapshots();
                    if (!list.isEmpty() && r.nextBoolean()) {
                        String id = list.get(r.nextInt(list.size())).id();
                        if (r.nextBoolean()) {
                            sn.applySnapshot(id);
                        } else {
                            sn.deleteSnapshot(id);
                        }
                    } else {
                        sn.createSnapshot("fz");
                    }
                }
            } catch (BlockException refused) {
                // go on with the other operations
            }
            try {
                if (n instanceof BitmapNode bn && r.nextInt(3) == 0) {
                    var list = bn.bitmaps();
                    if (!list.isEmpty() && r.nextBoolean()) {
                        String name = list.get(r.nextInt(list.size())).name();
                        if (r.nextBoolean()) {
                            bn.removeBitmap(name);
                        } else {
                            bn.clearBitmap(name);
                        }
                    } else {
                        bn.addBitmap("fz", 65536, false);
                    }
                }
            } catch (BlockException refused) {
                // go on
            }
            if (r.nextInt(4) == 0) {
                try {
                    i.truncate(size + 65536L * (1 + r.nextInt(64)), false, org.blockhaus.api.Preallocation.OFF);
                } catch (BlockException refused) {
                    // go on
                }
            }
            size = i.size();
            ByteBuffer buf = ByteBuffer.allocate(1 << 20);
            for (long off = 0; off < size; off += buf.capacity()) {
                buf.clear().limit((int) Math.min(buf.capacity(), size - off));
                i.read(off, buf);
            }
        }
    }

    /**
     * Our {@code check -r all} said it left no corruption: then qemu-img check must find none
     * either, where qemu's own {@code check -r all} on a twin of the mutated image leaves it
     * clean. (Where qemu's repair cannot clean the twin, the two differ in ways that are not
     * bugs: qemu-img walks an L1 entry with flags but offset 0 as if the header were an L2 table,
     * for one.) Where qemu repairs and we do not, the case is counted as a repair gap, not failed
     * (qemu's check also drops broken snapshots and repairs refcount tables ours refuses to open),
     * except for the classes of gap closed since: a refcount table entry left outside the image or
     * unaligned fails, as does a check that refuses a refcount table entry with reserved bits (see
     * oneCase) or a bitmap table or table entry past the end of the file.
     */
    private static String compareRepair(Path mutated, Path ours, Repaired rep, String id) throws Exception {
        Path twin = mutated.resolveSibling(mutated.getFileName() + ".twin");
        Files.copy(mutated, twin, StandardCopyOption.REPLACE_EXISTING);
        try {
            if (qemuImg("check", "-q", "-r", "all", "-f", "qcow2", twin.toString()) < 0
                    || qemuImg("check", "-q", "-f", "qcow2", twin.toString()) != 0) {
                return null;
            }
            // qemu-img 7.2's check -r (leaks or all) of an image with persistent bitmaps writes a
            // header without snapshots, even on a clean image: every snapshot is gone and its
            // clusters are repaired as leaks. A "repair" that relies on that is not one to copy.
            boolean droppedAll = nbSnapshots(mutated) > 0 && nbSnapshots(twin) == 0;
            if (rep.refusal() != null) {
                // a class of gap closed: check opens take a bitmap table entry at or past the end of
                // the file (or a table there), read what lies there as zeroes and store the bitmap
                // anew, as qemu (BitmapTableRepairTest)
                java.util.regex.Matcher m = java.util.regex.Pattern
                        .compile("points at (\\d+), which is not a cluster inside the file \\((\\d+) bytes\\)")
                        .matcher(rep.refusal());
                if (m.find() && Long.parseLong(m.group(1)) >= Long.parseLong(m.group(2))
                        && Long.parseLong(m.group(1)) % (1L << headerInt(mutated, 20)) == 0) {
                    return "check -r all refused a bitmap table entry past the end of the file, which qemu's"
                            + " check repairs: " + rep.refusal();
                }
                if (rep.refusal().contains("Bitmap table of ") && rep.refusal().contains("lies beyond the end")) {
                    return "check -r all refused a bitmap table past the end of the file, which qemu's check"
                            + " repairs: " + rep.refusal();
                }
                countGap(rep, id, mutated, droppedAll);
                return null;
            }
            CheckResult res = rep.result();
            int after = qemuImg("check", "-q", "-f", "qcow2", ours.toString());
            if (after == 0) {
                return null;
            }
            if (res.corruptions() == 0 && after == 2) {
                Qemu.Result q = Qemu.img("check", "-f", "qcow2", ours.toString());
                return "our check -r all reported no corruption left (" + res + "), qemu-img check finds:\n"
                        + q.out() + q.err();
            }
            // classes of gap closed: a refcount table entry past the end of the file or not cluster
            // aligned is repaired as qemu repairs it (RefcountTableRepairTest), so none may be left
            // where qemu's repair cleans the twin
            Qemu.Result q = Qemu.img("check", "-f", "qcow2", ours.toString());
            if (q.err().contains(" is outside image") || q.err().contains("refcount table entry corrupted")) {
                return "our check -r all left a refcount table entry qemu's repair rebuilds (" + res + "), qemu-img"
                        + " check finds:\n" + q.out() + q.err();
            }
            countGap(rep, id, mutated, droppedAll);
            return null;
        } finally {
            Files.deleteIfExists(twin);
        }
    }

    /** qemu-img's exit code, or -1 when it takes more than 20 s (qemu repairs some images by growing them to terabytes). */
    private static int qemuImg(String... args) throws Exception {
        List<String> cmd = new ArrayList<>();
        cmd.add(Qemu.tool("qemu-img"));
        cmd.addAll(List.of(args));
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true)
                .redirectOutput(ProcessBuilder.Redirect.DISCARD).start();
        if (!p.waitFor(20, TimeUnit.SECONDS)) {
            p.destroyForcibly().waitFor();
            return -1;
        }
        return p.exitValue();
    }

    private static final java.util.concurrent.atomic.AtomicInteger REPAIR_GAPS = new java.util.concurrent.atomic.AtomicInteger();
    /** Gaps where qemu's repair dropped every snapshot of an image with bitmaps (see compareRepair). */
    private static final java.util.concurrent.atomic.AtomicInteger SNAPSHOTS_DROPPED = new java.util.concurrent.atomic.AtomicInteger();
    private static final java.util.Map<String, Integer> GAP_CLASSES = new java.util.concurrent.ConcurrentHashMap<>();

    private static int headerInt(Path img, long at) throws java.io.IOException {
        try (var ch = java.nio.channels.FileChannel.open(img)) {
            ByteBuffer b = ByteBuffer.allocate(4);
            return ch.read(b, at) == 4 ? b.flip().getInt() : 0;
        }
    }

    private static int nbSnapshots(Path img) throws java.io.IOException {
        try (var ch = java.nio.channels.FileChannel.open(img)) {
            ByteBuffer b = ByteBuffer.allocate(4);
            return ch.read(b, 60) == 4 ? b.flip().getInt() : 0;
        }
    }

    private static void countGap(Repaired rep, String id, Path mutated, boolean droppedAll) throws java.io.IOException {
        // only a gap in the snapshots themselves is explained by qemu dropping them all
        if (droppedAll && (id.contains(" mutation=snapshot ") || rep.gapClass().contains("napshot"))) {
            SNAPSHOTS_DROPPED.incrementAndGet();
            if (Boolean.getBoolean("fuzz.verbose")) {
                System.out.println("GAP(qemu dropped every snapshot) " + id + ": " + rep.gapClass());
            }
            return;
        }
        REPAIR_GAPS.incrementAndGet();
        String keep = System.getProperty("fuzz.keep", "");
        if (!keep.isEmpty()) { // -Dfuzz.keep=DIR: the mutated images of the gaps, to study them
            Files.createDirectories(Path.of(keep));
            Files.copy(mutated, Path.of(keep, id.replaceAll(" mutation=.*", "").replaceAll("[ =]", "_")),
                    StandardCopyOption.REPLACE_EXISTING);
        }
        GAP_CLASSES.merge(rep.gapClass(), 1, Integer::sum);
        if (Boolean.getBoolean("fuzz.verbose")) {
            System.out.println("GAP " + id + ": " + rep.gapClass());
        }
    }

    private static CheckResult ourRepair(Path img, List<String> findings) throws BlockException {
        BlockCore core = Fixtures.core();
        var mode = new org.blockhaus.api.BlockService.OpenMode(true, false, w -> { }, true);
        try (Image i = core.open(img.toString(), org.blockhaus.api.Options.of("driver", "qcow2"), mode)) {
            if (!(i.driverNode() instanceof CheckableNode c)) {
                return null;
            }
            return c.check(CheckResult.Repair.ALL, findings::add);
        }
    }

    /** qemu-img check after each of our repairs (slower; the test turns it on). */
    static final boolean CHECK_WITH_QEMU = !Boolean.getBoolean("fuzz.noqemu");

    // ---- where the metadata is, read from a good image ----

    static List<Region> regions(byte[] f) {
        ByteBuffer b = ByteBuffer.wrap(f).order(ByteOrder.BIG_ENDIAN);
        int clusterBits = b.getInt(20);
        long cs = 1L << clusterBits;
        int version = b.getInt(4);
        List<Region> out = new ArrayList<>();
        int headerLength = version >= 3 ? b.getInt(100) : 72;
        out.add(new Region("header", 0, headerLength));
        out.add(new Region("extensions", headerLength, Math.min(cs, f.length) - headerLength));
        int l1Size = b.getInt(36);
        long l1 = b.getLong(40);
        out.add(new Region("L1", l1, l1Size * 8L));
        for (int k = 0; k < l1Size; k++) {
            long l2 = b.getLong((int) (l1 + 8L * k)) & 0x00ff_ffff_ffff_fe00L;
            if (l2 != 0) {
                out.add(new Region("L2#" + k, l2, cs));
            }
        }
        long rt = b.getLong(48);
        int rtClusters = b.getInt(56);
        out.add(new Region("refcount table", rt, rtClusters * cs));
        for (long k = 0; k < rtClusters * cs / 8; k++) {
            long rb = b.getLong((int) (rt + 8 * k));
            if (rb != 0) {
                out.add(new Region("refcount block#" + k, rb, cs));
            }
        }
        int nbSnapshots = b.getInt(60);
        long st = b.getLong(64);
        if (nbSnapshots > 0) {
            long p = st;
            for (int s = 0; s < nbSnapshots; s++) {
                long sl1 = b.getLong((int) p);
                int sl1Size = b.getInt((int) p + 8);
                int idLen = Short.toUnsignedInt(b.getShort((int) p + 12));
                int nameLen = Short.toUnsignedInt(b.getShort((int) p + 14));
                int extra = b.getInt((int) p + 36);
                long end = p + 40 + extra + idLen + nameLen;
                end = (end + 7) & ~7L;
                out.add(new Region("snapshot entry#" + s, p, end - p));
                out.add(new Region("snapshot L1#" + s, sl1, sl1Size * 8L));
                p = end;
            }
        }
        if (version >= 3) {
            int p = headerLength;
            while (p + 8 <= cs) {
                int type = b.getInt(p);
                int len = b.getInt(p + 4);
                if (type == 0) {
                    break;
                }
                if (type == 0x23852875) {
                    int nb = b.getInt(p + 8);
                    long dirSize = b.getLong(p + 16);
                    long dir = b.getLong(p + 24);
                    out.add(new Region("bitmap directory", dir, dirSize));
                    long q = dir;
                    for (int k = 0; k < nb; k++) {
                        long tbl = b.getLong((int) q);
                        int tblSize = b.getInt((int) q + 8);
                        int nameLen = Short.toUnsignedInt(b.getShort((int) q + 14));
                        int extra = b.getInt((int) q + 20);
                        if (tbl != 0) {
                            out.add(new Region("bitmap table#" + k, tbl, tblSize * 8L));
                        }
                        q = (q + 24 + extra + nameLen + 7) & ~7L;
                    }
                }
                p += 8 + ((len + 7) & ~7);
            }
        }
        out.removeIf(reg -> reg.length() <= 0 || reg.offset() < 0 || reg.offset() + reg.length() > f.length);
        return out;
    }

    private static final long[] INTERESTING = {0, 1, -1, 0x7fff_ffff_ffff_ffffL, 0x8000_0000_0000_0000L,
        0xffff_ffffL, 0x8000_0000L, 0x7fff_ffffL, 1L << 40, 1L << 56, 0x00ff_ffff_ffff_fe00L, 512, 4096, 65536};

    /** Overwrites one to three spots of one region; returns what it did. */
    static String mutate(byte[] f, List<Region> regions, Random r) {
        Region reg = regions.get(r.nextInt(regions.size()));
        StringBuilder what = new StringBuilder(reg.name());
        ByteBuffer b = ByteBuffer.wrap(f);
        int spots = 1 + r.nextInt(3);
        for (int s = 0; s < spots; s++) {
            long at = reg.offset() + (long) (r.nextDouble() * reg.length());
            switch (r.nextInt(5)) {
                case 0 -> {
                    int bit = r.nextInt(8);
                    f[(int) at] ^= (byte) (1 << bit);
                    what.append(" flip@").append(at).append('.').append(bit);
                }
                case 1 -> {
                    byte v = (byte) r.nextInt(256);
                    f[(int) at] = v;
                    what.append(" byte@").append(at).append('=').append(v & 0xff);
                }
                case 2, 3 -> {
                    // aligned 8-byte fields are table entries and most header fields
                    long a = at & ~7L;
                    if (a + 8 <= f.length) {
                        long v = switch (r.nextInt(3)) {
                            case 0 -> INTERESTING[r.nextInt(INTERESTING.length)];
                            case 1 -> b.getLong((int) a) + (r.nextInt(17) - 8) * 512L;
                            // cross-link: point at another structure (loops, overlaps, shared tables)
                            default -> regions.get(r.nextInt(regions.size())).offset()
                                    | b.getLong((int) a) & 0x8000_0000_0000_0000L;
                        };
                        if (r.nextInt(3) == 0) {
                            v ^= b.getLong((int) a) & 0x8000_0000_0000_0001L;
                        }
                        b.putLong((int) a, v);
                        what.append(" long@").append(a).append('=').append(Long.toHexString(v));
                    }
                }
                default -> {
                    long a = at & ~3L;
                    if (a + 4 <= f.length) {
                        int v = (int) INTERESTING[r.nextInt(INTERESTING.length)];
                        b.putInt((int) a, v);
                        what.append(" int@").append(a).append('=').append(Integer.toHexString(v));
                    }
                }
            }
        }
        return what.toString();
    }
}
