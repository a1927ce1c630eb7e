package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.Image;
import org.blockhaus.api.spi.BitmapNode;
import org.blockhaus.core.BlockCore;
import org.blockhaus.testkit.Peers;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * Persistent dirty bitmaps against qemu 7.2 in both directions. What qemu says a bitmap holds is
 * read over NBD: qemu-nbd exports it ({@code -B}) and nbdinfo maps {@code qemu:dirty-bitmap:NAME}.
 */
class BitmapsTest {
    @TempDir
    Path dir;
    private final BlockCore core = Fixtures.core();

    /** Dirty ranges as qemu reports them (adjacent ones merged). */
    static List<long[]> qemuDirty(Path img, String bitmap) throws Exception {
        Peers.Result r = Peers.run(Peers.require("nbdinfo", "libnbd-bin"), "--json",
                "--map=qemu:dirty-bitmap:" + bitmap, "--", "[", Peers.require("qemu-nbd", "qemu-utils"), "-r", "-f",
                "qcow2", "-B", bitmap, img.toString(), "]");
        assertEquals(0, r.exit(), "nbdinfo/qemu-nbd: " + r.out());
        List<long[]> out = new ArrayList<>();
        Matcher m = Pattern.compile("\"offset\": (\\d+), \"length\": (\\d+), \"type\": (\\d+)").matcher(r.out());
        while (m.find()) {
            if ((Long.parseLong(m.group(3)) & 1) != 0) {
                add(out, Long.parseLong(m.group(1)), Long.parseLong(m.group(2)));
            }
        }
        return out;
    }

    private static void add(List<long[]> out, long off, long len) {
        if (!out.isEmpty() && out.getLast()[0] + out.getLast()[1] == off) {
            out.getLast()[1] += len;
        } else {
            out.add(new long[] {off, len});
        }
    }

    /** Dirty ranges as our driver reads them. */
    static List<long[]> ourDirty(BitmapNode n, String bitmap) throws BlockException {
        List<long[]> out = new ArrayList<>();
        long at = 0;
        BitmapNode.DirtyRange r;
        while ((r = n.nextDirty(bitmap, at)) != null) {
            add(out, r.offset(), r.length());
            at = r.offset() + r.length();
        }
        return out;
    }

    /** The ranges a set of writes dirties at {@code granularity}, clamped to {@code size}. */
    static List<long[]> expected(List<long[]> writes, long granularity, long size) {
        java.util.TreeMap<Long, Long> m = new java.util.TreeMap<>();
        for (long[] w : writes) {
            long s = w[0] / granularity * granularity;
            long e = Math.min(size, (w[0] + w[1] + granularity - 1) / granularity * granularity);
            m.merge(s, e, Math::max);
        }
        List<long[]> out = new ArrayList<>();
        for (var en : m.entrySet()) {
            long s = en.getKey();
            long e = en.getValue();
            if (!out.isEmpty() && out.getLast()[0] + out.getLast()[1] >= s) {
                long[] last = out.getLast();
                last[1] = Math.max(last[0] + last[1], e) - last[0];
            } else {
                out.add(new long[] {s, e - s});
            }
        }
        return out;
    }

    static String show(List<long[]> l) {
        StringBuilder sb = new StringBuilder();
        for (long[] r : l) {
            sb.append('[').append(r[0]).append('+').append(r[1]).append(']');
        }
        return sb.toString();
    }

    private static BitmapNode bitmaps(Image img) {
        return (BitmapNode) img.driverNode();
    }

    private void assertQemuCheckClean(Path img) {
        Qemu.Result check = Qemu.img("check", "--output=json", img.toString());
        assertEquals(0, check.exit(), "qemu-img check: " + check.out() + check.err());
        assertFalse(check.out().contains("\"leaks\""), "no leaks: " + check.out());
    }

