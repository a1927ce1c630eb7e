package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.Image;
import org.blockhaus.api.Preallocation;
import org.blockhaus.api.spi.SnapshotNode;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Resizing a version 3 image with internal snapshots, as qemu 7.2 allows: only the active state
 * changes size; each snapshot keeps its own L1 table, disk size and data. Checked both ways
 * against qemu-img (resize, snapshot -l, info, check, compare, convert -l, snapshot -a).
 *
 * <p>The image: 4 MiB in 4 KiB clusters (one L2 table maps 2 MiB, so both whole and partial L2
 * tables are dropped when shrinking); s1 holds 0x01 everywhere, s2 0x02 in [1M, 3M), and the
 * active state 0x03 from 3M + 4k to the end.
 */
class ResizeWithSnapshotsTest {
    private static final int MIB = 1 << 20;
    private static final int OLD_SIZE = 4 * MIB;

    @TempDir
    Path dir;

    private static byte[] s1() {
        byte[] b = new byte[OLD_SIZE];
        Arrays.fill(b, (byte) 1);
        return b;
    }

    private static byte[] s2() {
        byte[] b = s1();
        Arrays.fill(b, MIB, 3 * MIB, (byte) 2);
        return b;
    }

    private static byte[] active() {
        byte[] b = s2();
        Arrays.fill(b, 3 * MIB + 4096, OLD_SIZE, (byte) 3);
        return b;
    }

    private Path threeStates(String name) {
        Path img = dir.resolve(name);
        Qemu.img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", img.toString(), "4M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 1 0 4M", img.toString()).ok();
        Qemu.img("snapshot", "-c", "s1", img.toString()).ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 2 1M 2M", img.toString()).ok();
        Qemu.img("snapshot", "-c", "s2", img.toString()).ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 3 3149824 1044480", img.toString()).ok();
        return img;
    }

    private Path copy(Path img, String name) throws Exception {
        Path c = dir.resolve(name);
        Files.copy(img, c);
        return c;
    }

    /**
     * What qemu reads in a snapshot without changing the image (qemu-img convert -l). qemu reads
     * the snapshot's tables at the active size (it does not apply the snapshot's own disk size):
     * what lies inside both sizes must be the snapshot's data, the rest zeroes.
     */
    private void assertSnapshotReadInPlace(Path img, String snapshot, byte[] expected) throws Exception {
        Path raw = dir.resolve(img.getFileName() + "." + snapshot + ".raw");
        Files.deleteIfExists(raw);
        Qemu.img("convert", "-U", "-l", "snapshot.name=" + snapshot, "-f", "qcow2", "-O", "raw", img.toString(),
                raw.toString()).ok();
        try (var ch = java.nio.channels.FileChannel.open(raw)) {
            assertEquals(Long.parseLong(virtualSize(img)), ch.size());
            ByteBuffer b = ByteBuffer.allocate(MIB);
            ByteBuffer zeroes = ByteBuffer.allocate(MIB);
            for (long off = 0; off < ch.size(); off += MIB) { // expected.length is a multiple of 1 MiB
                b.clear().limit((int) Math.min(MIB, ch.size() - off));
                ch.read(b, off);
                b.flip();
                ByteBuffer want = off < expected.length ? ByteBuffer.wrap(expected, (int) off, b.limit())
                        : zeroes.clear().limit(b.limit());
                int at = b.mismatch(want);
                if (at >= 0) {
                    throw new AssertionError(snapshot + " reads " + b.get(at) + " at " + (off + at) + ", not "
                            + want.get(at));
                }
            }
        }
        Files.delete(raw);
    }

    private static String virtualSize(Path img) {
        String json = Qemu.img("info", "-U", "--output=json", img.toString()).ok().out();
        var m = java.util.regex.Pattern.compile("\"virtual-size\": (\\d+)").matcher(json);
        assertTrue(m.find(), json);
        return m.group(1);
    }

    /** The snapshots of {@code img} hold their data and size for qemu: read in place and applied. */
    private void assertSnapshotsIntactForQemu(Path img) throws Exception {
        assertSnapshotReadInPlace(img, "s1", s1());
        assertSnapshotReadInPlace(img, "s2", s2());
        for (String s : new String[] {"s1", "s2"}) {
            Path applied = copy(img, img.getFileName() + "." + s + ".applied");
            Qemu.img("snapshot", "-a", s, applied.toString()).ok();
            assertEquals(Integer.toString(OLD_SIZE), virtualSize(applied));
            Qemu.io("-r", "-f", "qcow2", "-c", "read -P " + (s.equals("s1") ? 1 : 2) + " 1M 2M",
                    "-c", "read -P 1 3M 1M", applied.toString()).ok();
            assertEquals(0, Qemu.img("check", applied.toString()).exit());
        }
    }

