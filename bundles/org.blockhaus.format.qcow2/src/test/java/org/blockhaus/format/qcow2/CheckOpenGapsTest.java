package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.api.spi.CheckResult;
import org.blockhaus.api.spi.CheckResult.Repair;
import org.blockhaus.api.spi.CheckableNode;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Damaged images that qemu-img 7.2's check opens (its BDRV_O_CHECK relaxes the same validations)
 * and our check open used to refuse, found by {@link MetadataFuzzTest}: a refcount table or a
 * snapshot table that reaches past the end of the file (read as zeroes there, as qemu reads it),
 * an empty refcount table, a snapshot table offset that is not cluster aligned, and a bitmap
 * directory entry whose padding is not zero. Each case is built from an image qemu-img makes; qemu-img check and ours run on
 * twins of the same bytes, plain, with {@code -r leaks} and with {@code -r all}, and are compared:
 * exit code (ours as qemu-img derives it), stderr lines, counts, and afterwards the repaired file
 * (qemu-img check clean, qemu-img compare equal to qemu's repair, the same snapshots; where the
 * repair is the same, the same bytes). Where ours differs on purpose the test says so.
 */
class CheckOpenGapsTest {
    @TempDir
    Path dir;

    private int images;

    /** Our check as qemu-img runs it: the findings, the counts after its second check, or why it failed. */
    private record Ours(CheckResult result, List<String> stderr, BlockException failed) {
        /** qemu-img check's exit code for this outcome. */
        int exit() {
            return failed != null ? 1 : result.corruptions() > 0 ? 2 : result.leaks() > 0 ? 3 : 0;
        }
    }

    private static Ours ourCheck(Path img, Repair repair) throws Exception {
        List<String> lines = new ArrayList<>();
        OpenMode mode = new OpenMode(repair != Repair.NONE, false, w -> { }, true);
        try (Image i = Fixtures.core().open(img.toString(), Options.of("driver", "qcow2"), mode)) {
            CheckableNode n = (CheckableNode) i.driverNode();
            try {
                CheckResult r = n.check(repair, lines::add);
                if (r.corruptionsFixed() > 0 || r.leaksFixed() > 0) {
                    // as qemu-img (and our shell's check): a repaired image is checked once more
                    CheckResult again = n.check(Repair.NONE, lines::add);
                    r = new CheckResult(again.corruptions(), again.leaks(), again.checkErrors(), r.corruptionsFixed(),
                            r.leaksFixed(), again.imageEndOffset(), again.totalClusters(), again.allocatedClusters(),
                            again.fragmentedClusters(), again.compressedClusters());
                }
                return new Ours(r, lines, null);
            } catch (BlockException failed) {
                // the shell prints qemu-img's "Check failed" line
                lines.add("qemu-img: Check failed: " + failed.getMessage());
                return new Ours(null, lines, failed);
            }
        }
    }

    private static String[] checkArgs(Repair repair, Path img) {
        List<String> a = new ArrayList<>(List.of("check", "--output=json"));
        if (repair != Repair.NONE) {
            a.add("-r");
            a.add(repair == Repair.LEAKS ? "leaks" : "all");
        }
        a.add(img.toString());
        return a.toArray(new String[0]);
    }

    /** The file our check ran on and qemu-img's twin. */
    private record Checked(Path ours, Path twin) {
    }

