package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import org.blockhaus.api.Image;
import org.blockhaus.api.spi.SnapshotNode;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Internal snapshots we create, apply and delete are what qemu-img sees, and the reverse. */
class SnapshotsTest {
    @TempDir
    Path dir;

    private static void fill(Image i, long off, int len, int value) throws Exception {
        byte[] b = new byte[len];
        Arrays.fill(b, (byte) value);
        i.write(off, ByteBuffer.wrap(b), 0);
    }

    private static SnapshotNode snaps(Image i) {
        return (SnapshotNode) i.driverNode();
    }

    @Test
    void snapshotWeCreateIsListedAndAppliedByQemu() throws Exception {
        Path img = dir.resolve("s.qcow2");
        BlockCore core = Fixtures.core();
        Fixtures.create(core, img, 4 << 20, "cluster_size", "4096");
        try (Image i = Fixtures.openRw(core, img)) {
            fill(i, 0, 3 << 20, 0x11);
            snaps(i).createSnapshot("before");
            fill(i, 4096, 100, 0x22);          // partial: copy on write of a shared cluster and L2 table
            fill(i, 2 << 20, 1 << 20, 0x33);   // whole clusters
            snaps(i).createSnapshot("after");
            fill(i, 0, 4096, 0x44);
        }
        assertEquals(0, Qemu.img("check", img.toString()).exit(), Qemu.img("check", img.toString()).out());
        String list = Qemu.img("snapshot", "-l", img.toString()).ok().out();
        assertTrue(list.contains("before") && list.contains("after"), list);
        String json = Qemu.img("info", "--output=json", img.toString()).ok().out();
        assertTrue(json.contains("\"icount\": 0") && json.contains("\"vm-clock-nsec\": 0"), json);
        Qemu.io("-r", "-f", "qcow2", "-c", "read -P 0x44 0 4k", "-c", "read -P 0x22 4096 100",
                "-c", "read -P 0x33 2M 1M", img.toString()).ok();
        Qemu.img("snapshot", "-a", "before", img.toString()).ok();
        Qemu.io("-r", "-f", "qcow2", "-c", "read -P 0x11 0 3M", "-c", "read -P 0 3M 1M", img.toString()).ok();
        Qemu.img("snapshot", "-a", "after", img.toString()).ok();
        Qemu.io("-r", "-f", "qcow2", "-c", "read -P 0x11 0 4096", "-c", "read -P 0x22 4096 100",
                "-c", "read -P 0x33 2M 1M", img.toString()).ok();
        assertEquals(0, Qemu.img("check", img.toString()).exit());
    }