    private static List<long[]> randomWrites(Random r, long size, int n, int maxLen) {
        List<long[]> w = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            long len = 1 + r.nextInt(maxLen);
            long off = (long) (r.nextDouble() * (size - len));
            w.add(new long[] {off, len});
        }
        return w;
    }

    @ParameterizedTest
    @CsvSource({"65536, 65536, off", "512, 4096, off", "1048576, 65536, off", "4096, 512, off",
        "65536, 65536, on", "131072, 2097152, off"})
    void readsBitmapsQemuMaintained(int granularity, int clusterSize, String extL2) throws Exception {
        Path img = dir.resolve("q.qcow2");
        long size = 48L << 20;
        Qemu.img("create", "-q", "-f", "qcow2", "-o", "cluster_size=" + clusterSize + ",extended_l2=" + extL2,
                img.toString(), Long.toString(size)).ok();
        Qemu.img("bitmap", "--add", "-g", Integer.toString(granularity), img.toString(), "on").ok();
        Qemu.img("bitmap", "--add", "--disable", img.toString(), "off").ok();
        List<String> io = new ArrayList<>(List.of("-f", "qcow2"));
        for (long[] w : randomWrites(new Random(granularity ^ clusterSize), size, 40, 300_000)) {
            io.add("-c");
            io.add("write " + w[0] + " " + w[1]);
        }
        io.add(img.toString());
        Qemu.io(io.toArray(String[]::new)).ok();
        List<long[]> qemu = qemuDirty(img, "on");
        assertFalse(qemu.isEmpty());
        try (Image i = Fixtures.openRo(core, img)) {
            BitmapNode n = bitmaps(i);
            assertEquals(List.of(new BitmapNode.Bitmap("on", granularity, true, false),
                    new BitmapNode.Bitmap("off", Math.min(65536, Math.max(4096, clusterSize)), false, false)),
                    n.bitmaps()); // qemu's default granularity: the cluster size within 4 KiB .. 64 KiB
            assertEquals(show(qemu), show(ourDirty(n, "on")));
            assertEquals("", show(ourDirty(n, "off")));
        }
    }

    @ParameterizedTest
    @CsvSource({"65536, 65536, off", "512, 512, off", "1048576, 65536, off", "512, 65536, on", "8192, 2097152, off",
        "2147483648, 65536, off"})
    void writesBitmapsQemuReads(long granularity, int clusterSize, String extL2) throws Exception {
        Path img = dir.resolve("o.qcow2");
        long size = (40L << 20) + 4096;
        List<long[]> writes = randomWrites(new Random(granularity + clusterSize), size, 30, 200_000);
        {
            Fixtures.create(core, img, size, "cluster_size", Integer.toString(clusterSize), "extended_l2", extL2);
            try (Image i = Fixtures.openRw(core, img)) {
                bitmaps(i).addBitmap("tracked", granularity, false);
                bitmaps(i).addBitmap("disabled", 65536, true);
            }
            assertQemuCheckClean(img);
            assertEquals("", show(qemuDirty(img, "tracked")));
            try (Image i = Fixtures.openRw(core, img)) {
                int k = 0;
                for (long[] w : writes) {
                    switch (k++ % 3) {
                        case 0 -> i.write(w[0], ByteBuffer.wrap(Fixtures.pattern((int) w[1], k)), 0);
                        case 1 -> i.writeZeroes(w[0], w[1], 0);
                        default -> i.discard(w[0], w[1]);
                    }
                }
                // while open, qemu sees the bitmaps in use (not saved yet)
                assertTrue(Qemu.img("info", "-U", img.toString()).ok().out().contains("in-use"));
            }
        }
        assertQemuCheckClean(img);
        String info = Qemu.img("info", img.toString()).ok().out();
        assertFalse(info.contains("in-use"), info);
        assertEquals(show(expected(writes, granularity, size)), show(qemuDirty(img, "tracked")));
        assertEquals("", show(qemuDirty(img, "disabled")));
        // and qemu keeps maintaining them afterwards
        Qemu.io("-f", "qcow2", "-c", "write 0 1", img.toString()).ok();
        List<long[]> more = new ArrayList<>(writes);
        more.add(new long[] {0, 1});
        assertEquals(show(expected(more, granularity, size)), show(qemuDirty(img, "tracked")));
    }

    @Test
    void oursAndQemusWritesAccumulate() throws Exception {
        Path img = dir.resolve("a.qcow2");
        long size = 16L << 20;
        Qemu.img("create", "-q", "-f", "qcow2", img.toString(), Long.toString(size)).ok();
        Qemu.img("bitmap", "--add", "-g", "4096", img.toString(), "b").ok();
        Qemu.io("-f", "qcow2", "-c", "write 1M 8k", img.toString()).ok();
        try (Image i = Fixtures.openRw(core, img)) {
            i.write(5L << 20, ByteBuffer.allocate(100), 0);
        }
        assertQemuCheckClean(img);
        assertEquals("[1048576+8192][5242880+4096]", show(qemuDirty(img, "b")));
        Qemu.io("-f", "qcow2", "-c", "write 8M 4k", img.toString()).ok();
        try (Image i = Fixtures.openRo(core, img)) {
            assertEquals("[1048576+8192][5242880+4096][8388608+4096]", show(ourDirty(bitmaps(i), "b")));
        }
    }

    @Test
    void unsavedBitmapIsInconsistentForBoth() throws Exception {
        Path img = dir.resolve("c.qcow2");
        Qemu.img("create", "-q", "-f", "qcow2", img.toString(), "8M").ok();
        Qemu.img("bitmap", "--add", img.toString(), "b").ok();
        byte[] before = Files.readAllBytes(img);
        Image crashed = Fixtures.openRw(core, img);
        crashed.write(0, ByteBuffer.allocate(512), 0);
        crashed.flush(); // data durable, bitmap never stored: as if the process died now
        Path copy = dir.resolve("crashed.qcow2");
        Files.copy(img, copy);
        assertFalse(java.util.Arrays.equals(before, Files.readAllBytes(copy)));
        assertTrue(Qemu.img("info", copy.toString()).ok().out().contains("[0]: in-use"));
        Qemu.Result nbd = Qemu.img("convert", "--bitmaps", "-O", "qcow2", copy.toString(),
                dir.resolve("x.qcow2").toString());
        assertEquals(1, nbd.exit(), nbd.err());
        try (Image i = Fixtures.openRw(core, copy)) {
            BitmapNode n = bitmaps(i);
            assertTrue(n.bitmaps().getFirst().inconsistent());
            BlockException e = assertThrows(BlockException.class, () -> n.nextDirty("b", 0));
            assertEquals("Bitmap 'b' is inconsistent and cannot be used\nTry block-dirty-bitmap-remove to delete this"
                    + " bitmap from disk", e.getMessage());
            assertThrows(BlockException.class, () -> n.clearBitmap("b"));
            i.write(4096, ByteBuffer.allocate(512), 0);
        }
        assertQemuCheckClean(copy);
        assertTrue(Qemu.img("info", copy.toString()).ok().out().contains("[0]: in-use"), "stays inconsistent");
        try (Image i = Fixtures.openRw(core, copy)) {
            bitmaps(i).removeBitmap("b");
        }
        assertQemuCheckClean(copy);
        assertFalse(Qemu.img("info", copy.toString()).ok().out().contains("bitmaps"));
        crashed.close();
    }

    @Test
    void removeClearEnableDisableAsQemuSeesThem() throws Exception {
        Path img = dir.resolve("m.qcow2");
        Qemu.img("create", "-q", "-f", "qcow2", img.toString(), "32M").ok();
        for (String b : List.of("a", "b", "c")) {
            Qemu.img("bitmap", "--add", "-g", "64k", img.toString(), b).ok();
        }
        Qemu.io("-f", "qcow2", "-c", "write 0 64k", img.toString()).ok();
        try (Image i = Fixtures.openRw(core, img)) {
            BitmapNode n = bitmaps(i);
            n.removeBitmap("b");
            n.clearBitmap("c");
            n.enableBitmap("a", false);
            i.write(1L << 20, ByteBuffer.allocate(4096), 0);
            n.addBitmap("d", 512, false);
            i.write(2L << 20, ByteBuffer.allocate(1024), 0);
            n.setBitmapDirty("a", 10L << 20, 1);
        }
        assertQemuCheckClean(img);
        String info = Qemu.img("info", "--output=json", img.toString()).ok().out();
        assertTrue(info.contains("\"name\": \"a\""));
        assertFalse(info.contains("\"name\": \"b\""));
        assertEquals("[0+65536][10485760+65536]", show(qemuDirty(img, "a")));
        assertEquals("[1048576+65536][2097152+65536]", show(qemuDirty(img, "c")));
        assertEquals("[2097152+1024]", show(qemuDirty(img, "d")));
        try (Image i = Fixtures.openRw(core, img)) {
            for (String b : List.of("a", "c", "d")) {
                bitmaps(i).removeBitmap(b);
            }
        }
        assertQemuCheckClean(img);
        Qemu.Result r = Qemu.img("info", "--output=json", img.toString()).ok();
        assertFalse(r.out().contains("bitmaps"), r.out());
    }

    @Test
    void removingAfterClearOrShrinkLeavesACleanImage() throws Exception {
        Path img = dir.resolve("f.qcow2");
        Qemu.img("create", "-q", "-f", "qcow2", "-o", "cluster_size=512", img.toString(), "8M").ok();
        for (String b : List.of("c", "s", "keep")) {
            Qemu.img("bitmap", "--add", "-g", "512", img.toString(), b).ok();
        }
        Qemu.io("-f", "qcow2", "-c", "write 0 8M", img.toString()).ok();
        try (Image i = Fixtures.openRw(core, img)) {
            BitmapNode n = bitmaps(i);
            n.clearBitmap("c");
            i.write(4096, ByteBuffer.allocate(512), 0);
            n.removeBitmap("c");
            i.truncate(1L << 20, false, org.blockhaus.api.Preallocation.OFF);
            n.removeBitmap("s");
        }
        assertQemuCheckClean(img);
        assertEquals("[0+1048576]", show(qemuDirty(img, "keep")));
    }

    @Test
    void resizeKeepsBitmapsAndSnapshotApplyIsRefused() throws Exception {
        Path img = dir.resolve("r.qcow2");
        Qemu.img("create", "-q", "-f", "qcow2", img.toString(), "10M").ok();
        Qemu.img("bitmap", "--add", "-g", "512", img.toString(), "b").ok();
        Qemu.io("-f", "qcow2", "-c", "write 9M 1M", img.toString()).ok();
        try (Image i = Fixtures.openRw(core, img)) {
            SnapshotsAccess.create(i, "s1");
            BlockException e = assertThrows(BlockException.class, () -> SnapshotsAccess.apply(i, "s1"));
            assertEquals("Device has active dirty bitmaps", e.getMessage());
        }
        try (Image i = Fixtures.openRw(core, img)) {
            SnapshotsAccess.delete(i, "s1");
            i.truncate(20L << 20, false, org.blockhaus.api.Preallocation.OFF);
            i.write(15L << 20, ByteBuffer.allocate(512), 0);
        }
        assertQemuCheckClean(img);
        assertEquals("[9437184+1048576][15728640+512]", show(qemuDirty(img, "b")));
        try (Image i = Fixtures.openRw(core, img)) {
            i.truncate((9L << 20) + 1024, false, org.blockhaus.api.Preallocation.OFF);
        }
        assertQemuCheckClean(img);
        assertEquals("[9437184+1024]", show(qemuDirty(img, "b")));
    }

    @ParameterizedTest
    @CsvSource({"65536, off", "16384, on", "4096, off"})
    void manyBitmapsOnAnImageWithSnapshotsAndBacking(int clusterSize, String extL2) throws Exception {
        Path base = dir.resolve("base.qcow2");
        Path img = dir.resolve("top.qcow2");
        long size = 24L << 20;
        Qemu.img("create", "-q", "-f", "qcow2", base.toString(), Long.toString(size)).ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 7 0 24M", base.toString()).ok();
        Qemu.img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "-o",
                "cluster_size=" + clusterSize + ",extended_l2=" + extL2, img.toString()).ok();
        long[] grans = {512, 1024, 4096, 65536, 1 << 20, 1 << 24};
        for (int k = 0; k < grans.length; k++) {
            Qemu.img("bitmap", "--add", "-g", Long.toString(grans[k]), img.toString(), "on" + k).ok();
            Qemu.img("bitmap", "--add", "--disable", "-g", Long.toString(grans[k]), img.toString(), "off" + k).ok();
        }
        Qemu.io("-f", "qcow2", "-c", "write 3M 3k", img.toString()).ok();
        Qemu.img("snapshot", "-c", "s1", img.toString()).ok();
        List<long[]> writes = new ArrayList<>(List.of(new long[] {3L << 20, 3072}));
        List<long[]> ours = randomWrites(new Random(clusterSize), size, 25, 100_000);
        try (Image i = Fixtures.openRw(core, img)) {
            int k = 0;
            for (long[] w : ours) {
                switch (k++ % 4) {
                    case 0 -> i.write(w[0], ByteBuffer.wrap(Fixtures.pattern((int) w[1], k)), 0);
                    case 1 -> i.writeZeroes(w[0], w[1], org.blockhaus.api.BlockNode.MAY_UNMAP);
                    case 2 -> i.discard(w[0], w[1]);
                    default -> i.write(w[0], ByteBuffer.allocate((int) w[1]), org.blockhaus.api.BlockNode.FUA);
                }
            }
            SnapshotsAccess.create(i, "s2");
        }
        writes.addAll(ours);
        assertQemuCheckClean(img);
        assertFalse(Qemu.img("info", img.toString()).ok().out().contains("in-use"));
        for (int k = 0; k < grans.length; k++) {
            assertEquals(show(expected(writes, grans[k], size)), show(qemuDirty(img, "on" + k)), "on" + k);
            assertEquals("", show(qemuDirty(img, "off" + k)), "off" + k);
        }
        try (Image i = Fixtures.openRo(core, img)) {
            for (int k = 0; k < grans.length; k++) {
                assertEquals(show(qemuDirty(img, "on" + k)), show(ourDirty(bitmaps(i), "on" + k)));
            }
        }
    }

    @ParameterizedTest
    @CsvSource({"off", "on"})
    void bitmapsWithAnExternalDataFile(String raw) throws Exception {
        Path img = dir.resolve("x.qcow2");
        Qemu.img("create", "-q", "-f", "qcow2", "-o", "data_file=" + dir.resolve("x.data") + ",data_file_raw=" + raw, img.toString(), "8M")
                .ok();
        Qemu.img("bitmap", "--add", "-g", "8k", img.toString(), "b").ok();
        Qemu.io("-f", "qcow2", "-c", "write 1M 4k", img.toString()).ok();
        try (Image i = Fixtures.openRw(core, img)) {
            assertEquals("[1048576+8192]", show(ourDirty(bitmaps(i), "b")));
            i.write(5L << 20, ByteBuffer.allocate(3), 0);
            i.writeZeroes(6L << 20, 20000, 0);
            i.discard(7L << 20, 65536);
        }
        assertQemuCheckClean(img);
        assertEquals("[1048576+8192][5242880+8192][6291456+24576][7340032+65536]", show(qemuDirty(img, "b")));
    }

    /** Snapshot operations through the driver node. */
    static final class SnapshotsAccess {
        static void create(Image i, String name) throws BlockException {
            ((org.blockhaus.api.spi.SnapshotNode) i.driverNode()).createSnapshot(name);
        }

        static void apply(Image i, String name) throws BlockException {
            ((org.blockhaus.api.spi.SnapshotNode) i.driverNode()).applySnapshot(name);
        }

        static void delete(Image i, String name) throws BlockException {
            ((org.blockhaus.api.spi.SnapshotNode) i.driverNode()).deleteSnapshot(name);
        }
    }
}
