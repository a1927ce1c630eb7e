package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.file.Files;
import java.nio.file.Path;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.Image;
import org.blockhaus.api.spi.SnapshotNode;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * Applying a snapshot with narrow refcounts, found by DifferentialWorkloadTest after an amend to
 * refcount_bits=2 (seeds 9037, 9198, 9216): qemu 7.2 adds the snapshot's references before it
 * drops the active state's, so it refuses when a shared cluster is already at the maximum; ours
 * applied it. Both sides get the same image and must agree; where both apply it, they read alike.
 */
class SnapshotApplyRefcountLimitTest {
    @TempDir
    Path dir;

    @ParameterizedTest(name = "refcount_bits={0}, snapshots {1}, rewritten {2}")
    @CsvSource({"2,2,false", "2,1,false", "2,2,true", "4,2,false", "1,1,false"})
    void appliesWhereQemuDoes(int bits, int snapshots, boolean rewritten) throws Exception {
        Path ours = dir.resolve("o.qcow2");
        Path twin = dir.resolve("t.qcow2");
        for (Path p : new Path[] {ours, twin}) {
            Qemu.img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096,refcount_bits=" + bits, p.toString(), "4M")
                    .ok();
            Qemu.io("-f", "qcow2", "-c", "write -P 1 0 64k", p.toString()).ok();
            for (int i = 0; i < snapshots; i++) {
                Qemu.img("snapshot", "-c", "s" + i, p.toString()); // with 1 bit: refused alike, not asserted here
            }
            if (rewritten) {
                Qemu.io("-f", "qcow2", "-c", "write -P 2 0 64k", p.toString()).ok();
            }
        }
        if (Qemu.img("snapshot", "-l", ours.toString()).out().isBlank()) {
            return; // 1-bit refcounts: no snapshot could be taken, nothing to apply
        }
        boolean ourOk = true;
        try (Image img = Fixtures.openRw(Fixtures.core(), ours)) {
            ((SnapshotNode) img.driverNode()).applySnapshot("s0");
        } catch (BlockException e) {
            ourOk = false;
        }
        boolean qemuOk = Qemu.img("snapshot", "-a", "s0", twin.toString()).exit() == 0;
        assertEquals(qemuOk, ourOk, "qemu and we must agree whether s0 can be applied");
        assertEquals(0, Qemu.img("check", ours.toString()).exit());
        assertArrayEquals(Fixtures.qemuRaw(twin, dir), Fixtures.qemuRaw(ours, dir));
    }
}
