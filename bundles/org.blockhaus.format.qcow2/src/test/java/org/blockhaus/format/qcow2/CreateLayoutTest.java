package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A new image occupies the file as qemu-img create's does: same length, same allocated blocks
 * (so `info`'s disk size agrees) and the same data/hole layout (`qemu-img map -f file`), for the
 * image file and an external data file, over cluster sizes, versions, refcount widths, extended
 * L2, large sizes and preallocation modes.
 */
class CreateLayoutTest {
    @TempDir
    Path dir;

    @Test
    void filesOccupyTheDiskAsQemuImgCreatesThem() throws Exception {
        BlockCore core = Fixtures.core();
        List<String[]> cases = List.of(
                new String[] {"1G"},
                new String[] {"1M"},
                new String[] {"0"},
                new String[] {"256G"},
                new String[] {"1G", "cluster_size=512"},
                new String[] {"1G", "cluster_size=2M"},
                new String[] {"1G", "compat=0.10"},
                new String[] {"1G", "refcount_bits=1"},
                new String[] {"1G", "refcount_bits=64"},
                new String[] {"1G", "extended_l2=on"},
                new String[] {"1G", "lazy_refcounts=on"},
                new String[] {"64M", "preallocation=metadata"},
                new String[] {"64M", "preallocation=falloc"},
                new String[] {"1G", "data_file=DATA"},
                new String[] {"1G", "data_file=DATA", "data_file_raw=on"},
                new String[] {"8M", "data_file=DATA", "preallocation=full"});
        List<String> diffs = new ArrayList<>();
        int n = 0;
        for (String[] c : cases) {
            n++;
            Path theirs = dir.resolve("q" + n + ".qcow2");
            Path ours = dir.resolve("b" + n + ".qcow2");
            List<String> qemuArgs = new ArrayList<>(List.of("create", "-q", "-f", "qcow2"));
            List<String> opts = new ArrayList<>();
            for (int i = 1; i < c.length; i++) {
                opts.add(c[i]);
            }
            if (!opts.isEmpty()) {
                qemuArgs.add("-o");
                qemuArgs.add(String.join(",", opts).replace("DATA", dir.resolve("q" + n + ".data").toString()));
            }
            qemuArgs.add(theirs.toString());
            qemuArgs.add(c[0]);
            Qemu.Result r = Qemu.img(qemuArgs.toArray(String[]::new));
            assertEquals(0, r.exit(), r.err());
            List<String> kv = new ArrayList<>();
            for (String o : opts) {
                int eq = o.indexOf('=');
                kv.add(o.substring(0, eq));
                kv.add(o.substring(eq + 1).replace("DATA", dir.resolve("b" + n + ".data").toString()));
            }
            Fixtures.create(core, ours, org.blockhaus.api.Sizes.parse(c[0]), kv.toArray(String[]::new));
            compare(String.join(" ", c), theirs, ours, diffs);
            if (opts.stream().anyMatch(o -> o.startsWith("data_file="))) {
                compare(String.join(" ", c) + " (data file)", dir.resolve("q" + n + ".data"),
                        dir.resolve("b" + n + ".data"), diffs);
            }
        }
        assertEquals(List.of(), diffs);
    }

    private static void compare(String what, Path theirs, Path ours, List<String> diffs) throws Exception {
        String a = Files.size(theirs) + " bytes, " + Fixtures.fileMap(theirs);
        String b = Files.size(ours) + " bytes, " + Fixtures.fileMap(ours);
        long qb = Long.parseLong(Fixtures.blocks(theirs));
        long ob = Long.parseLong(Fixtures.blocks(ours));
        // st_blocks may differ by ext4's own extent-tree blocks, never by a cluster
        if (!a.equals(b) || Math.abs(qb - ob) > 16) {
            diffs.add(what + ":\n  qemu: " + qb + " blocks, " + a + "\n  ours: " + ob + " blocks, " + b);
        }
    }


}
