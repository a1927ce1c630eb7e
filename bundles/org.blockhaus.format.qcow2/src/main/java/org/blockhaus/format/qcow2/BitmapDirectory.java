package org.blockhaus.format.qcow2;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;

/**
 * The on-disk side of persistent dirty bitmaps (spec: "Bitmaps extension", "Bitmap directory",
 * "Bitmap table"): the header extension points at a directory of variable-length entries; each
 * entry names a bitmap and points at its bitmap table, whose entries point at clusters of bitmap
 * data (or say "all zeroes" / "all ones"). Every field is validated here against the file size
 * with overflow-checked arithmetic before anything is read through it.
 */
final class BitmapDirectory {
    static final int FLAG_IN_USE = 1;
    static final int FLAG_AUTO = 1 << 1;
    static final int FLAG_EXTRA_DATA_COMPATIBLE = 1 << 2;
    static final int KNOWN_FLAGS = FLAG_IN_USE | FLAG_AUTO | FLAG_EXTRA_DATA_COMPATIBLE;
    static final int TYPE_DIRTY_TRACKING = 1;

    /** QEMU's implementation limits (the spec allows more), shared so that qemu opens what we write. */
    static final int MAX_BITMAPS = 65535;
    /** 1 KiB per bitmap (a little under 64 MiB): qemu's limit. */
    static final long MAX_DIRECTORY_BYTES = 1024L * MAX_BITMAPS;
    static final int MAX_NAME_BYTES = 1023;
    static final int MIN_GRANULARITY_BITS = 9;
    static final int MAX_GRANULARITY_BITS = 31;
    /** One bitmap table is read into memory whole: as big as an L1 table may be. */
    static final long MAX_TABLE_BYTES = Qcow2Header.MAX_L1_BYTES;
    /** All tables together (they may overlap on disk, so the file size does not bound their sum). */
    static final long MAX_ALL_TABLES_BYTES = 2 * MAX_TABLE_BYTES;

    static final int EXTENSION_BYTES = 24;
    static final int ENTRY_HEADER_BYTES = 24;
    static final long TABLE_OFFSET_MASK = 0x00ff_ffff_ffff_fe00L;
    /** Bitmap table entry bit 0 with no offset: the cluster reads as all ones. */
    static final long TABLE_ALL_ONES = 1L;

    /** The bitmaps header extension. */
    record Extension(int count, long directorySize, long directoryOffset) {
        byte[] serialize() {
            return ByteBuffer.allocate(EXTENSION_BYTES).putInt(count).putInt(0).putLong(directorySize)
                    .putLong(directoryOffset).array();
        }
    }

    /** One bitmap directory entry. */
    record Entry(long tableOffset, int tableSize, int flags, int type, int granularityBits, String name,
            byte[] extraData) {
        boolean inUse() {
            return (flags & FLAG_IN_USE) != 0;
        }

        boolean auto() {
            return (flags & FLAG_AUTO) != 0;
        }

        long granularity() {
            return 1L << granularityBits;
        }

        Entry withFlags(int f) {
            return new Entry(tableOffset, tableSize, f, type, granularityBits, name, extraData);
        }

        Entry withTable(long offset, int size) {
            return new Entry(offset, size, flags, type, granularityBits, name, extraData);
        }

        int serializedSize() {
            return align8(ENTRY_HEADER_BYTES + extraData.length + name.getBytes(StandardCharsets.UTF_8).length);
        }
    }

    private BitmapDirectory() {
    }

    static int align8(long n) {
        return (int) ((n + 7) & ~7L);
    }

    /** Bitmap table entries needed for a bitmap of {@code virtualSize} bytes at this granularity. */
    static long tableEntriesFor(long virtualSize, int granularityBits, int clusterBits) {
        long bits = Qcow2Header.ceilShift(virtualSize, granularityBits);
        long bytes = Qcow2Header.ceilShift(bits, 3);
        return Qcow2Header.ceilShift(bytes, clusterBits);
    }

    static BlockException corrupt(String message) {
        return Qcow2Header.corrupt("bitmaps: " + message);
    }

    /** Parses and checks the header extension (24 bytes: count, reserved, directory size and offset). */
    static Extension parseExtension(byte[] data, int clusterBits, long fileSize) throws BlockException {
        if (data.length != EXTENSION_BYTES) {
            throw corrupt("the bitmaps extension has " + data.length + " bytes (" + EXTENSION_BYTES + " expected)");
        }
        ByteBuffer b = ByteBuffer.wrap(data);
        long count = Integer.toUnsignedLong(b.getInt(0));
        int reserved = b.getInt(4);
        long dirSize = b.getLong(8);
        long dirOffset = b.getLong(16);
        if (reserved != 0) {
            throw corrupt("the reserved field of the bitmaps extension is not zero");
        }
        if (count == 0) {
            throw corrupt("the bitmaps extension lists no bitmaps");
        }
        if (count > MAX_BITMAPS) {
            throw corrupt("the image has " + count + " bitmaps, more than the supported maximum of " + MAX_BITMAPS);
        }
        if (dirSize < 0 || dirSize > MAX_DIRECTORY_BYTES) {
            throw corrupt("the bitmap directory size " + Long.toUnsignedString(dirSize) + " exceeds the maximum of "
                    + MAX_DIRECTORY_BYTES + " bytes");
        }
        if (dirSize < count * ENTRY_HEADER_BYTES) {
            throw corrupt("the bitmap directory (" + dirSize + " bytes) is too small for " + count + " entries");
        }
        Qcow2Header.checkTable("Bitmap directory", dirOffset, dirSize, 1L << clusterBits, fileSize);
        return new Extension((int) count, dirSize, dirOffset);
    }