    @ParameterizedTest(name = "to {0} bytes")
    @ValueSource(longs = {6 * MIB, (1L << 30) + 512, 3 * MIB + 8192 + 512, 2 * MIB + 512 * 1024, MIB, 512})
    void weResizeAndQemuSeesTheSameImageAsAfterItsOwnResize(long newSize) throws Exception {
        Path ours = threeStates("ours.qcow2");
        Path theirs = copy(ours, "theirs.qcow2");
        Qemu.img("resize", "--shrink", theirs.toString(), Long.toString(newSize)).ok();
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRw(core, ours)) {
            i.truncate(newSize, false, Preallocation.OFF);
            assertEquals(newSize, i.size());
        }
        Qemu.Result check = Qemu.img("check", ours.toString());
        assertEquals(0, check.exit(), check.out() + check.err());
        assertEquals(Qemu.img("snapshot", "-l", theirs.toString()).ok().out(),
                Qemu.img("snapshot", "-l", ours.toString()).ok().out());
        assertEquals(Qemu.img("info", "--output=json", theirs.toString()).ok().out()
                        .replaceAll("\"actual-size\": \\d+", "").replace(theirs.toString(), ""),
                Qemu.img("info", "--output=json", ours.toString()).ok().out()
                        .replaceAll("\"actual-size\": \\d+", "").replace(ours.toString(), ""));
        assertEquals(Long.toString(newSize), virtualSize(ours));
        assertEquals(0, Qemu.img("compare", theirs.toString(), ours.toString()).exit());
        int kept = (int) Math.min(newSize, OLD_SIZE);
        byte[] head = new byte[kept];
        System.arraycopy(active(), 0, head, 0, kept);
        Path raw = dir.resolve("ours.raw");
        Qemu.img("convert", "-f", "qcow2", "-O", "raw", ours.toString(), raw.toString()).ok();
        try (var ch = java.nio.channels.FileChannel.open(raw)) {
            assertEquals(newSize, ch.size());
            ByteBuffer b = ByteBuffer.allocate(kept);
            ch.read(b, 0);
            assertArrayEquals(head, b.array());
        }
        assertSnapshotsIntactForQemu(ours);
        // the file ends where qemu's does (shrinking drops the freed tail)
        assertEquals(Files.size(theirs), Files.size(ours));
    }

    @Test
    void writesAfterGrowingLandInTheActiveStateOnly() throws Exception {
        Path img = threeStates("w.qcow2");
        BlockCore core = Fixtures.core();
        byte[] nine = new byte[64 * 1024];
        Arrays.fill(nine, (byte) 9);
        try (Image i = Fixtures.openRw(core, img)) {
            i.truncate((1L << 30) + 512, false, Preallocation.OFF);
            i.write(0, ByteBuffer.wrap(nine), 0);                      // shared with both snapshots
            i.write((1L << 30) - 64 * 1024, ByteBuffer.wrap(nine), 0); // the grown part
            ((SnapshotNode) i.driverNode()).createSnapshot("s3");
        }
        assertEquals(0, Qemu.img("check", img.toString()).exit());
        Qemu.io("-r", "-f", "qcow2", "-c", "read -P 9 0 64k", "-c", "read -P 1 64k 960k",
                "-c", "read -P 9 1073676288 64k", "-c", "read -P 0 1G 512", img.toString()).ok();
        assertSnapshotsIntactForQemu(img);
        Path s3 = copy(img, "s3.qcow2");
        Qemu.img("snapshot", "-a", "s1", s3.toString()).ok();
        Qemu.img("snapshot", "-a", "s3", s3.toString()).ok(); // back to the grown size
        assertEquals(Long.toString((1L << 30) + 512), virtualSize(s3));
        Qemu.io("-r", "-f", "qcow2", "-c", "read -P 9 0 64k", "-c", "read -P 9 1073676288 64k", s3.toString()).ok();
        assertEquals(0, Qemu.img("check", s3.toString()).exit());
    }

    @ParameterizedTest(name = "qemu-img resize {0}")
    @ValueSource(strings = {"+60M", "--shrink 2621440", "--shrink 512"})
    void weApplyAndReadSnapshotsOfAnImageQemuResized(String args) throws Exception {
        Path img = threeStates("q.qcow2");
        String[] parts = args.split(" ");
        String[] cmd = new String[parts.length + 2];
        cmd[0] = "resize";
        System.arraycopy(parts, 0, cmd, 1, parts.length - 1);
        cmd[parts.length] = img.toString();
        cmd[parts.length + 1] = parts[parts.length - 1];
        Qemu.img(cmd).ok();
        BlockCore core = Fixtures.core();
        byte[] activeNow = Fixtures.qemuRaw(img, dir);
        try (Image i = Fixtures.openRo(core, img)) {
            assertArrayEquals(activeNow, Fixtures.readAll(i));
        }
        for (String s : new String[] {"s1", "s2"}) {
            Path c = copy(img, s + ".qcow2");
            try (Image i = Fixtures.openRw(core, c)) {
                ((SnapshotNode) i.driverNode()).applySnapshot(s);
                assertEquals(OLD_SIZE, i.size());
                assertArrayEquals(s.equals("s1") ? s1() : s2(), Fixtures.readAll(i));
            }
            assertEquals(Integer.toString(OLD_SIZE), virtualSize(c));
            assertEquals(0, Qemu.img("check", c.toString()).exit());
            assertArrayEquals(s.equals("s1") ? s1() : s2(), Fixtures.qemuRaw(c, dir));
        }
    }

    @Test
    void version2ImagesWithSnapshotsAreRefusedAsQemuDoesAndLeftAlone() throws Exception {
        Path img = dir.resolve("v2.qcow2");
        Qemu.img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", img.toString(), "1M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 5 0 1M", img.toString()).ok();
        Qemu.img("snapshot", "-c", "s", img.toString()).ok();
        Qemu.Result theirs = Qemu.img("resize", img.toString(), "2M");
        assertEquals(1, theirs.exit());
        byte[] before = Files.readAllBytes(img);
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRw(core, img)) {
            for (long size : new long[] {2 * MIB, 512 * 1024}) {
                BlockException e = assertThrows(BlockException.class, () -> i.truncate(size, false, Preallocation.OFF));
                assertEquals(theirs.err(), "qemu-img: " + e.getMessage() + "\n");
            }
        }
        assertArrayEquals(before, Files.readAllBytes(img));
    }
}
