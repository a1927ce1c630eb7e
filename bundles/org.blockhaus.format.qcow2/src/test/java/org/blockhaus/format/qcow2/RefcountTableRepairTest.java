package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.api.spi.CheckResult;
import org.blockhaus.api.spi.CheckableNode;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Broken refcount table entries found by {@link MetadataFuzzTest}, which qemu-img 7.2's
 * {@code check -r all} repairs: an entry that points past the end of the file (check reads that
 * block's refcounts as 0; {@code -r all} grows the file until the block lies inside it, then
 * rebuilds the refcount structure), an entry with reserved bits set (normal opens refuse the
 * image; check reports the entry and {@code -r all} rebuilds) and an entry that is not cluster
 * aligned (reported; {@code -r all} rebuilds). Each case runs qemu-img and ours on
 * twins of the same bytes and compares what check prints (the finding lines, the counts, the exit
 * code) and what the image is afterwards.
 */
class RefcountTableRepairTest {
    @TempDir
    Path dir;

    private int images;

    private record Ours(CheckResult result, List<String> findings) {
    }

    private Ours ourCheck(Path img, CheckResult.Repair repair) throws Exception {
        BlockCore core = Fixtures.core();
        List<String> lines = new ArrayList<>();
        OpenMode mode = new OpenMode(repair != CheckResult.Repair.NONE, false, w -> { }, true);
        try (Image i = core.open(img.toString(), Options.of("driver", "qcow2"), mode)) {
            ourCheckLines = lines;
            return new Ours(((CheckableNode) i.driverNode()).check(repair, lines::add), lines);
        }
    }

    /** What our last check printed. */
    private List<String> ourCheckLines = List.of();

    /** qemu-img's counts from --output=json and the image end, in the order {@link #counts(CheckResult)} gives ours. */
    private static String counts(String json) {
        return Fixtures.checkCounts(json) + " end=" + Fixtures.checkField(json, "image-end-offset");
    }

    private static String counts(CheckResult r) {
        return Fixtures.checkCounts(r) + " end=" + r.imageEndOffset();
    }

    private static List<String> lines(String stderr) {
        return stderr.isEmpty() ? List.of() : Arrays.asList(stderr.split("\n"));
    }

