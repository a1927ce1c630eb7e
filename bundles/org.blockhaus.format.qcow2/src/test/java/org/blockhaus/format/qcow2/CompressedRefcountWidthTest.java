package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.util.Arrays;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.Image;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.junit.jupiter.api.io.TempDir;

/**
 * Found by {@link DifferentialWorkloadTest} (seed 2007): with 1-bit refcounts a second compressed
 * cluster packed into a host cluster that already holds one failed with "Refcount of cluster N
 * would overflow 1 bits"; qemu starts a new host cluster when the refcount is at its maximum.
 */
class CompressedRefcountWidthTest {
    @TempDir
    Path dir;

    @ParameterizedTest
    @ValueSource(ints = {1, 2})
    void compressedClustersNeverNeedMoreThanTheWidthHolds(int refcountBits) throws Exception {
        Path img = dir.resolve("c.qcow2");
        BlockCore core = Fixtures.core();
        Fixtures.create(core, img, 1 << 20, "cluster_size", "4096", "refcount_bits", Integer.toString(refcountBits));
        try (Image i = Fixtures.openRw(core, img)) {
            for (int k = 0; k < 8; k++) {
                byte[] d = new byte[4096];
                Arrays.fill(d, (byte) (k + 1));
                i.write(4096L * k, ByteBuffer.wrap(d), BlockNode.COMPRESSED);
            }
        }
        Qemu.Result check = Qemu.img("check", img.toString());
        assertEquals(0, check.exit(), check.out() + check.err());
        for (int k = 0; k < 8; k++) {
            Qemu.io("-r", "-f", "qcow2", "-c", "read -P " + (k + 1) + " " + 4096 * k + " 4096", img.toString()).ok();
        }
    }
}