    @Test
    void weApplyAndDeleteSnapshotsMadeByQemu() throws Exception {
        Path img = dir.resolve("q.qcow2");
        Qemu.img("create", "-f", "qcow2", img.toString(), "2M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 0x01 0 2M", img.toString()).ok();
        Qemu.img("snapshot", "-c", "one", img.toString()).ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 0x02 0 1M", img.toString()).ok();
        Qemu.img("snapshot", "-c", "two", img.toString()).ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 0x03 64k 64k", img.toString()).ok();
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRw(core, img)) {
            List<SnapshotNode.Snapshot> list = snaps(i).snapshots();
            assertEquals(List.of("one", "two"), list.stream().map(SnapshotNode.Snapshot::name).toList());
            snaps(i).applySnapshot("one");
            ByteBuffer b = ByteBuffer.allocate(2 << 20);
            i.read(0, b);
            for (int k = 0; k < b.capacity(); k += 4096) {
                assertEquals(1, b.get(k));
            }
            snaps(i).deleteSnapshot("two");
            assertEquals(1, snaps(i).snapshots().size());
        }
        assertEquals(0, Qemu.img("check", img.toString()).exit(), Qemu.img("check", img.toString()).out());
        Qemu.io("-r", "-f", "qcow2", "-c", "read -P 0x01 0 2M", img.toString()).ok();
        String list = Qemu.img("snapshot", "-l", img.toString()).ok().out();
        assertTrue(list.contains("one") && !list.contains("two"), list);
        try (Image i = Fixtures.openRw(core, img)) {
            snaps(i).deleteSnapshot("one");
            fill(i, 0, 4096, 0x05); // now owned alone again: written in place
        }
        Qemu.Result check = Qemu.img("check", "--output=json", img.toString());
        assertEquals(0, check.exit(), check.out());
        Qemu.io("-r", "-f", "qcow2", "-c", "read -P 0x05 0 4k", "-c", "read -P 0x01 4k 2044k", img.toString()).ok();
        assertTrue(Qemu.img("snapshot", "-l", img.toString()).ok().out().isBlank());
    }

    @Test
    void snapshotLoadedReadOnlyReadsLikeQemuConvertL() throws Exception {
        Path img = dir.resolve("l.qcow2");
        Qemu.img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", img.toString(), "2M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 0x01 0 2M", img.toString()).ok();
        Qemu.img("snapshot", "-c", "one", img.toString()).ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 0x02 0 1M", img.toString()).ok();
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRw(core, img)) {
            org.blockhaus.api.BlockException e = org.junit.jupiter.api.Assertions.assertThrows(
                    org.blockhaus.api.BlockException.class, () -> snaps(i).loadSnapshotReadOnly(null, "one"));
            assertEquals("Device is not readonly", e.getMessage());
        }
        try (Image i = Fixtures.openRo(core, img)) {
            org.blockhaus.api.BlockException e = org.junit.jupiter.api.Assertions.assertThrows(
                    org.blockhaus.api.BlockException.class, () -> snaps(i).loadSnapshotReadOnly("1", "two"));
            assertEquals("Can't find snapshot", e.getMessage());
            snaps(i).loadSnapshotReadOnly("1", "one");
            Qemu.img("convert", "-O", "raw", "-l", "one", img.toString(), dir.resolve("want.raw").toString()).ok();
            assertTrue(Arrays.equals(java.nio.file.Files.readAllBytes(dir.resolve("want.raw")), Fixtures.readAll(i)));
        }
    }

    @org.junit.jupiter.params.ParameterizedTest(name = "{0}")
    @org.junit.jupiter.params.provider.ValueSource(strings = {"extended_l2=on,cluster_size=64k",
        "compression_type=zstd,cluster_size=4k", "compat=0.10,cluster_size=512", "refcount_bits=64"})
    void snapshotsOfEveryLayoutPassQemuCheckAndKeepTheirData(String opts) throws Exception {
        Path img = dir.resolve("v.qcow2");
        Qemu.img("create", "-q", "-f", "qcow2", "-o", opts, img.toString(), "4M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 0x01 0 1M", "-c", "write -c -P 0x02 2M 256k", "-c",
                "write -z 3M 64k", img.toString()).ok();
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRw(core, img)) {
            snaps(i).createSnapshot("a");
            fill(i, 4096, 8192, 0x03);
            snaps(i).createSnapshot("b");
            fill(i, 2 << 20, 4096, 0x04);
            snaps(i).applySnapshot("a");
            snaps(i).deleteSnapshot("b");
        }
        Qemu.Result check = Qemu.img("check", img.toString());
        assertEquals(0, check.exit(), check.out() + check.err());
        Qemu.io("-r", "-f", "qcow2", "-c", "read -P 0x01 0 1M", "-c", "read -P 0x02 2M 256k", "-c", "read -P 0 3M 1M",
                img.toString()).ok();
        Qemu.img("snapshot", "-a", "a", img.toString()).ok();
        assertEquals(0, Qemu.img("check", img.toString()).exit());
    }

    @Test
    void snapshotThatWouldOverflowOneBitRefcountsIsRefusedAndChangesNothing() throws Exception {
        Path img = dir.resolve("r1.qcow2");
        Qemu.img("create", "-q", "-f", "qcow2", "-o", "refcount_bits=1", img.toString(), "1M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 0x01 0 64k", img.toString()).ok();
        byte[] before = java.nio.file.Files.readAllBytes(img);
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRw(core, img)) {
            org.blockhaus.api.BlockException e = org.junit.jupiter.api.Assertions.assertThrows(
                    org.blockhaus.api.BlockException.class, () -> snaps(i).createSnapshot("s"));
            assertTrue(e.getMessage().contains("refcount_bits=1"), e.getMessage());
        }
        assertTrue(Arrays.equals(before, java.nio.file.Files.readAllBytes(img)), "nothing written");
        assertEquals(0, Qemu.img("check", img.toString()).exit());
    }
}
