package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.api.spi.CheckResult;
import org.blockhaus.api.spi.CheckableNode;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A bitmap table entry pointing past the end of the file, or a bitmap table lying there, found by
 * {@link MetadataFuzzTest}. Normal opens refuse such an image. qemu-img 7.2's check opens it,
 * reports the reference ("counting reference for region exceeding the end of the file") and the
 * clusters nothing references now as leaks; {@code -r all} repairs the leaks, still reports the
 * reference in its second check, and its close stores the bitmap anew with what lies past the
 * end read as zeroes, so qemu-img check is clean afterwards. Ours is compared on twins: plain
 * check lines and counts, {@code -r all} lines and counts, then qemu-img check clean on ours, the
 * guest data equal and every bitmap's dirty ranges (read by qemu-nbd on both files) equal.
 */
class BitmapTableRepairTest {
    @TempDir
    Path dir;

    private int images;

    private record Ours(CheckResult result, List<String> findings) {
    }

    private static Ours ourCheck(Path img, CheckResult.Repair repair) throws Exception {
        List<String> lines = new ArrayList<>();
        OpenMode mode = new OpenMode(repair != CheckResult.Repair.NONE, false, w -> { }, true);
        try (Image i = Fixtures.core().open(img.toString(), Options.of("driver", "qcow2"), mode)) {
            CheckableNode n = (CheckableNode) i.driverNode();
            CheckResult r = n.check(repair, lines::add);
            if (r.corruptionsFixed() > 0 || r.leaksFixed() > 0) {
                // as qemu-img (and our shell's check): a repaired image is checked once more, in the
                // same open, and that check's findings and counts are what is left
                CheckResult again = n.check(CheckResult.Repair.NONE, lines::add);
                r = new CheckResult(again.corruptions(), again.leaks(), again.checkErrors(), r.corruptionsFixed(),
                        r.leaksFixed(), again.imageEndOffset(), again.totalClusters(), again.allocatedClusters(),
                        again.fragmentedClusters(), again.compressedClusters());
            }
            return new Ours(r, lines);
        }
    }

    /** The offset of bitmap {@code index}'s table, from the header's bitmaps extension and the directory. */
    private static long bitmapTable(Path img, int index) throws Exception {
        return Patch.readLong(img, directoryEntry(img, index));
    }

    /** Where bitmap {@code index}'s directory entry lies (its first field is the table offset). */
    private static long directoryEntry(Path img, int index) throws Exception {
        long pos = Patch.readInt(img, 100); // header_length: the extensions follow
        while (true) {
            int type = Patch.readInt(img, pos);
            int len = Patch.readInt(img, pos + 4);
            assertTrue(type != 0, "no bitmaps extension");
            if (type == Qcow2Header.EXT_BITMAPS) {
                long entry = Patch.readLong(img, pos + 8 + 16);
                for (int i = 0; i < index; i++) {
                    int nameSize = Short.toUnsignedInt((short) (Patch.readInt(img, entry + 16) & 0xffff));
                    int extra = Patch.readInt(img, entry + 20);
                    entry += (24 + extra + nameSize + 7) & ~7;
                }
                return entry;
            }
            pos += 8 + ((len + 7) & ~7);
        }
    }