    /**
     * qemu-img check on one copy of {@code img}, ours on another: the same exit code, lines and
     * counts; a plain check and a failed one leave both files as they were.
     */
    private Checked assertCheckLikeQemu(Path img, Repair repair) throws Exception {
        byte[] before = Files.readAllBytes(img);
        Path twin = dir.resolve("qemu-" + repair + "-" + img.getFileName());
        Files.copy(img, twin, StandardCopyOption.REPLACE_EXISTING);
        Path mine = dir.resolve("ours-" + repair + "-" + img.getFileName());
        Files.copy(img, mine, StandardCopyOption.REPLACE_EXISTING);
        Qemu.Result q = Qemu.img(checkArgs(repair, twin));
        Ours ours = ourCheck(mine, repair);
        String what = "check -r " + repair + " of " + img.getFileName() + "\nqemu: " + q.err() + q.out()
                + "\nours: " + ours.stderr() + " " + ours.result();
        assertEquals(q.exit(), ours.exit(), what);
        assertEquals(Fixtures.checkLines(q.err()), ours.stderr(), what);
        if (ours.failed() == null) {
            assertEquals(Fixtures.checkCounts(q.out()), Fixtures.checkCounts(ours.result()), what);
        }
        if (repair == Repair.NONE || ours.failed() != null) {
            assertArrayEquals(before, Files.readAllBytes(mine), "ours must not write: " + what);
            assertArrayEquals(before, Files.readAllBytes(twin), "qemu wrote: " + what);
        }
        return new Checked(mine, twin);
    }

    /** -r all on twins: qemu-img check clean on both, the same guest data and snapshots. */
    private void assertRepairedLikeQemu(Path broken, boolean sameBytes) throws Exception {
        Checked c = assertCheckLikeQemu(broken, Repair.ALL);
        Path img = c.ours();
        Path twin = c.twin();
        Qemu.Result after = Qemu.img("check", img.toString());
        assertEquals(0, after.exit(), "qemu-img check after our repair: " + after.out() + after.err());
        assertEquals(0, Qemu.img("check", twin.toString()).exit(), "qemu's repair is clean");
        Qemu.img("compare", "-f", "qcow2", "-F", "qcow2", twin.toString(), img.toString()).ok();
        assertEquals(Qemu.img("snapshot", "-l", twin.toString()).ok().out(),
                Qemu.img("snapshot", "-l", img.toString()).ok().out());
        if (sameBytes) {
            assertEquals(-1, Files.mismatch(twin, img), "our repaired file differs from qemu's");
        }
    }

    /** Normal opens, read-only and read-write, refuse the image with a message naming the problem, writing nothing. */
    private static void assertNormalOpensRefuse(Path img, String... message) throws Exception {
        byte[] before = Files.readAllBytes(img);
        for (boolean rw : new boolean[] {false, true}) {
            BlockException e = assertThrows(BlockException.class,
                    () -> (rw ? Fixtures.openRw(Fixtures.core(), img) : Fixtures.openRo(Fixtures.core(), img)).close());
            for (String m : message) {
                assertTrue(e.getMessage().contains(m), e.getMessage());
            }
        }
        assertArrayEquals(before, Files.readAllBytes(img), "a refused open must not write");
    }

    /**
     * 64 MiB, 64 KiB clusters: data at 0 (1 MiB) and 10 MiB, snapshot "s1", then data at 20 MiB
     * (the snapshot table lies inside the file, before the last data cluster).
     */
    private Path snapshotImage() throws Exception {
        Path img = dir.resolve("s" + images++ + ".qcow2");
        Qemu.img("create", "-q", "-f", "qcow2", img.toString(), "64M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 17 0 1M", "-c", "write -P 34 10M 64k", img.toString()).ok();
        Qemu.img("snapshot", "-c", "s1", img.toString()).ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 51 20M 64k", img.toString()).ok();
        return img;
    }

    /** 64 MiB, 64 KiB clusters, bitmaps "b1" (64 KiB) and "second" (512 KiB granularity), both dirty at 30 MiB. */
    private Path bitmapImage() throws Exception {
        Path img = dir.resolve("b" + images++ + ".qcow2");
        Qemu.img("create", "-q", "-f", "qcow2", img.toString(), "64M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 17 0 1M", img.toString()).ok();
        Qemu.img("bitmap", "--add", img.toString(), "b1").ok();
        Qemu.img("bitmap", "--add", "-g", "512k", img.toString(), "second").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 68 30M 64k", img.toString()).ok();
        return img;
    }

