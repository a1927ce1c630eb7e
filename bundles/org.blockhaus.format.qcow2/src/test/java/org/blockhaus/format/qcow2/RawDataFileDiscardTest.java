package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.blockhaus.api.Image;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Discard on an image with a raw external data file (data_file_raw=on), against qemu-io 7.2 on a
 * twin: whole clusters become zero clusters without a host offset (extended L2: all subclusters
 * zero) and their range in the data file is punched out, so the image and the data file both read
 * zeroes there; partial clusters are left alone. Compared: the image's map (host offsets too:
 * a raw data file maps 1:1), the data file's map and bytes, the guest's bytes, check, and a
 * write into a discarded cluster afterwards (allocated at its 1:1 place again). After that write
 * the data file's map is not compared: qemu fills the rest of the cluster with a zero write (a
 * hole), ours writes the zeroes (layout only; the bytes are compared). 1 KiB is the smallest
 * cluster whose header cluster holds the temporary directory's data file name.
 */
class RawDataFileDiscardTest {
    @TempDir
    Path dir;

    private static final long SIZE = (4 << 20) - 3 * 512; // the last cluster is a partial one

    @ParameterizedTest
    @ValueSource(strings = {"cluster_size=65536", "cluster_size=1024", "cluster_size=65536,extended_l2=on",
        "cluster_size=4096,lazy_refcounts=on"})
    void discardsPunchTheDataFileAsQemuDoes(String options) throws Exception {
        Path ours = dir.resolve("ours.qcow2");
        Path twin = dir.resolve("twin.qcow2");
        Path ourData = dir.resolve("ours.data");
        Path twinData = dir.resolve("twin.data");
        List<String> kvs = new ArrayList<>(List.of("data_file", ourData.toString(), "data_file_raw", "on"));
        for (String kv : options.split(",")) {
            kvs.addAll(List.of(kv.split("=")));
        }
        BlockCore core = Fixtures.core();
        Fixtures.create(core, ours, SIZE, kvs.toArray(String[]::new));
        Qemu.img("create", "-q", "-f", "qcow2", "-o", options + ",data_file=" + twinData + ",data_file_raw=on",
                twin.toString(), Long.toString(SIZE)).ok();
        long cluster = Long.parseLong(options.replaceAll(".*cluster_size=(\\d+).*", "$1"));
        // offset, length pairs: whole clusters, partial ones, unaligned spans, the partial last cluster
        long[][] discards = {
            {cluster, 2 * cluster}, {5 * cluster + 100, cluster}, {8 * cluster + 512, 3 * cluster - 1024},
            {20 * cluster - 7, 4 * cluster + 13}, {SIZE - 2 * cluster - 1536, 2 * cluster + 1536},
            {40 * cluster, cluster / 2}, {0, 0},
        };
        List<String> io = new ArrayList<>();
        try (Image img = Fixtures.openRw(core, ours)) {
            byte[] p = new byte[(int) SIZE];
            Arrays.fill(p, (byte) 7);
            img.write(0, ByteBuffer.wrap(p), 0);
            io.addAll(List.of("-c", "write -P 7 0 " + SIZE));
            for (long[] d : discards) {
                img.discard(d[0], d[1]);
                io.addAll(List.of("-c", "discard " + d[0] + " " + d[1]));
            }
            img.flush();
        }
        io.add(twin.toString());
        Qemu.io(io.toArray(String[]::new)).ok();
        compare(ours, twin, ourData, twinData);
        assertEquals(map(twinData, "raw"), map(ourData, "raw"), "map of the data file");

        // a write into a discarded cluster maps it 1:1 again, the rest of the cluster reads zero
        try (Image img = Fixtures.openRw(core, ours)) {
            img.write(cluster + 512, ByteBuffer.wrap(new byte[] {9, 9, 9}), 0);
        }
        Qemu.io("-c", "write -P 9 " + (cluster + 512) + " 3", twin.toString()).ok();
        compare(ours, twin, ourData, twinData);
    }

    private static void compare(Path ours, Path twin, Path ourData, Path twinData) throws Exception {
        Qemu.Result check = Qemu.img("check", ours.toString());
        assertEquals(0, check.exit(), check.out() + check.err());
        assertEquals(map(twin, "qcow2"), map(ours, "qcow2"), "map of the image");
        Qemu.img("compare", "-f", "qcow2", "-F", "qcow2", ours.toString(), twin.toString()).ok();
        Qemu.img("compare", "-f", "raw", "-F", "raw", ourData.toString(), twinData.toString()).ok();
        // the raw data file is the guest's view
        Qemu.img("compare", "-f", "qcow2", "-F", "raw", ours.toString(), ourData.toString()).ok();
    }

    private static String map(Path p, String format) {
        return Qemu.img("map", "--output=json", "-f", format, p.toString()).ok().out();
    }
}