    /** A 1 GiB image (one refcount block covers it all) whose refcount table entry {@code index} points at {@code offset}. */
    private Path image(String opts, int index, long offset) throws Exception {
        Path img = dir.resolve("o" + images++ + ".qcow2");
        Qemu.img("create", "-q", "-f", "qcow2", "-o", opts, img.toString(), "1G").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 1 0 192k", "-c", "write -P 2 1M 64k", "-c", "write -P 3 700M 8k",
                img.toString()).ok();
        Patch.writeLong(img, Patch.readLong(img, 48) + 8L * index, offset);
        return img;
    }

    private Path twin(Path img) throws Exception {
        Path twin = dir.resolve("twin.qcow2");
        Files.copy(img, twin, StandardCopyOption.REPLACE_EXISTING);
        return twin;
    }

    /** Plain check: the same lines, counts and verdict as qemu-img check; the file is left as it was. */
    private void assertPlainCheckLikeQemu(Path img) throws Exception {
        byte[] before = Files.readAllBytes(img);
        Qemu.Result q = Qemu.img("check", "--output=json", img.toString());
        assertEquals(2, q.exit(), "qemu-img check must call it corrupt: " + q.out() + q.err());
        Ours ours = ourCheck(img, CheckResult.Repair.NONE);
        assertEquals(lines(q.err()), ours.findings());
        assertEquals(counts(q.out()), counts(ours.result()));
        assertTrue(Arrays.equals(before, Files.readAllBytes(img)), "a plain check must not write");
    }

    /** -r all on twins: the same lines and counts, and qemu-img check finds both clean and equal. */
    private void assertRepairLikeQemu(Path img, boolean sameFile) throws Exception {
        Path twin = twin(img);
        Qemu.Result q = Qemu.img("check", "-r", "all", "--output=json", twin.toString());
        assertEquals(0, q.exit(), "qemu-img check -r all repairs it: " + q.out() + q.err());
        Ours ours = ourCheck(img, CheckResult.Repair.ALL);
        if (sameFile) {
            assertEquals(lines(q.err()), ours.findings());
            // qemu-img's end offset after a repair is its second check's; the file comparison covers it
            assertEquals(counts(q.out()).replaceAll(" end=.*", ""), counts(ours.result()).replaceAll(" end=.*", ""));
        }
        Qemu.Result after = Qemu.img("check", img.toString());
        assertEquals(0, after.exit(), "qemu-img check after our repair: " + after.out() + after.err());
        assertEquals(0, ours.result().corruptions(), ours.findings().toString());
        Qemu.img("compare", "-f", "qcow2", "-F", "qcow2", twin.toString(), img.toString()).ok();
        if (sameFile) {
            // the file grown as qemu grows it, the new refcount structure where qemu puts it
            assertEquals(Files.size(twin), Files.size(img));
            assertEquals(-1, Files.mismatch(twin, img), "our repaired file differs from qemu's");
        }
    }

    @Test
    void onlyRefcountBlockOutsideIsCountedAndRepairedLikeQemu() throws Exception {
        Path img = image("cluster_size=64k", 0, 0x1000_0000L);
        assertPlainCheckLikeQemu(img);
        assertRepairLikeQemu(img, true);
    }

    @Test
    void refcountBlockOutsideForClustersPastTheEndIsRepairedLikeQemu() throws Exception {
        // entry 1 describes clusters past the end of the file; its block lies at 256 MiB
        Path img = image("cluster_size=64k", 1, 0x1000_0000L);
        assertPlainCheckLikeQemu(img);
        assertRepairLikeQemu(img, true);
    }

    @Test
    void blocksOutsideTheGrownFileOnlyAreRepairedLikeQemu() throws Exception {
        // entry 1 grows the file to 512 MiB; entry 2's block at 256 MiB is inside by then, entry 3's not
        Path img = image("cluster_size=64k", 1, 0x2000_0000L);
        long table = Patch.readLong(img, 48);
        Patch.writeLong(img, table + 16, 0x1000_0000L);
        Patch.writeLong(img, table + 24, 0x3000_0000L);
        assertPlainCheckLikeQemu(img);
        assertRepairLikeQemu(img, true);
    }

    @Test
    void smallClustersAndNarrowRefcountsAreRepairedLikeQemu() throws Exception {
        Path img = image("cluster_size=4k,refcount_bits=8", 0, 0x40_0000L);
        assertPlainCheckLikeQemu(img);
        assertRepairLikeQemu(img, true);
    }

    @Test
    void repairLeavesLeaksOnlyModeFailingLikeQemu() throws Exception {
        Path img = image("cluster_size=64k", 0, 0x1000_0000L);
        Path twin = twin(img);
        Qemu.Result q = Qemu.img("check", "-r", "leaks", twin.toString());
        assertEquals(1, q.exit(), q.out() + q.err());
        List<String> lines = new ArrayList<>();
        try (Image i = Fixtures.core().open(img.toString(), Options.of("driver", "qcow2"),
                new OpenMode(true, false, w -> { }, true))) {
            ((CheckableNode) i.driverNode()).check(CheckResult.Repair.LEAKS, lines::add);
            throw new AssertionError("-r leaks cannot rebuild the refcount structure");
        } catch (org.blockhaus.api.BlockException expected) {
            // qemu-img: "Check failed"
        }
        assertEquals(lines(q.err()).subList(0, lines.size()), lines);
        assertEquals(-1, Files.mismatch(twin, img), "-r leaks changes nothing here, as qemu's");
    }

    @Test
    void entryWithReservedBitsIsCountedAndRepairedLikeQemu() throws Exception {
        // entry 1 describes clusters past the end of the file; offset part zero, then a cluster inside
        for (long entry : new long[] {0x1, 0x7_0100L, 0x1000_0001L}) {
            Path img = image("cluster_size=64k", 1, entry);
            assertPlainCheckLikeQemu(img);
            assertRepairLikeQemu(img, true);
        }
    }

    @Test
    void misalignedEntriesAreCountedAndRebuiltLikeQemu() throws Exception {
        // entry 1 at a cluster inside the file plus one sector, entry 3 past the end of the file
        Path img = image("cluster_size=64k", 1, 0x7_0200L);
        Patch.writeLong(img, Patch.readLong(img, 48) + 24, 0x1000_0200L);
        assertPlainCheckLikeQemu(img);
        assertRepairLikeQemu(img, true);
    }

    @Test
    void entryWithReservedBitsNextToABlockOutsideIsRepairedLikeQemu() throws Exception {
        Path img = image("cluster_size=4k,refcount_bits=8", 1, 0x40_0000L);
        Patch.writeLong(img, Patch.readLong(img, 48) + 16, 0x20_0000L | 0x100);
        assertPlainCheckLikeQemu(img);
        assertRepairLikeQemu(img, true);
    }

    @Test
    void normalOpensStillRefuseReservedBitsAndLeakModeFailsLikeQemu() throws Exception {
        Path img = image("cluster_size=64k", 0, 0x2_0001L); // the only block, with a reserved bit
        byte[] before = Files.readAllBytes(img);
        for (boolean rw : new boolean[] {false, true}) {
            try (Image i = rw ? Fixtures.openRw(Fixtures.core(), img) : Fixtures.openRo(Fixtures.core(), img)) {
                throw new AssertionError("opened an image with reserved bits in a refcount table entry");
            } catch (org.blockhaus.api.BlockException expected) {
                assertTrue(expected.getMessage().contains("Reference count table entry 0 has reserved bits set"),
                        expected.getMessage());
            }
        }
        assertPlainCheckLikeQemu(img);
        Path twin = twin(img);
        Qemu.Result q = Qemu.img("check", "-r", "leaks", twin.toString());
        assertEquals(1, q.exit(), q.out() + q.err());
        List<String> lines = new ArrayList<>();
        try (Image i = Fixtures.core().open(img.toString(), Options.of("driver", "qcow2"),
                new OpenMode(true, false, w -> { }, true))) {
            ((CheckableNode) i.driverNode()).check(CheckResult.Repair.LEAKS, lines::add);
            throw new AssertionError("-r leaks cannot rebuild the refcount structure");
        } catch (org.blockhaus.api.BlockException expected) {
            // qemu-img: "Check failed"
        }
        assertEquals(lines(q.err()).subList(0, lines.size()), lines);
        assertTrue(Arrays.equals(before, Files.readAllBytes(img)), "refused opens and -r leaks write nothing");
        // qemu's -r all fails here (its rebuild writes the new block where its overlap check still
        // sees the old one, and marks the image corrupt); ours repairs it
        Ours ours = ourCheck(img, CheckResult.Repair.ALL);
        assertEquals(0, ours.result().corruptions(), ours.findings().toString());
        Qemu.Result after = Qemu.img("check", img.toString());
        assertEquals(0, after.exit(), after.out() + after.err());
        Path good = image("cluster_size=64k", 5, 0); // the same image unbroken (entry 5 was 0)
        Qemu.img("compare", "-f", "qcow2", "-F", "qcow2", good.toString(), img.toString()).ok();
    }

    @Test
    void blockPastTwoToTheSixtyThreeIsRepairedLikeQemu() throws Exception {
        // qemu cannot grow the file that far ("Invalid argument"); the rebuild drops the entry
        Path img = image("cluster_size=64k", 1, 0x8000_0000_0000_0000L);
        assertPlainCheckLikeQemu(img);
        assertRepairLikeQemu(img, true);
    }

    @Test
    void blockFarOutsideIsDroppedByTheRebuildWithoutGrowingTheFile() throws Exception {
        // 1 TiB: qemu grows the file to that size (sparse); our counters would need 2^24 entries,
        // so the rebuild drops the entry instead. Different layout, same repaired image.
        Path img = image("cluster_size=64k", 0, 1L << 40);
        assertPlainCheckLikeQemu(img);
        long before = Files.size(img);
        assertRepairLikeQemu(img, false);
        assertTrue(Files.size(img) < before + (64L << 20), "not grown to 1 TiB: " + Files.size(img));
        assertEquals(List.of("Repairing refcount block 0 is outside image", "ERROR could not resize image: File too large"),
                ourCheckLines.subList(0, 2));
    }
}