    /** Appends {@code bytes} at {@code offset} (the end of the file, or past it). */
    private static void writeAt(Path img, long offset, byte[] bytes) throws Exception {
        try (FileChannel ch = FileChannel.open(img, StandardOpenOption.WRITE)) {
            ch.write(ByteBuffer.wrap(bytes), offset);
        }
    }

    private static byte[] readAt(Path img, long offset, int len) throws Exception {
        try (FileChannel ch = FileChannel.open(img)) {
            ByteBuffer b = ByteBuffer.allocate(len);
            ch.read(b, offset);
            return b.array();
        }
    }

    // ---- the refcount table ---------------------------------------------------------------------

    @Test
    void refcountTablePastTheEndIsReadAsZeroesAndRebuiltLikeQemu() throws Exception {
        Path img = snapshotImage();
        Patch.writeLong(img, 48, 64L << 20); // the table at 64 MiB, the file is about 1.6 MiB
        assertNormalOpensRefuse(img, "Reference count table", "beyond the end of the file");
        assertCheckLikeQemu(img, Repair.NONE);
        assertCheckLikeQemu(img, Repair.LEAKS); // fails: "need to rebuild"
        assertRepairedLikeQemu(img, true);
    }

    @Test
    void refcountTableRunningPastTheEndIsRebuiltLikeQemu() throws Exception {
        // a copy of the table in the last cluster, described as two clusters: the second lies past the end
        Path img = snapshotImage();
        long end = Files.size(img);
        writeAt(img, end, readAt(img, Patch.readLong(img, 48), 64 << 10));
        Patch.writeLong(img, 48, end);
        Patch.writeInt(img, 56, 2);
        assertNormalOpensRefuse(img, "Reference count table", "beyond the end of the file");
        assertCheckLikeQemu(img, Repair.NONE);
        assertCheckLikeQemu(img, Repair.LEAKS);
        // qemu's -r all repairs the leak (the old table) and leaves the table as it is, since its
        // first cluster holds the right refcounts: its second check, and every later one, still
        // reports the region past the end. Ours rebuilds the refcount structure.
        Path twin = dir.resolve("twin.qcow2");
        Files.copy(img, twin);
        Qemu.Result q = Qemu.img("check", "-r", "all", twin.toString());
        assertEquals(2, q.exit(), q.out() + q.err());
        assertEquals(2, Qemu.img("check", "-r", "all", twin.toString()).exit(), "qemu never repairs it");
        Ours ours = ourCheck(img, Repair.ALL);
        assertEquals(0, ours.exit(), ours.stderr().toString());
        assertEquals(List.of("ERROR: counting reference for region exceeding the end of the file by one cluster or more:"
                + " offset 0x" + Long.toHexString(end) + " size 0x20000", "Leaked cluster 1 refcount=1 reference=0",
                "Rebuilding refcount structure", "Repairing cluster 2 refcount=1 reference=0"), ours.stderr());
        assertEquals("corruptions=0 leaks=0 corruptions-fixed=1 leaks-fixed=1 check-errors=0", Fixtures.checkCounts(ours.result()));
        Qemu.Result after = Qemu.img("check", img.toString());
        assertEquals(0, after.exit(), "qemu-img check after our repair: " + after.out() + after.err());
        assertTrue(Patch.readLong(img, 48) + Patch.readInt(img, 56) * 65536L <= Files.size(img), "the table is inside");
        Qemu.img("compare", "-f", "qcow2", "-F", "qcow2", twin.toString(), img.toString()).ok();
        assertEquals(Qemu.img("snapshot", "-l", twin.toString()).ok().out(),
                Qemu.img("snapshot", "-l", img.toString()).ok().out());
    }

