package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTimeoutPreemptively;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Arrays;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.Image;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Broken and hostile images end in a BlockException whose message says what is wrong, quickly,
 * and a failed open writes nothing.
 */
class HostileImageTest {
    @TempDir
    Path dir;

    private Path good() throws Exception {
        Path img = dir.resolve("h.qcow2");
        Qemu.img("create", "-f", "qcow2", img.toString(), "4M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 0xab 0 128k", img.toString()).ok();
        return img;
    }

    /** Opens read-write and reads everything; must fail with a message containing {@code expected}. */
    private BlockException assertRefused(Path img, String expected) throws Exception {
        byte[] before = Files.readAllBytes(img);
        BlockException e = assertTimeoutPreemptively(Duration.ofSeconds(5), () -> assertThrows(BlockException.class,
                () -> {
                    BlockCore core = Fixtures.core();
                    try (Image i = Fixtures.openRw(core, img)) {
                        Fixtures.readAll(i);
                    }
                }));
        assertTrue(e.getMessage().contains(expected), "message '" + e.getMessage() + "' should say '" + expected + "'");
        assertArrayEquals(before, Files.readAllBytes(img), "nothing may be written");
        return e;
    }

    @Test
    void rejectsTruncatedHeader() throws Exception {
        Path img = good();
        Patch.truncate(img, 50);
        assertRefused(img, "truncated");
    }

    @Test
    void rejectsTruncatedVersion3Header() throws Exception {
        Path img = good();
        Patch.truncate(img, 80);
        assertRefused(img, "truncated");
    }

    @Test
    void rejectsL1TableBeyondFileEnd() throws Exception {
        Path img = good();
        Patch.writeLong(img, 40, 1L << 40);
        assertRefused(img, "L1 table at offset 1099511627776");
    }

    @Test
    void rejectsClusterBits30() throws Exception {
        Path img = good();
        Patch.writeInt(img, 20, 30);
        assertRefused(img, "cluster_bits must be 9 to 21");
    }

    @Test
    void rejectsHugeL1Size() throws Exception {
        Path img = good();
        Patch.writeInt(img, 36, 0x7fff_ffff);
        assertRefused(img, "Active L1 table too large");
    }

    @Test
    void rejectsL1TooSmallForVirtualSize() throws Exception {
        Path img = good();
        Patch.writeLong(img, 24, 1L << 50);
        assertRefused(img, "L1 table is too small");
    }

    @Test
    void rejectsRefcountTableOffsetZero() throws Exception {
        Path img = good();
        Patch.writeLong(img, 48, 0);
        assertRefused(img, "Invalid reference count table");
    }

    @Test
    void rejectsRefcountTableOverflowingTheFile() throws Exception {
        Path img = good();
        Patch.writeLong(img, 48, 0x7fff_ffff_ffff_0000L);
        assertRefused(img, "Reference count table at offset");
    }

    @Test
    void rejectsOddHeaderLength() throws Exception {
        Path img = good();
        Patch.writeInt(img, 100, 107);
        assertRefused(img, "not a multiple of 8");
    }

    @Test
    void rejectsUnknownIncompatibleFeatureNamingTheBit() throws Exception {
        Path img = good();
        Patch.writeLong(img, 72, 1L << 17);
        assertRefused(img, "incompatible feature bit 17");
    }

    @Test
    void rejectsOverflowingSnapshotTable() throws Exception {
        Path img = good();
        Patch.writeInt(img, 60, 1_000_000);
        Patch.writeLong(img, 64, 65536);
        assertRefused(img, "Too many snapshots");
    }

    @Test
    void rejectsSnapshotTableBeyondFileEnd() throws Exception {
        Path img = good();
        Patch.writeInt(img, 60, 3);
        Patch.writeLong(img, 64, 1L << 45);
        assertRefused(img, "Snapshot table at offset");
    }

    @Test
    void rejectsL2EntryPointingBeyondFileEnd() throws Exception {
        Path img = good();
        long l2 = Patch.l2Offset(img, 0);
        Patch.writeLong(img, l2, (1L << 40) | (1L << 63));
        assertRefused(img, "beyond the end of the file");
    }

    @Test
    void rejectsUnalignedDataCluster() throws Exception {
        Path img = good();
        long l2 = Patch.l2Offset(img, 0);
        Patch.writeLong(img, l2, 0x30200L | (1L << 63));
        assertRefused(img, "unaligned");
    }

