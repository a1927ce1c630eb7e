package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.file.Path;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.Image;
import org.blockhaus.api.spi.SnapshotNode;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.junit.jupiter.api.io.TempDir;

/**
 * Found by {@link MetadataFuzzTest} (seed 31, case 93): a snapshot entry with an empty L1 table
 * at an offset past the end of the file passes validation (an empty table needs no bytes); any
 * later snapshot operation took it for the snapshot being created and failed with a
 * NullPointerException. Now every operation works and leaves an image qemu-img check calls clean.
 */
class SnapshotEntryFromFuzzingTest {
    @TempDir
    Path dir;

    @ParameterizedTest
    @ValueSource(strings = {"apply", "delete", "create", "delete-other"})
    void emptySnapshotL1FarPastTheEndIsHarmless(String op) throws Exception {
        Path img = dir.resolve("s.qcow2");
        Qemu.img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", img.toString(), "1M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 1 0 64k", img.toString()).ok();
        Qemu.img("snapshot", "-c", "odd", img.toString()).ok();
        Qemu.img("snapshot", "-c", "other", img.toString()).ok();
        long entry = Patch.readLong(img, 64);
        Patch.writeLong(img, entry, 0x00ff_ffff_ffff_f000L); // L1 table offset, cluster aligned
        Patch.writeInt(img, entry + 8, 0); // L1 size
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRw(core, img)) {
            SnapshotNode sn = (SnapshotNode) i.driverNode();
            switch (op) {
                case "apply" -> sn.applySnapshot("odd");
                case "delete" -> sn.deleteSnapshot("odd");
                case "create" -> sn.createSnapshot("new");
                default -> sn.deleteSnapshot("other");
            }
        } catch (BlockException refused) {
            // a clear refusal would do too; the point is no other exception
        }
        Qemu.Result check = Qemu.img("check", img.toString());
        assertEquals(0, check.exit(), check.out() + check.err());
    }
}