    @Test
    void emptyRefcountTableIsRebuiltLikeQemu() throws Exception {
        Path img = snapshotImage();
        Patch.writeInt(img, 56, 0); // refcount_table_clusters
        assertNormalOpensRefuse(img, "Invalid reference count table");
        assertCheckLikeQemu(img, Repair.NONE);
        assertCheckLikeQemu(img, Repair.LEAKS);
        assertRepairedLikeQemu(img, true);
    }

    @Test
    void refcountTablePastTheEndWithBitmapsIsRebuiltLikeQemu() throws Exception {
        // a read-write open marks bitmaps in use, which allocates: not from these refcounts
        Path img = bitmapImage();
        Patch.writeLong(img, 48, 64L << 20);
        assertNormalOpensRefuse(img, "Reference count table", "beyond the end of the file");
        assertCheckLikeQemu(img, Repair.NONE);
        // -r leaks fails ("need to rebuild") on both; then qemu's close stores the bitmaps from
        // the refcounts it could not trust, trips its overlap check on the header, marks the image
        // corrupt and loses the bitmaps. Ours leaves the file as it was.
        byte[] before = Files.readAllBytes(img);
        Path twin = dir.resolve("twin.qcow2");
        Files.copy(img, twin);
        Qemu.Result q = Qemu.img("check", "-r", "leaks", twin.toString());
        assertEquals(1, q.exit(), q.err());
        Path mine = dir.resolve("mine.qcow2");
        Files.copy(img, mine);
        Ours leaks = ourCheck(mine, Repair.LEAKS);
        assertEquals(1, leaks.exit());
        List<String> theirs = Fixtures.checkLines(q.err());
        assertEquals(theirs.subList(0, leaks.stderr().size()), leaks.stderr());
        assertEquals(List.of("qcow2: Marking image as corrupt: Preventing invalid write on metadata (overlaps with"
                + " qcow2_header); further corruption events will be suppressed"),
                theirs.subList(leaks.stderr().size(), leaks.stderr().size() + 1));
        assertTrue(Qemu.img("info", twin.toString()).out().contains("corrupt: true"), "qemu marked it corrupt");
        assertArrayEquals(before, Files.readAllBytes(mine), "our failed -r leaks writes nothing");
        // -r all: qemu's close stores the bitmaps anew (elsewhere); ours leaves them where they are
        Checked c = assertCheckLikeQemu(img, Repair.ALL);
        assertEquals(0, Qemu.img("check", c.ours().toString()).exit());
        Qemu.img("compare", "-f", "qcow2", "-F", "qcow2", c.twin().toString(), c.ours().toString()).ok();
        for (String b : List.of("b1", "second")) {
            assertEquals(render(BitmapsTest.qemuDirty(c.twin(), b)), render(BitmapsTest.qemuDirty(c.ours(), b)), b);
        }
    }

    @Test
    void refcountTableWhoseEndOverflowsIsRefusedByCheckToo() throws Exception {
        Path img = snapshotImage();
        Patch.writeLong(img, 48, 0x7fff_ffff_ffff_0000L); // plus one cluster passes 2^63
        byte[] before = Files.readAllBytes(img);
        for (Repair r : Repair.values()) {
            Path twin = dir.resolve("twin.qcow2");
            Files.copy(img, twin, StandardCopyOption.REPLACE_EXISTING);
            Qemu.Result q = Qemu.img(checkArgs(r, twin));
            assertEquals(1, q.exit(), q.err());
            assertTrue(q.err().contains("Reference count table offset invalid"), q.err());
            BlockException e = assertThrows(BlockException.class, () -> ourCheck(img, r));
            assertTrue(e.getMessage().contains("Reference count table offset 9223372036854710272 is invalid"),
                    e.getMessage());
        }
        assertArrayEquals(before, Files.readAllBytes(img));
    }

    // ---- the snapshot table ---------------------------------------------------------------------

