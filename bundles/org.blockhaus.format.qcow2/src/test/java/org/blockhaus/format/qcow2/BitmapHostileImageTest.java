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
import org.blockhaus.api.BlockException;
import org.blockhaus.api.Image;
import org.blockhaus.api.spi.BitmapNode;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Broken bitmap extensions, directories and tables end in a BlockException naming the field,
 * quickly, and a failed open writes nothing (not even the in_use flags).
 */
class BitmapHostileImageTest {
    @TempDir
    Path dir;

    /** Offset of the bitmaps extension's data in the header. */
    private long ext;
    /** Offset of the first directory entry. */
    private long entry;

    private Path good(String... names) throws Exception {
        Path img = dir.resolve("b.qcow2");
        Qemu.img("create", "-q", "-f", "qcow2", img.toString(), "4M").ok();
        for (String n : names.length == 0 ? new String[] {"bm"} : names) {
            Qemu.img("bitmap", "--add", img.toString(), n).ok();
        }
        Qemu.io("-f", "qcow2", "-c", "write 0 64k", img.toString()).ok();
        ByteBuffer h = ByteBuffer.wrap(Files.readAllBytes(img), 0, 65536);
        int pos = h.getInt(100);
        while (h.getInt(pos) != Qcow2Header.EXT_BITMAPS) {
            pos += 8 + ((h.getInt(pos + 4) + 7) & ~7);
        }
        ext = pos + 8;
        entry = Patch.readLong(img, ext + 16);
        return img;
    }

    private BlockException assertRefused(Path img, String expected) {
        byte[] before = readAll(img);
        BlockException e = assertTimeoutPreemptively(Duration.ofSeconds(5), () -> assertThrows(BlockException.class,
                () -> {
                    BlockCore core = Fixtures.core();
                    try (Image i = Fixtures.openRw(core, img)) {
                        BitmapNode n = (BitmapNode) i.driverNode();
                        for (BitmapNode.Bitmap b : n.bitmaps()) {
                            n.nextDirty(b.name(), 0);
                        }
                    }
                }));
        assertTrue(e.getMessage().contains(expected), "message '" + e.getMessage() + "' should say '" + expected + "'");
        assertArrayEquals(before, readAll(img), "nothing may be written");
        return e;
    }

    private static byte[] readAll(Path p) {
        try {
            return Files.readAllBytes(p);
        } catch (java.io.IOException e) {
            throw new AssertionError(e);
        }
    }

    @Test
    void rejectsMoreThan65535Bitmaps() throws Exception {
        Path img = good();
        Patch.writeInt(img, ext, 65536);
        assertRefused(img, "the image has 65536 bitmaps, more than the supported maximum of 65535");
    }

    @Test
    void rejectsExtensionWithoutBitmaps() throws Exception {
        Path img = good();
        Patch.writeInt(img, ext, 0);
        assertRefused(img, "lists no bitmaps");
    }

    @Test
    void rejectsReservedExtensionField() throws Exception {
        Path img = good();
        Patch.writeInt(img, ext + 4, 1);
        assertRefused(img, "reserved field");
    }

    @Test
    void rejectsDirectoryOver64MiB() throws Exception {
        Path img = good();
        Patch.writeLong(img, ext + 8, (64L << 20) + 8);
        assertRefused(img, "exceeds the maximum of 67107840 bytes"); // qemu's limit, 1 KiB per bitmap
    }

    @Test
    void rejectsNegativeDirectorySize() throws Exception {
        Path img = good();
        Patch.writeLong(img, ext + 8, -8);
        assertRefused(img, "exceeds the maximum");
    }

    @Test
    void rejectsDirectoryBeyondFileEnd() throws Exception {
        Path img = good();
        Patch.writeLong(img, ext + 16, 1L << 40);
        assertRefused(img, "Bitmap directory at offset 1099511627776");
    }

    @Test
    void rejectsDirectoryRunningOffTheFileEnd() throws Exception {
        Path img = good();
        Patch.writeLong(img, ext + 16, Long.MAX_VALUE & -65536L);
        assertRefused(img, "beyond the end of the file");
    }

    @Test
    void rejectsDirectoryTooSmallForItsEntries() throws Exception {
        Path img = good();
        Patch.writeLong(img, ext + 8, 8);
        assertRefused(img, "too small for 1 entries");
    }

