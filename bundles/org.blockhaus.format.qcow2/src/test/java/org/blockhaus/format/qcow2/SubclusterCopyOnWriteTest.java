package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.ByteBuffer;
import java.nio.file.Path;
import org.blockhaus.api.Image;
import org.blockhaus.api.spi.SnapshotNode;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.junit.jupiter.api.io.TempDir;

/**
 * Found by {@link DifferentialWorkloadTest} (seed 141): a partial write to a cluster shared with a
 * snapshot, in an image with extended L2 entries, allocated all 32 subclusters of the new copy;
 * qemu allocates only the span from the first allocated (or written) subcluster to the last, so
 * the others keep reading from the backing file and map as unallocated.
 */
class SubclusterCopyOnWriteTest {
    @TempDir
    Path dir;

    @ParameterizedTest
    @ValueSource(strings = {"none", "backing"})
    void copyOnWriteOfSharedClusterAllocatesSubclustersLikeQemu(String backing) throws Exception {
        Path ours = dir.resolve("ours.qcow2");
        Path twin = dir.resolve("twin.qcow2");
        String opts = "cluster_size=65536,extended_l2=on";
        if (backing.equals("backing")) {
            Path base = dir.resolve("base.qcow2");
            Qemu.img("create", "-q", "-f", "qcow2", base.toString(), "1M").ok();
            Qemu.io("-f", "qcow2", "-c", "write -P 0x5a 0 1M", base.toString()).ok();
            opts += ",backing_file=" + base + ",backing_fmt=qcow2";
        }
        for (Path p : new Path[] {ours, twin}) {
            Qemu.img("create", "-q", "-f", "qcow2", "-o", opts, p.toString(), "1M").ok();
        }
        // subcluster 3 of cluster 1 allocated, then shared with a snapshot, then written at 9..10
        Qemu.io("-f", "qcow2", "-c", "write -P 1 71680 100", twin.toString()).ok();
        Qemu.img("snapshot", "-c", "s", twin.toString()).ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 2 83968 3000", twin.toString()).ok();
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRw(core, ours)) {
            i.write(71680, ByteBuffer.wrap(filled(100, 1)), 0);
            ((SnapshotNode) i.driverNode()).createSnapshot("s");
            i.write(83968, ByteBuffer.wrap(filled(3000, 2)), 0);
        }
        assertEquals(0, Qemu.img("check", ours.toString()).exit());
        assertEquals(0, Qemu.img("compare", ours.toString(), twin.toString()).exit());
        assertEquals(DifferentialWorkloadTest.map(twin), DifferentialWorkloadTest.map(ours));
    }

    private static byte[] filled(int n, int v) {
        byte[] b = new byte[n];
        java.util.Arrays.fill(b, (byte) v);
        return b;
    }
}