    @Test
    void snapshotTablePastTheEndIsReadAsZeroesLikeQemu() throws Exception {
        // the one entry reads as zeroes: an incomplete entry without a table; s1's clusters leak
        Path img = snapshotImage();
        Patch.writeLong(img, 64, 64L << 20);
        assertNormalOpensRefuse(img, "Snapshot table", "beyond the end of the file");
        assertCheckLikeQemu(img, Repair.NONE);
        assertCheckLikeQemu(img, Repair.LEAKS);
        assertRepairedLikeQemu(img, true);
    }

    @Test
    void snapshotTableRunningPastTheEndKeepsItsSnapshotLikeQemu() throws Exception {
        // s1's entry copied to the end of the file, which then ends inside a cluster, right after
        // it, and 13 more entries counted: they read as zeroes (incomplete entries), the file's
        // rest of the first 512 bytes (the file driver rounds lengths up to that, as qemu's) and
        // then past its end, which only check opens take. s1 is kept.
        Path img = snapshotImage();
        long table = Patch.readLong(img, 64);
        int entry = (40 + 24 + 1 + 2 + 7) & ~7; // extra data 24, id "1", name "s1"
        assertEquals(24, Patch.readInt(img, table + 36), "qemu's extra data size");
        long end = Files.size(img);
        writeAt(img, end, readAt(img, table, entry));
        Patch.writeInt(img, 60, 14); // 72 + 13 * 40 bytes: past the end of the rounded length
        Patch.writeLong(img, 64, end);
        assertNormalOpensRefuse(img, "Snapshot table", "beyond the end of the file");
        assertCheckLikeQemu(img, Repair.NONE);
        assertCheckLikeQemu(img, Repair.LEAKS);
        assertRepairedLikeQemu(img, true);
        assertTrue(Qemu.img("snapshot", "-l", img.toString()).out().contains(" s1 "), "s1 is kept");
    }

    @Test
    void unalignedOffsetOfAnEmptySnapshotTableFailsLikeQemuAndAllClearsIt() throws Exception {
        Path img = dir.resolve("e.qcow2");
        Qemu.img("create", "-q", "-f", "qcow2", img.toString(), "64M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 17 0 1M", img.toString()).ok();
        Path good = dir.resolve("good.qcow2");
        Files.copy(img, good);
        Patch.writeLong(img, 64, 0x1_0008L); // nb_snapshots stays 0
        assertNormalOpensRefuse(img, "Snapshot table offset 65544 is invalid");
        assertTrue(Qemu.img("info", img.toString()).err().contains("Snapshot table offset invalid"),
                "qemu's open refuses it too");
        assertCheckLikeQemu(img, Repair.NONE); // "ERROR snapshot table offset invalid", Check failed
        assertCheckLikeQemu(img, Repair.LEAKS);
        // qemu's -r all fails the same way and leaves an image its own open refuses; ours clears
        // the offset (an empty table needs none)
        Path twin = dir.resolve("twin.qcow2");
        Files.copy(img, twin);
        assertEquals(1, Qemu.img("check", "-r", "all", twin.toString()).exit());
        Ours ours = ourCheck(img, Repair.ALL);
        assertEquals(List.of("Repairing snapshot table offset invalid"), ours.stderr());
        assertEquals("corruptions=0 leaks=0 corruptions-fixed=1 leaks-fixed=0 check-errors=0", Fixtures.checkCounts(ours.result()));
        assertEquals(0, Patch.readLong(img, 64));
        assertEquals(0, Qemu.img("check", img.toString()).exit());
        Qemu.img("compare", "-f", "qcow2", "-F", "qcow2", good.toString(), img.toString()).ok();
        assertEquals(-1, Files.mismatch(good, img), "only the offset changed back");
    }

    @Test
    void unalignedSnapshotTableWithEntriesFailsEveryCheckLikeQemu() throws Exception {
        Path img = snapshotImage();
        Patch.writeLong(img, 64, Patch.readLong(img, 64) + 8);
        assertNormalOpensRefuse(img, "Snapshot table offset", "is invalid");
        for (Repair r : Repair.values()) {
            assertCheckLikeQemu(img, r);
        }
    }

