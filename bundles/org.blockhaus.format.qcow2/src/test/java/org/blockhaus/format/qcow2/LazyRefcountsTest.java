package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * lazy_refcounts as qemu runs them: the dirty bit before the first allocating write, refcounts
 * written only on flush, the bit cleared on a clean close, and a dirty image rebuilt on the next
 * read-write open, in both directions with qemu.
 */
class LazyRefcountsTest {
    @TempDir
    Path dir;

    private static boolean dirty(Path img) throws Exception {
        return (Files.readAllBytes(img)[79] & 1) != 0;
    }

    private static void fill(Image i, long off, int len, int value) throws Exception {
        byte[] b = new byte[len];
        Arrays.fill(b, (byte) value);
        i.write(off, ByteBuffer.wrap(b), 0);
    }

    @Test
    void dirtyBitComesWithTheFirstAllocatingWriteAndGoesWithACleanClose() throws Exception {
        Path img = dir.resolve("l.qcow2");
        Path ref = dir.resolve("q.qcow2");
        BlockCore core = Fixtures.core();
        Fixtures.create(core, img, 8 << 20, "lazy_refcounts", "on");
        Qemu.img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", ref.toString(), "8M").ok();
        // qemu: allocating write, then killed before it can close: dirty
        Qemu.Result killed = Qemu.io("-f", "qcow2", "-c", "write -P 0x5a 0 1M", "-c", "sigraise 9", ref.toString());
        assertEquals(137, killed.exit(), killed.err());
        assertTrue(dirty(ref));
        try (Image i = Fixtures.openRw(core, img)) {
            assertFalse(dirty(img), "opening read-write does not set the bit");
            fill(i, 0, 1 << 20, 0x5a);
            assertTrue(dirty(img), "set before the first allocating write");
            i.flush();
            assertTrue(dirty(img), "a flush keeps it, as in qemu");
        }
        assertFalse(dirty(img), "a clean close clears it");
        assertEquals(0, Qemu.img("check", img.toString()).exit());
        Qemu.io("-r", "-f", "qcow2", "-c", "read -P 0x5a 0 1M", img.toString()).ok();
    }

    @Test
    void imageQemuLeftDirtyReadsHereAndIsRebuiltByOurReadWriteOpen() throws Exception {
        Path img = dir.resolve("q.qcow2");
        Qemu.img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on,cluster_size=4096", img.toString(), "8M")
                .ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 0x11 0 2M", "-c", "write -P 0x22 3M 100k", "-c", "sigraise 9",
                img.toString());
        assertTrue(dirty(img));
        assertEquals(2, Qemu.img("check", img.toString()).exit(), "refcounts lag behind: qemu calls it corrupt");
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRo(core, img)) {
            ByteBuffer b = ByteBuffer.allocate(2 << 20);
            i.read(0, b);
            assertTrue(Arrays.equals(b.array(), filled(2 << 20, 0x11)), "read-only open reads the dirty image");
        }
        assertTrue(dirty(img), "read-only open changes nothing");
        try (Image i = Fixtures.openRw(core, img)) {
            assertFalse(dirty(img), "rebuilt and marked clean when opened read-write");
            fill(i, 4 << 20, 64 << 10, 0x33);
        }
        Qemu.Result check = Qemu.img("check", img.toString());
        assertEquals(0, check.exit(), check.out() + check.err());
        Qemu.io("-r", "-f", "qcow2", "-c", "read -P 0x11 0 2M", "-c", "read -P 0x22 3M 100k", "-c",
                "read -P 0x33 4M 64k", "-c", "read -P 0 5M 1M", img.toString()).ok();
    }

    @Test
    void imageWeLeaveDirtyIsRepairedByQemu() throws Exception {
        Path img = dir.resolve("l.qcow2");
        BlockCore core = Fixtures.core();
        Fixtures.create(core, img, 8 << 20, "lazy_refcounts", "on", "cluster_size", "4096");
        Image i = Fixtures.openRw(core, img);
        fill(i, 0, 1 << 20, 0x44);
        i.flush();
        // no close: the process would be killed here; the image keeps its dirty bit
        Path copy = dir.resolve("copy.qcow2");
        Files.copy(img, copy);
        assertTrue(dirty(copy));
        Qemu.Result repaired = Qemu.img("check", "-r", "all", copy.toString());
        assertEquals(0, repaired.exit(), repaired.out() + repaired.err());
        assertFalse(dirty(copy));
        Qemu.io("-r", "-f", "qcow2", "-c", "read -P 0x44 0 1M", copy.toString()).ok();
        // and qemu opening it read-write repairs it by itself
        Path copy2 = dir.resolve("copy2.qcow2");
        Files.copy(img, copy2);
        Qemu.io("-f", "qcow2", "-c", "read -P 0x44 0 1M", copy2.toString()).ok();
        assertEquals(0, Qemu.img("check", copy2.toString()).exit());
        i.close();
    }

    @Test
    void dirtyImageWithADataFileIsRebuiltWithoutCountingTheDataFile() throws Exception {
        Path img = dir.resolve("d.qcow2");
        Path data = dir.resolve("d.raw");
        Qemu.img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on,data_file=" + data, img.toString(), "8M")
                .ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 0x66 1M 2M", "-c", "sigraise 9", img.toString());
        assertTrue(dirty(img));
        try (Image i = Fixtures.openRw(Fixtures.core(), img)) {
            fill(i, 4 << 20, 64 << 10, 0x67);
        }
        assertFalse(dirty(img));
        Qemu.Result check = Qemu.img("check", img.toString());
        assertEquals(0, check.exit(), check.out() + check.err());
        Qemu.io("-r", "-f", "qcow2", "-c", "read -P 0x66 1M 2M", "-c", "read -P 0x67 4M 64k", img.toString()).ok();
    }

    @Test
    void ourRepairOfADirtyImageIsTheRepairQemusOpenMakes() throws Exception {
        Path ours = dir.resolve("o.qcow2");
        Qemu.img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on,cluster_size=4k", ours.toString(), "8M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 0x21 0 300k", "-c", "write -P 0x22 1M 8k", "-c", "sigraise 9",
                ours.toString());
        Path theirs = dir.resolve("t.qcow2");
        Files.copy(ours, theirs);
        Qemu.io("-f", "qcow2", "-c", "read -P 0x21 0 300k", theirs.toString()).ok(); // qemu's open repairs it
        Fixtures.openRw(Fixtures.core(), ours).close();
        assertFalse(dirty(ours));
        assertFalse(dirty(theirs));
        assertTrue(Arrays.equals(Files.readAllBytes(theirs), Files.readAllBytes(ours)), "byte for byte");
    }

    @Test
    void lazyRefcountsOptionNeedsCompat11() throws Exception {
        Path img = dir.resolve("v2.qcow2");
        Qemu.img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", img.toString(), "1M").ok();
        BlockException e = org.junit.jupiter.api.Assertions.assertThrows(BlockException.class,
                () -> Fixtures.core().open(img.toString(), Options.of("driver", "qcow2", "lazy-refcounts", "on"),
                        OpenMode.READ_WRITE));
        assertEquals("Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level", e.getMessage());
        Qemu.Result q = Qemu.io("--image-opts", "-c", "read 0 512", "driver=qcow2,lazy-refcounts=on,file.filename="
                + img);
        assertTrue(q.err().contains("Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level"),
                q.err());
    }

    private static byte[] filled(int n, int v) {
        byte[] b = new byte[n];
        Arrays.fill(b, (byte) v);
        return b;
    }
}
