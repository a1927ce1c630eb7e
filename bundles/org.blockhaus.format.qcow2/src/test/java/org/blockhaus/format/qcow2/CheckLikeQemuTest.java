package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.blockhaus.api.Image;
import org.blockhaus.api.spi.CheckResult;
import org.blockhaus.api.spi.CheckableNode;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Our check counts what `qemu-img check --output=json` counts, and `-r leaks` repairs like it. */
class CheckLikeQemuTest {
    @TempDir
    Path dir;

    private static long field(String json, String name) {
        Matcher m = Pattern.compile("\"" + name + "\": (\\d+)").matcher(json);
        return m.find() ? Long.parseLong(m.group(1)) : 0;
    }

    private CheckResult ourCheck(Path img, CheckResult.Repair repair) throws Exception {
        BlockCore core = Fixtures.core();
        try (Image i = repair == CheckResult.Repair.NONE ? Fixtures.openRo(core, img) : Fixtures.openRw(core, img)) {
            return ((CheckableNode) i.driverNode()).check(repair);
        }
    }

    private void assertSameCounts(Path img) throws Exception {
        String json = Qemu.img("check", "--output=json", img.toString()).out();
        CheckResult r = ourCheck(img, CheckResult.Repair.NONE);
        String expected = String.join(" ", "corruptions=" + field(json, "corruptions"), "leaks=" + field(json, "leaks"),
                "end=" + field(json, "image-end-offset"), "total=" + field(json, "total-clusters"),
                "allocated=" + field(json, "allocated-clusters"), "fragmented=" + field(json, "fragmented-clusters"),
                "compressed=" + field(json, "compressed-clusters"));
        String actual = String.join(" ", "corruptions=" + r.corruptions(), "leaks=" + r.leaks(),
                "end=" + r.imageEndOffset(), "total=" + r.totalClusters(), "allocated=" + r.allocatedClusters(),
                "fragmented=" + r.fragmentedClusters(), "compressed=" + r.compressedClusters());
        assertEquals(expected, actual, json);
    }

    private Path written(String opts) throws Exception {
        Path img = dir.resolve("c.qcow2");
        Qemu.img("create", "-f", "qcow2", "-o", opts, img.toString(), "8M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 1 4M 128k", "-c", "write -P 2 0 64k", "-c", "write -P 3 7M 1M",
                "-c", "write -z 1M 64k", "-c", "write -P 4 200k 4k", img.toString()).ok();
        return img;
    }

    @Test
    void countsOfCleanFragmentedImageMatchQemu() throws Exception {
        assertSameCounts(written("cluster_size=64k"));
    }

    @Test
    void countsOfVersion2ImageWithSmallClustersMatchQemu() throws Exception {
        assertSameCounts(written("compat=0.10,cluster_size=4k"));
    }

    @Test
    void countsOfCompressedImageMatchQemu() throws Exception {
        Path raw = dir.resolve("r.raw");
        byte[] d = new byte[3 << 20];
        for (int i = 0; i < d.length; i++) {
            d[i] = (byte) (i % 251 < 100 ? 0 : i / 5000);
        }
        Files.write(raw, d);
        Path img = dir.resolve("z.qcow2");
        Qemu.img("convert", "-c", "-O", "qcow2", raw.toString(), img.toString()).ok();
        assertSameCounts(img);
    }

    @Test
    void countsOfImageWithSnapshotMatchQemu() throws Exception {
        Path img = written("cluster_size=64k");
        Qemu.img("snapshot", "-c", "s1", img.toString()).ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 9 0 8k", img.toString()).ok();
        assertSameCounts(img);
    }

    @Test
    void countsOfImageWithPersistentBitmapsMatchQemu() throws Exception {
        Path img = dir.resolve("b.qcow2");
        Qemu.img("create", "-f", "qcow2", img.toString(), "4M").ok();
        Qemu.img("bitmap", "--add", img.toString(), "b0").ok();
        Qemu.img("bitmap", "--add", "-g", "4096", img.toString(), "b1").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 1 0 1M", img.toString()).ok();
        assertSameCounts(img);
        CheckResult r = ourCheck(img, CheckResult.Repair.LEAKS); // must not free bitmap clusters
        assertEquals(0, r.leaksFixed());
        assertEquals(0, Qemu.img("check", img.toString()).exit());
    }

    @Test
    void countsLeaksAndRepairsThem() throws Exception {
        Path img = written("cluster_size=64k");
        Patch.writeLong(img, Patch.l2Offset(img, 0) + 8L * 64, 0); // forget guest cluster 64 (4M): a leak
        assertEquals(3, Qemu.img("check", img.toString()).exit());
        assertSameCounts(img);
        CheckResult r = ourCheck(img, CheckResult.Repair.LEAKS);
        assertEquals(1, r.leaksFixed());
        assertEquals(0, r.leaks());
        assertEquals(0, Qemu.img("check", img.toString()).exit());
    }

    @Test
    void countsCorruptionsLikeQemu() throws Exception {
        Path img = written("cluster_size=64k");
        long block = Patch.refcountBlock(img, 0);
        long l2 = Patch.l2Offset(img, 0);
        long dataCluster = (Patch.readLong(img, l2) & 0x00ff_ffff_ffff_fe00L) >>> 16;
        Patch.writeShort(img, block + 2 * dataCluster, 0); // a referenced cluster with refcount 0
        assertEquals(2, Qemu.img("check", img.toString()).exit());
        assertSameCounts(img);
    }

    @Test
    void repairAllFixesRefcountsAndCopiedFlags() throws Exception {
        Path img = written("cluster_size=64k");
        long block = Patch.refcountBlock(img, 0);
        long l2 = Patch.l2Offset(img, 0);
        long dataCluster = (Patch.readLong(img, l2) & 0x00ff_ffff_ffff_fe00L) >>> 16;
        Patch.writeShort(img, block + 2 * dataCluster, 0);       // referenced cluster, refcount 0
        long second = Patch.readLong(img, l2 + 8L * 3);            // guest cluster 3 (200k)
        Patch.writeLong(img, l2 + 8L * 3, second & ~(1L << 63));   // COPIED missing on an owned cluster
        assertEquals(2, Qemu.img("check", img.toString()).exit());
        CheckResult r = ourCheck(img, CheckResult.Repair.ALL);
        assertEquals(0, r.corruptions());
        assertTrue(r.corruptionsFixed() >= 2, r.toString());
        Qemu.Result after = Qemu.img("check", img.toString());
        assertEquals(0, after.exit(), after.out() + after.err());
    }
}
