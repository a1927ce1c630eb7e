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
 * A shrink gives the clusters it frees back to the file system as qemu-img resize --shrink does
 * (qemu discards them), so the file's allocated blocks - `info`'s disk size - agree; clusters a
 * snapshot still uses stay. Each twin is built by qemu-io with the same writes, one shrunk by
 * qemu-img, one by us; both must then pass qemu-img check and read the same.
 */
class ShrinkDiscardTest {
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
            assertEquals(blocks(theirs), blocks(ours), "twins differ before the shrink");
            Qemu.img("resize", "-q", "--shrink", theirs.toString(), "32M").ok();
            try (Image i = Fixtures.openRw(core, ours)) {
                i.truncate(32 << 20, false, Preallocation.OFF);
            }
            assertEquals(0, Qemu.img("check", ours.toString()).exit(), "case " + n);
            assertEquals(0, Qemu.img("compare", theirs.toString(), ours.toString()).exit(), "case " + n);
            assertEquals(java.nio.file.Files.size(theirs), java.nio.file.Files.size(ours), "length, case " + n);
            // the same data and holes; st_blocks may differ by ext4's own extent-tree blocks
            // (holes punched in other batches split the extent tree differently)
            assertEquals(fileMap(theirs), fileMap(ours), "file map, case " + n);
            long diff = Math.abs(Long.parseLong(blocks(theirs)) - Long.parseLong(blocks(ours)));
            org.junit.jupiter.api.Assertions.assertTrue(diff <= 16, "allocated blocks, case " + n + ": qemu "
                    + blocks(theirs) + ", ours " + blocks(ours));
        }
    }

    private static String fileMap(Path f) {
        return Qemu.img("map", "-f", "file", "--output=json", f.toString()).ok().out();
    }

    /** st_blocks (512-byte units), as stat(1) reports them. */
    private static String blocks(Path f) throws Exception {
        Process p = new ProcessBuilder("stat", "-c", "%b", f.toString()).start();
        String out = new String(p.getInputStream().readAllBytes()).trim();
        assertEquals(0, p.waitFor());
        return out;
    }
}