    // ---- the bitmap directory -------------------------------------------------------------------

    /** Where the header's bitmaps extension lies. */
    private static long bitmapsExtension(Path img) throws Exception {
        long pos = Patch.readInt(img, 100); // header_length: the extensions follow
        while (true) {
            int type = Patch.readInt(img, pos);
            int len = Patch.readInt(img, pos + 4);
            assertTrue(type != 0, "no bitmaps extension");
            if (type == Qcow2Header.EXT_BITMAPS) {
                return pos;
            }
            pos += 8 + ((len + 7) & ~7);
        }
    }

    @Test
    void bitmapPaddingThatIsNotZeroIsRepairedLikeQemu() throws Exception {
        Path img = bitmapImage();
        long dirOffset = Patch.readLong(img, bitmapsExtension(img) + 8 + 16);
        writeAt(img, dirOffset + 24 + 2 + 1, new byte[] {0x5a}); // b1's entry: 26 bytes, padded to 32
        assertNormalOpensRefuse(img, "the padding of bitmap 'b1' is not zero");
        // qemu does not look at the padding (its open takes it); ours counts it, as our normal
        // open refuses the image: a plain check that called it clean would hide that
        byte[] before = Files.readAllBytes(img);
        assertEquals(0, Qemu.img("check", img.toString()).exit());
        Ours plain = ourCheck(img, Repair.NONE);
        assertEquals(List.of("ERROR bitmap directory entry 0 has padding that is not zero"), plain.stderr());
        assertEquals("corruptions=1 leaks=0 corruptions-fixed=0 leaks-fixed=0 check-errors=0", Fixtures.checkCounts(plain.result()));
        assertArrayEquals(before, Files.readAllBytes(img));
        // -r leaks and -r all open read-write, which stores the directory anew (qemu's at close)
        for (Repair r : new Repair[] {Repair.LEAKS, Repair.ALL}) {
            Checked c = assertCheckLikeQemu(img, r);
            Path copy = c.ours();
            Path twin = c.twin();
            assertEquals(0, Qemu.img("check", copy.toString()).exit());
            assertEquals(0, ourCheck(copy, Repair.NONE).exit(), "the padding is zero now");
            Fixtures.openRw(Fixtures.core(), copy).close();
            Qemu.img("compare", "-f", "qcow2", "-F", "qcow2", twin.toString(), copy.toString()).ok();
            for (String b : List.of("b1", "second")) {
                assertEquals(render(BitmapsTest.qemuDirty(twin, b)), render(BitmapsTest.qemuDirty(copy, b)), b);
            }
        }
    }

    @Test
    void bitmapPaddingPastTheDirectoryIsRefusedByCheckToo() throws Exception {
        Path img = bitmapImage();
        long ext = bitmapsExtension(img);
        Patch.writeLong(img, ext + 8 + 8, 62); // "second"'s 30 bytes fit, its padding does not
        byte[] before = Files.readAllBytes(img);
        for (Repair r : Repair.values()) {
            Path twin = dir.resolve("twin.qcow2");
            Files.copy(img, twin, StandardCopyOption.REPLACE_EXISTING);
            Qemu.Result q = Qemu.img(checkArgs(r, twin));
            assertEquals(1, q.exit(), q.err());
            assertTrue(q.err().contains("Broken bitmap directory"), q.err());
            BlockException e = assertThrows(BlockException.class, () -> ourCheck(img, r));
            assertTrue(e.getMessage().contains("the padding of bitmap 'second' runs past the end of the directory"),
                    e.getMessage());
        }
        assertArrayEquals(before, Files.readAllBytes(img));
    }

    private static String render(List<long[]> ranges) {
        StringBuilder s = new StringBuilder();
        for (long[] r : ranges) {
            s.append(Arrays.toString(r));
        }
        return s.toString();
    }
}