    @Test
    void rejectsBackingFileLoop() throws Exception {
        Path a = dir.resolve("a.qcow2");
        Path b = dir.resolve("b.qcow2");
        Qemu.img("create", "-f", "qcow2", a.toString(), "1M").ok();
        Qemu.img("create", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", b.toString()).ok();
        Qemu.img("rebase", "-u", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", a.toString()).ok();
        assertRefused(b, "loop");
    }

    @Test
    void rejectsBackingFileNameOutsideFirstCluster() throws Exception {
        Path img = good();
        Patch.writeLong(img, 8, 65530);
        Patch.writeInt(img, 16, 100);
        assertRefused(img, "Invalid backing file offset");
    }

    @Test
    void compressedClusterThatInflatesShortIsCorrupt() throws Exception {
        Path raw = dir.resolve("r.raw");
        Files.write(raw, new byte[65536 * 2]);
        byte[] pattern = Fixtures.pattern(1000, 1);
        byte[] data = new byte[65536 * 2];
        for (int i = 0; i < data.length; i++) {
            data[i] = pattern[i % 1000];
        }
        Files.write(raw, data);
        Path img = dir.resolve("z.qcow2");
        Qemu.img("convert", "-c", "-O", "qcow2", raw.toString(), img.toString()).ok();
        long l2 = Patch.l2Offset(img, 0);
        long entry = Patch.readLong(img, l2);
        // Keep the sector count but point to the header: garbage that is no deflate stream.
        Patch.writeLong(img, l2, (entry & ~((1L << 54) - 1)) | 0x10);
        assertRefused(img, "Compressed cluster");
    }

    @Test
    void refusesToAllocateOverMetadataWhenRefcountsLie() throws Exception {
        Path img = good();
        Patch.writeLong(img, Patch.readLong(img, 48), 0); // refcount block 0 gone: everything looks free
        byte[] before = Files.readAllBytes(img);
        BlockCore core = Fixtures.core();
        BlockException e = assertThrows(BlockException.class, () -> {
            try (Image i = Fixtures.openRw(core, img)) {
                i.write(1 << 20, ByteBuffer.allocate(4096), 0);
                i.flush();
            }
        });
        assertTrue(e.getMessage().contains("metadata cluster 0"), e.getMessage());
        assertArrayEquals(Arrays.copyOf(before, 65536), Arrays.copyOf(Files.readAllBytes(img), 65536),
                "the header cluster is untouched");
    }

    @Test
    void rejectsSnapshotWithHugeExtraData() throws Exception {
        Path img = good();
        Qemu.img("snapshot", "-c", "s", img.toString()).ok();
        Patch.writeInt(img, Patch.readLong(img, 64) + 36, 1 << 30);
        BlockCore core = Fixtures.core();
        BlockException e = assertThrows(BlockException.class, () -> {
            try (Image i = Fixtures.openRo(core, img)) {
                ((org.blockhaus.api.spi.SnapshotNode) i.driverNode()).snapshots();
            }
        });
        assertTrue(e.getMessage().contains("extra data"), e.getMessage());
    }

    @Test
    void compressionBombStopsAtOneCluster() throws Exception {
        Path img = good();
        // 64 MiB of zeroes deflate to about 64 KiB: one L2 entry points at them
        java.util.zip.Deflater d = new java.util.zip.Deflater(9, true);
        d.setInput(new byte[64 << 20]);
        d.finish();
        byte[] out = new byte[1 << 20];
        int n = d.deflate(out);
        d.end();
        long at = Files.size(img);
        try (java.io.RandomAccessFile f = new java.io.RandomAccessFile(img.toFile(), "rw")) {
            f.seek(at);
            f.write(out, 0, n);
            f.setLength(at + 512L * 256);
        }
        long sectors = Math.min(255, (n + 511) / 512);
        long entry = (1L << 62) | (sectors << 54) | at; // cluster_bits 16: the size field starts at bit 54
        Patch.writeLong(img, Patch.l2Offset(img, 0) + 8 * 10, entry);
        BlockCore core = Fixtures.core();
        assertTimeoutPreemptively(Duration.ofSeconds(2), () -> {
            try (Image i = Fixtures.openRo(core, img)) {
                ByteBuffer b = ByteBuffer.allocate(65536);
                i.read(10 * 65536L, b);
                assertArrayEquals(new byte[65536], b.array());
            }
        });
    }

    @Test
    void corruptImageOpensReadOnlyOnly() throws Exception {
        Path img = good();
        Patch.writeLong(img, 72, 2); // corrupt bit
        assertRefused(img, "corrupt");
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRo(core, img)) {
            ByteBuffer b = ByteBuffer.allocate(4);
            i.read(0, b);
            assertEquals((byte) 0xab, b.get(0));
        }
    }

    @Test
    void firstWriteClearsUnknownAutoclearBits() throws Exception {
        Path img = good();
        Patch.writeLong(img, 88, (1L << 40) | 1);
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRw(core, img)) {
            i.flush();
        }
        assertEquals((1L << 40) | 1, Patch.readLong(img, 88), "opening read-write without writing changes nothing");
        try (Image i = Fixtures.openRw(core, img)) {
            i.write(0, ByteBuffer.allocate(512), 0);
        }
        assertEquals(0, Patch.readLong(img, 88), "unknown bits and the bitmaps bit (bitmaps are not kept) cleared");
        assertEquals(0, Qemu.img("check", img.toString()).exit());
    }

    @Test
    void rejectsDataFileRawWithoutDataFile() throws Exception {
        Path img = good();
        Patch.writeLong(img, 88, 2);
        assertRefused(img, "without an external data file");
    }

    @Test
    void dirtyImageGetsItsRefcountsRebuiltOnReadWriteOpen() throws Exception {
        Path img = good();
        long block = Patch.refcountBlock(img, 0);
        long dataCluster = (Patch.readLong(img, Patch.l2Offset(img, 0)) & 0x00ff_ffff_ffff_fe00L) >>> 16;
        Patch.writeShort(img, block + 2 * dataCluster, 0); // what a lazy-refcount writer leaves behind
        Patch.writeLong(img, 72, 1); // dirty bit
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRw(core, img)) {
            assertEquals(false, i.info().get("dirty-flag"));
        }
        assertEquals(0, Patch.readLong(img, 72));
        assertEquals(0, Qemu.img("check", img.toString()).exit());
    }
}
