package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.file.Path;
import java.util.List;
import org.blockhaus.api.Image;
import org.blockhaus.api.Preallocation;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Clusters that a shrink or a snapshot operation frees go back to the file system as qemu's
 * discards give them back, so the file's allocated blocks - `info`'s disk size - agree; clusters
 * a snapshot still uses stay. Each twin is built by qemu-io/qemu-img with the same writes, one
 * changed by qemu-img, one by us; both must then pass qemu-img check and read the same.
 */
class FreedClustersPunchedTest {
    @TempDir
    Path dir;

    @Test
    void freedClustersLeaveTheFileAsQemuLeavesThem() throws Exception {
        BlockCore core = Fixtures.core();
        // the guest's upper half written first, so its clusters lie low in the file and a shrink
        // frees them in the middle of the file, not at its end
        List<List<String>> setups = List.of(
                List.of("write -P 1 32M 32M", "write -P 2 0 32M"),
                List.of("write -P 1 40M 8M", "write -P 2 0 40M", "write -P 3 60M 4M"),
                List.of("SNAP", "write -P 1 32M 32M", "write -P 2 0 32M"));
        int n = 0;
        for (List<String> setup : setups) {
            n++;
            Path theirs = dir.resolve("q" + n + ".qcow2");
            Path ours = dir.resolve("b" + n + ".qcow2");
            for (Path p : List.of(theirs, ours)) {
                Qemu.img("create", "-q", "-f", "qcow2", p.toString(), "64M").ok();
                for (String cmd : setup) {
                    if (cmd.equals("SNAP")) {
                        Qemu.io("-f", "qcow2", "-c", "write -P 9 32M 32M", p.toString()).ok();
                        Qemu.img("snapshot", "-c", "s1", p.toString()).ok();
                    } else {
                        Qemu.io("-f", "qcow2", "-c", cmd, p.toString()).ok();
                    }
                }
            }
            // (ext4 may give two identically written files a different extent-tree block count)
            assertEquals(Fixtures.fileMap(theirs), Fixtures.fileMap(ours), "twins differ before the shrink");
            Qemu.img("resize", "-q", "--shrink", theirs.toString(), "32M").ok();
            try (Image i = Fixtures.openRw(core, ours)) {
                i.truncate(32 << 20, false, Preallocation.OFF);
            }
            assertEquals(0, Qemu.img("check", ours.toString()).exit(), "case " + n);
            assertEquals(0, Qemu.img("compare", theirs.toString(), ours.toString()).exit(), "case " + n);
            assertEquals(java.nio.file.Files.size(theirs), java.nio.file.Files.size(ours), "length, case " + n);
            // the same data and holes; st_blocks may differ by ext4's own extent-tree blocks
            // (holes punched in other batches split the extent tree differently)
            assertEquals(Fixtures.fileMap(theirs), Fixtures.fileMap(ours), "file map, case " + n);
            long diff = Math.abs(Long.parseLong(Fixtures.blocks(theirs)) - Long.parseLong(Fixtures.blocks(ours)));
            org.junit.jupiter.api.Assertions.assertTrue(diff <= 16, "allocated blocks, case " + n + ": qemu "
                    + Fixtures.blocks(theirs) + ", ours " + Fixtures.blocks(ours));
        }
    }


    /**
     * Deleting a snapshot frees the clusters only it used, applying one frees what only the
     * active state used: qemu punches them (pass-discard-snapshot). Our snapshot operations place
     * their new metadata past the end of the file (README), so lengths differ and up to a few
     * clusters of metadata may be allocated on our side; before this, all 32 MiB freed stayed.
     */
    @Test
    void snapshotOperationsPunchWhatTheyFreeAsQemuDoes() throws Exception {
        BlockCore core = Fixtures.core();
        for (String op : List.of("delete", "apply")) {
            Path theirs = dir.resolve("q-" + op + ".qcow2");
            Path ours = dir.resolve("b-" + op + ".qcow2");
            for (Path p : List.of(theirs, ours)) {
                Qemu.img("create", "-q", "-f", "qcow2", p.toString(), "64M").ok();
                Qemu.io("-f", "qcow2", "-c", "write -P 1 0 32M", p.toString()).ok();
                Qemu.img("snapshot", "-c", "s1", p.toString()).ok();
                Qemu.io("-f", "qcow2", "-c", "write -P 2 0 32M", p.toString()).ok();
            }
            Qemu.img("snapshot", op.equals("delete") ? "-d" : "-a", "s1", theirs.toString()).ok();
            try (Image i = Fixtures.openRw(core, ours)) {
                org.blockhaus.api.spi.SnapshotNode sn = (org.blockhaus.api.spi.SnapshotNode) i.driverNode();
                if (op.equals("delete")) {
                    sn.deleteSnapshot("s1");
                } else {
                    sn.applySnapshot("s1");
                }
            }
            assertEquals(0, Qemu.img("check", ours.toString()).exit(), op);
            assertEquals(0, Qemu.img("compare", theirs.toString(), ours.toString()).exit(), op);
            long q = Long.parseLong(Fixtures.blocks(theirs));
            long b = Long.parseLong(Fixtures.blocks(ours));
            org.junit.jupiter.api.Assertions.assertTrue(b >= q - 16 && b <= q + 4 * 128, op + ": qemu " + q
                    + " blocks, ours " + b);
        }
    }

    /**
     * A guest discard frees clusters; with discard=unmap (qemu-io opens so) qemu also punches them
     * out of the file (pass-discard-request follows discard=unmap), with pass-discard-request=off
     * it keeps them allocated. The twins must agree in both cases.
     */
    @Test
    void guestDiscardsPunchAsPassDiscardRequestSays() throws Exception {
        BlockCore core = Fixtures.core();
        for (String mode : List.of("unmap", "request-off")) {
            Path theirs = dir.resolve("q-" + mode + ".qcow2");
            Path ours = dir.resolve("b-" + mode + ".qcow2");
            for (Path p : List.of(theirs, ours)) {
                Qemu.img("create", "-q", "-f", "qcow2", p.toString(), "64M").ok();
                Qemu.io("-f", "qcow2", "-c", "write -P 1 0 32M", p.toString()).ok();
            }
            org.blockhaus.api.Options opts = org.blockhaus.api.Options.of("driver", "qcow2", "discard", "unmap");
            if (mode.equals("unmap")) {
                Qemu.io("-f", "qcow2", "-c", "discard 4M 16M", theirs.toString()).ok();
            } else {
                Qemu.io("--image-opts", "-c", "discard 4M 16M", "driver=qcow2,pass-discard-request=off,file.filename="
                        + theirs).ok();
                opts = opts.with("pass-discard-request", "off");
            }
            try (Image i = core.open(ours.toString(), opts, org.blockhaus.api.BlockService.OpenMode.READ_WRITE)) {
                i.discard(4 << 20, 16 << 20);
            }
            assertEquals(0, Qemu.img("check", ours.toString()).exit(), mode);
            assertEquals(0, Qemu.img("compare", theirs.toString(), ours.toString()).exit(), mode);
            assertEquals(Fixtures.fileMap(theirs), Fixtures.fileMap(ours), "file map, " + mode);
            long q = Long.parseLong(Fixtures.blocks(theirs));
            long b = Long.parseLong(Fixtures.blocks(ours));
            org.junit.jupiter.api.Assertions.assertTrue(Math.abs(q - b) <= 16, mode + ": qemu " + q + " blocks, ours " + b);
        }
    }

}
