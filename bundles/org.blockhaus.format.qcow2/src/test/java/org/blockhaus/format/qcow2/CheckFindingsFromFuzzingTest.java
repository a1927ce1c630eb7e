package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
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
 * Regressions found by {@link MetadataFuzzTest}: corruptions qemu-img check counts that our check
 * called clean (or "repaired" when it could not be), each compared with qemu-img 7.2 on the same
 * bytes.
 */
class CheckFindingsFromFuzzingTest {
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

    private Path image(String opts) throws Exception {
        return image(opts, "4M");
    }

    private Path image(String opts, String size) throws Exception {
        Path img = dir.resolve("f.qcow2");
        Qemu.img("create", "-q", "-f", "qcow2", "-o", opts, img.toString(), size).ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 1 0 192k", "-c", "write -P 2 1M 64k", img.toString()).ok();
        return img;
    }

    /** Our corruption count equals qemu-img's, and the findings name the problem as qemu's lines do. */
    private void assertCountedLikeQemu(Path img, String expectedLine) throws Exception {
        Qemu.Result q = Qemu.img("check", "--output=json", img.toString());
        assertEquals(2, q.exit(), "qemu-img check must call it corrupt: " + q.out() + q.err());
        Ours ours = ourCheck(img, CheckResult.Repair.NONE);
        assertEquals(Fixtures.checkField(q.out(), "corruptions"), ours.result().corruptions(), "qemu: " + q.err() + "\nours: " + ours.findings());
        assertTrue(ours.findings().stream().anyMatch(l -> l.startsWith(expectedLine)), ours.findings().toString());
    }

    @Test
    void countsL2EntryWithReservedBitsAsCorruption() throws Exception {
        Path img = image("cluster_size=64k");
        long l2 = Patch.l2Offset(img, 0);
        Patch.writeLong(img, l2 + 8, Patch.readLong(img, l2 + 8) | 0x0100_0000_0000_0000L);
        assertCountedLikeQemu(img, "ERROR found l2 entry with reserved bits set: ");
    }

    @Test
    void countsL1EntryWithReservedBitsAsCorruption() throws Exception {
        Path img = image("cluster_size=64k");
        long l1 = Patch.readLong(img, 40);
        Patch.writeLong(img, l1, Patch.readLong(img, l1) | 0x0200_0000_0000_0000L);
        assertCountedLikeQemu(img, "ERROR found L1 entry with reserved bits set: ");
    }

    @Test
    void countsSubclusterBitmapCorruptionsLikeQemu() throws Exception {
        Path img = image("cluster_size=64k,extended_l2=on");
        long l2 = Patch.l2Offset(img, 0);
        // entry 0: allocated and zero at once for subcluster 0; entry 8: unallocated with allocation bits
        Patch.writeLong(img, l2 + 8, Patch.readLong(img, l2 + 8) | 1L << 32);
        Patch.writeLong(img, l2 + 8 * 16 + 8, 0xffL);
        assertCountedLikeQemu(img, "ERROR offset=");
        assertTrue(ourCheck(img, CheckResult.Repair.NONE).findings()
                .contains("ERROR: Unallocated cluster has non-zero subcluster allocation map"));
    }

    @Test
    void refcountOverflowIsNotReportedAsRepaired() throws Exception {
        // refcount_bits=1: a second L2 entry for the same data cluster needs a refcount of 2
        Path img = image("cluster_size=64k,refcount_bits=1");
        long l2 = Patch.l2Offset(img, 0);
        Patch.writeLong(img, l2 + 8 * 10, Patch.readLong(img, l2) & ~(1L << 63));
        assertCountedLikeQemu(img, "ERROR: overflow cluster offset=0x");
        Ours repaired = ourCheck(img, CheckResult.Repair.ALL);
        assertTrue(repaired.result().corruptions() > 0, "a refcount of 2 does not fit in 1 bit: " + repaired);
        assertEquals(2, Qemu.img("check", img.toString()).exit(), "qemu-img still finds the corruption");
    }

    @Test
    void refcountBlockClaimedAsL2TableIsCorruptAndRebuilt() throws Exception {
        Path img = image("cluster_size=64k", "1G"); // two L1 entries
        Path twin = dir.resolve("twin.qcow2");
        long l1 = Patch.readLong(img, 40);
        Patch.writeLong(img, l1 + 8, Patch.refcountBlock(img, 0)); // L1[1] points at refcount block 0
        Files.copy(img, twin, StandardCopyOption.REPLACE_EXISTING);
        assertCountedLikeQemu(img, "ERROR refcount block 0 refcount=2");
        Qemu.img("check", "-q", "-r", "all", twin.toString());
        int qemuAfter = Qemu.img("check", twin.toString()).exit();
        ourCheck(img, CheckResult.Repair.ALL);
        assertEquals(qemuAfter, Qemu.img("check", img.toString()).exit(), "after -r all, ours as qemu's");
    }

    @Test
    void repairsMisalignedPreallocatedZeroClusterLikeQemu() throws Exception {
        Path img = image("cluster_size=64k");
        long l2 = Patch.l2Offset(img, 0);
        long e = Patch.readLong(img, l2 + 16);
        Patch.writeLong(img, l2 + 16, e + 512 | 1); // zero flag, offset off by one sector
        assertEquals(2, Qemu.img("check", img.toString()).exit());
        Ours ours = ourCheck(img, CheckResult.Repair.ALL);
        assertTrue(ours.findings().stream().anyMatch(l -> l.startsWith("Repairing offset=")
                && l.endsWith(": Preallocated cluster is not properly aligned; L2 entry corrupted.")), ours.findings().toString());
        Qemu.Result after = Qemu.img("check", img.toString());
        assertEquals(0, after.exit(), after.out() + after.err());
        Qemu.io("-f", "qcow2", "-c", "read -P 0 128k 64k", img.toString()).ok();
    }

    @Test
    void countsL1EntryWithFlagsButNoTableAsCorruption() throws Exception {
        Path img = image("cluster_size=64k", "1G"); // two L1 entries
        long l1 = Patch.readLong(img, 40);
        Patch.writeLong(img, l1 + 8, 1L << 63); // COPIED, offset 0
        assertEquals(2, Qemu.img("check", img.toString()).exit());
        Ours ours = ourCheck(img, CheckResult.Repair.NONE);
        assertTrue(ours.result().corruptions() > 0, ours.findings().toString());
    }
}