    /**
     * Reads and checks the directory: every entry lies inside it, names are non-empty, unique and
     * at most 1023 bytes, flags, type and granularity are known, padding is zero, and the table of
     * a consistent bitmap has exactly the size the virtual disk needs and lies inside the file.
     */
    static List<Entry> read(HostFile file, Extension ext, int clusterBits, long virtualSize) throws BlockException {
        return read(file, ext, clusterBits, virtualSize, false);
    }

    /**
     * As {@link #read(HostFile, Extension, int, long)}; with {@code forCheck} (opens for check
     * only) a table that runs past the end of the file is kept: qemu-img 7.2's check reads what
     * lies past the end as zeroes, and {@link #readTable} does the same; and padding that is not
     * zero is taken, as qemu takes it (check reports it).
     */
    static List<Entry> read(HostFile file, Extension ext, int clusterBits, long virtualSize, boolean forCheck)
            throws BlockException {
        long fileSize = file.size();
        ByteBuffer dir = file.read(ext.directoryOffset(), (int) ext.directorySize(), "Bitmap directory");
        List<Entry> out = new ArrayList<>(ext.count());
        Set<String> names = new HashSet<>();
        long pos = 0;
        long tableBytes = 0;
        long limit = ext.directorySize();
        for (int i = 0; i < ext.count(); i++) {
            if (limit - pos < ENTRY_HEADER_BYTES) {
                throw corrupt("bitmap directory entry " + i + " runs past the end of the directory");
            }
            int p = (int) pos;
            long tableOffset = dir.getLong(p);
            long tableSize = Integer.toUnsignedLong(dir.getInt(p + 8));
            int flags = dir.getInt(p + 12);
            int type = Byte.toUnsignedInt(dir.get(p + 16));
            int granBits = Byte.toUnsignedInt(dir.get(p + 17));
            int nameSize = Short.toUnsignedInt(dir.getShort(p + 18));
            long extraSize = Integer.toUnsignedLong(dir.getInt(p + 20));
            long entryBytes = ENTRY_HEADER_BYTES + extraSize + nameSize; // at most 2^32 + 2^16 + 24: no overflow
            if (entryBytes > limit - pos) {
                throw corrupt("bitmap directory entry " + i + " (" + entryBytes + " bytes) runs past the end of the"
                        + " directory");
            }
            if (nameSize == 0) {
                throw corrupt("bitmap directory entry " + i + " has an empty name");
            }
            if (nameSize > MAX_NAME_BYTES) {
                throw corrupt("bitmap directory entry " + i + " has a name of " + nameSize + " bytes (at most "
                        + MAX_NAME_BYTES + ")");
            }
            byte[] extra = new byte[(int) extraSize];
            dir.get(p + ENTRY_HEADER_BYTES, extra);
            byte[] nameBytes = new byte[nameSize];
            dir.get(p + ENTRY_HEADER_BYTES + (int) extraSize, nameBytes);
            String name = new String(nameBytes, StandardCharsets.UTF_8);
            long padded = align8(entryBytes);
            if (padded > limit - pos) {
                // qemu refuses this too ("Broken bitmap directory"), also for check
                throw corrupt("the padding of bitmap '" + name + "' runs past the end of the directory");
            }
            for (long z = pos + entryBytes; z < pos + padded && !forCheck; z++) {
                // qemu does not look at the padding; check opens take it (Qcow2Check reports it)
                if (dir.get((int) z) != 0) {
                    throw corrupt("the padding of bitmap '" + name + "' is not zero");
                }
            }
            if ((flags & ~KNOWN_FLAGS) != 0) {
                throw corrupt("bitmap '" + name + "' has unknown flags 0x" + Integer.toHexString(flags & ~KNOWN_FLAGS));
            }
            if (type != TYPE_DIRTY_TRACKING) {
                throw corrupt("bitmap '" + name + "' has type " + type + " (only 1, dirty tracking, is known)");
            }
            if (granBits < MIN_GRANULARITY_BITS || granBits > MAX_GRANULARITY_BITS) {
                throw corrupt("bitmap '" + name + "' has granularity_bits " + granBits + " (supported: "
                        + MIN_GRANULARITY_BITS + " to " + MAX_GRANULARITY_BITS + ")");
            }
            if (extraSize != 0 && (flags & FLAG_EXTRA_DATA_COMPATIBLE) == 0) {
                throw new BlockException(Reason.UNSUPPORTED, "qcow2: bitmaps: bitmap '" + name + "' has "
                        + extraSize + " bytes of extra data this driver does not know and may not be used");
            }
            if (!names.add(name)) {
                throw corrupt("two bitmaps are named '" + name + "'");
            }
            if (tableSize * 8 > MAX_TABLE_BYTES) {
                throw corrupt("the bitmap table of '" + name + "' has " + tableSize + " entries (at most "
                        + MAX_TABLE_BYTES / 8 + ")");
            }
            long need = tableEntriesFor(virtualSize, granBits, clusterBits);
            if ((flags & FLAG_IN_USE) == 0 && tableSize != need) {
                throw corrupt("the bitmap table of '" + name + "' has " + tableSize + " entries; a virtual size of "
                        + virtualSize + " bytes at granularity " + (1L << granBits) + " needs " + need);
            }
            tableBytes += tableSize * 8;
            if (tableBytes > MAX_ALL_TABLES_BYTES) {
                throw new BlockException(Reason.UNSUPPORTED, "qcow2: bitmaps: the bitmap tables take more than "
                        + MAX_ALL_TABLES_BYTES + " bytes together; this driver keeps at most that in memory");
            }
            if (tableSize > 0 && !(forCheck && tableOffset > 0 && (tableOffset & ((1L << clusterBits) - 1)) == 0)) {
                Qcow2Header.checkTable("Bitmap table of '" + name + "'", tableOffset, tableSize * 8, 1L << clusterBits,
                        fileSize);
            }
            out.add(new Entry(tableOffset, (int) tableSize, flags, type, granBits, name, extra));
            pos += padded;
        }
        if (pos != limit) {
            throw corrupt("the bitmap directory is " + limit + " bytes but its " + ext.count() + " entries take " + pos);
        }
        return out;
    }