    /**
     * A 4 GiB image with 4 KiB clusters and two bitmaps at 64 KiB granularity (two table entries
     * each: one data cluster covers 2 GiB), both dirty in the first and the last 2 GiB.
     */
    private Path image() throws Exception {
        Path img = dir.resolve("b" + images++ + ".qcow2");
        Qemu.img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", img.toString(), "4G").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 1 0 128k", img.toString()).ok();
        Qemu.img("bitmap", "--add", "-g", "64k", img.toString(), "b0").ok();
        Qemu.img("bitmap", "--add", "-g", "64k", img.toString(), "b1").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 2 64k 192k", "-c", "write -P 3 3G 64k", img.toString()).ok();
        return img;
    }

    private void assertLikeQemu(Path img) throws Exception {
        byte[] before = Files.readAllBytes(img);
        Qemu.Result q = Qemu.img("check", "--output=json", img.toString());
        Ours ours = ourCheck(img, CheckResult.Repair.NONE);
        assertEquals(Fixtures.checkLines(q.err()), ours.findings());
        assertEquals(Fixtures.checkCounts(q.out()), Fixtures.checkCounts(ours.result()));
        assertEquals(q.exit(), ours.result().corruptions() > 0 ? 2 : ours.result().leaks() > 0 ? 3 : 0);
        assertArrayEquals(before, Files.readAllBytes(img), "a plain check must not write");

        BlockException refused = assertThrows(BlockException.class,
                () -> Fixtures.core().open(img.toString(), Options.of("driver", "qcow2"), OpenMode.READ_WRITE).close());
        assertTrue(refused.getMessage().contains("not a cluster inside the file")
                || refused.getMessage().contains("lies beyond the end of the file"), refused.getMessage());
        assertArrayEquals(before, Files.readAllBytes(img), "a refused open must not write");

        Path twin = dir.resolve("twin.qcow2");
        Files.copy(img, twin, StandardCopyOption.REPLACE_EXISTING);
        Qemu.Result qr = Qemu.img("check", "-r", "all", "--output=json", twin.toString());
        Ours repaired = ourCheck(img, CheckResult.Repair.ALL);
        assertEquals(Fixtures.checkLines(qr.err()), repaired.findings());
        assertEquals(Fixtures.checkCounts(qr.out()), Fixtures.checkCounts(repaired.result()));
        Qemu.Result qAfter = Qemu.img("check", twin.toString());
        assertEquals(0, qAfter.exit(), "qemu's close stores the bitmap anew: " + qAfter.out() + qAfter.err());
        Qemu.Result after = Qemu.img("check", img.toString());
        assertEquals(0, after.exit(), "qemu-img check after our repair: " + after.out() + after.err());
        Qemu.img("compare", "-f", "qcow2", "-F", "qcow2", twin.toString(), img.toString()).ok();
        for (String b : List.of("b0", "b1")) {
            List<long[]> theirs = BitmapsTest.qemuDirty(twin, b);
            assertEquals(render(theirs), render(BitmapsTest.qemuDirty(img, b)), "bitmap " + b);
        }
        assertTrue(Qemu.img("info", img.toString()).out().contains("name: b1"), "the bitmaps are kept");
    }

    private static String render(List<long[]> ranges) {
        StringBuilder s = new StringBuilder();
        for (long[] r : ranges) {
            s.append(Arrays.toString(r));
        }
        return s.toString();
    }

    @Test
    void entryPastTheEndIsCountedAndDroppedLikeQemu() throws Exception {
        Path img = image();
        Patch.writeLong(img, bitmapTable(img, 0) + 8, 0x1000_0000L); // b0's second chunk at 256 MiB
        assertLikeQemu(img);
    }

    @Test
    void tablesPastTheEndAreCountedAndReadAsZeroesLikeQemu() throws Exception {
        Path img = image();
        long end = Files.size(img);
        Patch.writeLong(img, directoryEntry(img, 0), 0x1000_0000L); // b0's table at 256 MiB
        Patch.writeLong(img, directoryEntry(img, 1), (end + 0xfff) & ~0xfffL); // b1's just past the end
        assertLikeQemu(img);
    }

    @Test
    void entriesPastTheEndInTwoBitmapsAreRepairedLikeQemu() throws Exception {
        Path img = image();
        long end = Files.size(img);
        Patch.writeLong(img, bitmapTable(img, 0), 0x1_0000_0000L); // b0's first chunk, 4 GiB
        Patch.writeLong(img, bitmapTable(img, 1) + 8, (end + 0xfff) & ~0xfffL); // b1's second, just past the end
        assertLikeQemu(img);
    }
}
