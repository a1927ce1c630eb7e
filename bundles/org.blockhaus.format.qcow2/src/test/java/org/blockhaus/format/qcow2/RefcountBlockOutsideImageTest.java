package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.api.spi.CheckResult;
import org.blockhaus.api.spi.CheckableNode;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A refcount table entry that points past the end of the file (found by {@link MetadataFuzzTest}):
 * qemu-img 7.2's check reads that block's refcounts as 0, and {@code check -r all} grows the file
 * until the block lies inside it, then rebuilds the refcount structure. Each case runs qemu-img and
 * ours on twins of the same bytes and compares what check prints (the finding lines, the counts,
 * the exit code) and what the image is afterwards.
 */
class RefcountBlockOutsideImageTest {
    @TempDir
    Path dir;

    private record Ours(CheckResult result, List<String> findings) {
    }

    private Ours ourCheck(Path img, CheckResult.Repair repair) throws Exception {
        BlockCore core = Fixtures.core();
        List<String> lines = new ArrayList<>();
        OpenMode mode = new OpenMode(repair != CheckResult.Repair.NONE, false, w -> { }, true);
        try (Image i = core.open(img.toString(), Options.of("driver", "qcow2"), mode)) {
            return new Ours(((CheckableNode) i.driverNode()).check(repair, lines::add), lines);
        }
    }

    private static long field(String json, String name) {
        Matcher m = Pattern.compile("\"" + name + "\": (\\d+)").matcher(json);
        return m.find() ? Long.parseLong(m.group(1)) : 0;
    }

    /** qemu-img's counts from --output=json, in the order {@link #counts(CheckResult)} gives ours. */
    private static String counts(String json) {
        return "corruptions=" + field(json, "corruptions") + " leaks=" + field(json, "leaks")
                + " corruptions-fixed=" + field(json, "corruptions-fixed") + " leaks-fixed=" + field(json, "leaks-fixed")
                + " check-errors=" + field(json, "check-errors") + " end=" + field(json, "image-end-offset");
    }

    private static String counts(CheckResult r) {
        return "corruptions=" + r.corruptions() + " leaks=" + r.leaks() + " corruptions-fixed=" + r.corruptionsFixed()
                + " leaks-fixed=" + r.leaksFixed() + " check-errors=" + r.checkErrors() + " end=" + r.imageEndOffset();
    }

    private static List<String> lines(String stderr) {
        return stderr.isEmpty() ? List.of() : Arrays.asList(stderr.split("\n"));
    }

    /** A 1 GiB image (one refcount block covers it all) whose refcount table entry {@code index} points at {@code offset}. */
    private Path image(String opts, int index, long offset) throws Exception {
        Path img = dir.resolve("o.qcow2");
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
    void blockFarOutsideIsDroppedByTheRebuildWithoutGrowingTheFile() throws Exception {
        // 1 TiB: qemu grows the file to that size (sparse); our counters would need 2^24 entries,
        // so the rebuild drops the entry instead. Different layout, same repaired image.
        Path img = image("cluster_size=64k", 0, 1L << 40);
        assertPlainCheckLikeQemu(img);
        long before = Files.size(img);
        assertRepairLikeQemu(img, false);
        assertTrue(Files.size(img) < before + (64L << 20), "not grown to 1 TiB: " + Files.size(img));
    }
}