    /** Reads a bitmap table and checks each entry: reserved bits zero, data clusters aligned and inside the file. */
    static long[] readTable(HostFile file, Entry e, int clusterBits) throws BlockException {
        return readTable(file, e, clusterBits, false);
    }

    /**
     * As {@link #readTable(HostFile, Entry, int)}; with {@code pastEndAsZero} (opens for check
     * only) an aligned entry at or past the end of the file is kept instead of refused: qemu-img
     * 7.2's check opens such an image, reads that cluster as zeroes (a read past the end of the
     * file) and, opened read-write, stores the bitmap anew on close without it.
     */
    static long[] readTable(HostFile file, Entry e, int clusterBits, boolean pastEndAsZero) throws BlockException {
        long[] t = new long[e.tableSize()];
        if (t.length == 0) {
            return t;
        }
        long fileSize = file.size();
        if (pastEndAsZero) {
            ByteBuffer b = ByteBuffer.allocate(t.length * 8);
            file.readClamped(e.tableOffset(), b); // the part past the end of the file reads as zeroes
            b.clear().asLongBuffer().get(t);
        } else {
            file.read(e.tableOffset(), t.length * 8, "Bitmap table").asLongBuffer().get(t);
        }
        long clusterSize = 1L << clusterBits;
        for (int i = 0; i < t.length; i++) {
            long w = t[i];
            long off = w & TABLE_OFFSET_MASK;
            boolean reservedSet = (w & ~TABLE_OFFSET_MASK & ~TABLE_ALL_ONES) != 0
                    || off != 0 && (w & TABLE_ALL_ONES) != 0;
            if (reservedSet) {
                throw corrupt("bitmap table entry " + i + " of '" + e.name() + "' (0x" + Long.toHexString(w)
                        + ") has reserved bits set");
            }
            if (pastEndAsZero && off != 0 && (off & (clusterSize - 1)) == 0 && off >= fileSize) {
                continue;
            }
            if (off != 0 && ((off & (clusterSize - 1)) != 0 || off > fileSize - clusterSize)) {
                throw corrupt("bitmap table entry " + i + " of '" + e.name() + "' points at " + off
                        + ", which is not a cluster inside the file (" + fileSize + " bytes)");
            }
        }
        return t;
    }

    /** The directory as it goes on disk. */
    static ByteBuffer serialize(List<Entry> entries) {
        long total = 0;
        for (Entry e : entries) {
            total += e.serializedSize();
        }
        ByteBuffer b = ByteBuffer.allocate((int) total);
        for (Entry e : entries) {
            int start = b.position();
            byte[] name = e.name().getBytes(StandardCharsets.UTF_8);
            b.putLong(e.tableOffset()).putInt(e.tableSize()).putInt(e.flags()).put((byte) e.type())
                    .put((byte) e.granularityBits()).putShort((short) name.length).putInt(e.extraData().length)
                    .put(e.extraData()).put(name);
            b.position(start + e.serializedSize());
        }
        return b.flip();
    }
}