    @Test
    void rejectsEmptyName() throws Exception {
        Path img = good();
        Patch.writeShort(img, entry + 18, 0);
        assertRefused(img, "empty name");
    }

    @Test
    void rejectsNameOver1023Bytes() throws Exception {
        Path img = good();
        Patch.truncate(img, Files.size(img) + 65536); // qemu leaves the directory's cluster short of the end
        Patch.writeShort(img, entry + 18, 1024);
        Patch.writeLong(img, ext + 8, 24 + 1024);
        assertRefused(img, "a name of 1024 bytes (at most 1023)");
    }

    @Test
    void rejectsEntryRunningPastTheDirectory() throws Exception {
        Path img = good();
        Patch.writeInt(img, entry + 20, -1); // extra_data_size 4 GiB
        assertRefused(img, "runs past the end of the directory");
    }

    @Test
    void rejectsGranularityBitsOutside9To31() throws Exception {
        Path img = good();
        patchByte(img, entry + 17, 8);
        assertRefused(img, "granularity_bits 8");
        patchByte(img, entry + 17, 32);
        assertRefused(img, "granularity_bits 32");
    }

    @Test
    void rejectsUnknownFlags() throws Exception {
        Path img = good();
        Patch.writeInt(img, entry + 12, Patch.readInt(img, entry + 12) | 8);
        assertRefused(img, "unknown flags 0x8");
    }

    @Test
    void rejectsUnknownType() throws Exception {
        Path img = good();
        patchByte(img, entry + 16, 2);
        assertRefused(img, "type 2");
    }

    @Test
    void rejectsTableOfTheWrongSize() throws Exception {
        Path img = good();
        Patch.writeInt(img, entry + 8, 2);
        assertRefused(img, "has 2 entries; a virtual size of 4194304 bytes at granularity 65536 needs 1");
    }

    @Test
    void rejectsHugeTable() throws Exception {
        Path img = good();
        Patch.writeInt(img, entry + 8, -1);
        assertRefused(img, "4294967295 entries (at most 4194304)");
    }

    @Test
    void rejectsTableBeyondFileEnd() throws Exception {
        Path img = good();
        Patch.writeLong(img, entry, 1L << 40);
        assertRefused(img, "Bitmap table of 'bm' at offset 1099511627776");
    }

    @Test
    void rejectsUnalignedTable() throws Exception {
        Path img = good();
        Patch.writeLong(img, entry, Patch.readLong(img, entry) + 8);
        assertRefused(img, "must be a non-zero multiple of the cluster size");
    }

    @Test
    void rejectsTableEntryWithReservedBits() throws Exception {
        Path img = good();
        long table = Patch.readLong(img, entry);
        Patch.writeLong(img, table, Patch.readLong(img, table) | 2);
        assertRefused(img, "has reserved bits set");
    }

    @Test
    void rejectsTableEntryBeyondFileEnd() throws Exception {
        Path img = good();
        long table = Patch.readLong(img, entry);
        Patch.writeLong(img, table, 1L << 40);
        assertRefused(img, "points at 1099511627776, which is not a cluster inside the file");
    }

    @Test
    void rejectsDuplicateNames() throws Exception {
        Path img = good("aa", "ab");
        patchByte(img, entry + 32 + 24 + 1, 'a'); // second entry (32 bytes after the first), name "ab" -> "aa"
        assertRefused(img, "two bitmaps are named 'aa'");
    }

    @Test
    void rejectsNonZeroPadding() throws Exception {
        Path img = good();
        patchByte(img, entry + 24 + 2, 1); // after the two-byte name
        assertRefused(img, "padding of bitmap 'bm'");
    }

    @Test
    void ignoresBitmapsWithoutTheAutoclearBitAsQemuDoes() throws Exception {
        Path img = good();
        Patch.writeLong(img, 88, 0);
        assertTrue(!Qemu.img("info", img.toString()).ok().out().contains("bitmaps"));
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRo(core, img)) {
            assertEquals(0, ((BitmapNode) i.driverNode()).bitmaps().size());
        }
    }

    private static void patchByte(Path p, long off, int v) throws Exception {
        try (var ch = java.nio.channels.FileChannel.open(p, java.nio.file.StandardOpenOption.WRITE)) {
            ch.write(ByteBuffer.wrap(new byte[] {(byte) v}), off);
        }
    }
}
