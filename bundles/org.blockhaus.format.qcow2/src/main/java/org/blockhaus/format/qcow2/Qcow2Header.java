package org.blockhaus.format.qcow2;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;

/**
 * The qcow2 file header (first cluster): the fixed fields, the version 3 additions and the header
 * extensions. {@link #parse} validates every field against the file size before anything else
 * trusts it, with overflow-checked arithmetic, so a hostile header fails here with a clear message.
 */
record Qcow2Header(
        int version,
        long backingFileOffset,
        int backingFileSize,
        int clusterBits,
        long size,
        int cryptMethod,
        int l1Size,
        long l1TableOffset,
        long refcountTableOffset,
        int refcountTableClusters,
        int nbSnapshots,
        long snapshotsOffset,
        long incompatibleFeatures,
        long compatibleFeatures,
        long autoclearFeatures,
        int refcountOrder,
        int headerLength,
        int compressionType,
        String backingFile,
        String backingFormat,
        String dataFile,
        Map<Integer, String> featureNames,
        List<Extension> unknownExtensions) {

    static final int MAGIC = 0x514649fb; // "QFI\xfb"
    static final int V2_HEADER_LENGTH = 72;
    static final int V3_HEADER_LENGTH = 104;
    /** qemu 7.2 writes the compression type byte and pads to 112. */
    static final int V3_WRITTEN_HEADER_LENGTH = 112;

    static final int MIN_CLUSTER_BITS = 9;
    static final int MAX_CLUSTER_BITS = 21;
    /** QEMU's implementation limits, which we share so that every image we accept, qemu accepts. */
    static final long MAX_L1_BYTES = 32L << 20;
    static final long MAX_REFTABLE_BYTES = 8L << 20;
    static final int MAX_SNAPSHOTS = 65536;
    static final int MAX_BACKING_NAME = 1023;

    // incompatible feature bits
    static final long INCOMPAT_DIRTY = 1L;
    static final long INCOMPAT_CORRUPT = 1L << 1;
    static final long INCOMPAT_DATA_FILE = 1L << 2;
    static final long INCOMPAT_COMPRESSION = 1L << 3;
    static final long INCOMPAT_EXTL2 = 1L << 4;
    static final long INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION
            | INCOMPAT_EXTL2;
    // compatible feature bits
    static final long COMPAT_LAZY_REFCOUNTS = 1L;
    // autoclear feature bits
    static final long AUTOCLEAR_BITMAPS = 1L;
    static final long AUTOCLEAR_DATA_FILE_RAW = 1L << 1;
    static final long AUTOCLEAR_KNOWN = AUTOCLEAR_DATA_FILE_RAW;

    // header extension types
    static final int EXT_END = 0;
    static final int EXT_BACKING_FORMAT = 0xe2792aca;
    static final int EXT_FEATURE_TABLE = 0x6803f857;
    static final int EXT_BITMAPS = 0x23852875;
    static final int EXT_CRYPTO = 0x0537be77;
    static final int EXT_DATA_FILE = 0x44415441;

    static final int COMPRESSION_ZLIB = 0;
    static final int COMPRESSION_ZSTD = 1;

    /** A header extension we do not interpret; kept so that a header rewrite preserves it. */
    record Extension(int type, byte[] data) {
    }

    int clusterSize() {
        return 1 << clusterBits;
    }

    boolean extendedL2() {
        return (incompatibleFeatures & INCOMPAT_EXTL2) != 0;
    }

    boolean dirty() {
        return (incompatibleFeatures & INCOMPAT_DIRTY) != 0;
    }

    boolean corrupt() {
        return (incompatibleFeatures & INCOMPAT_CORRUPT) != 0;
    }

    boolean lazyRefcounts() {
        return (compatibleFeatures & COMPAT_LAZY_REFCOUNTS) != 0;
    }

    int refcountBits() {
        return 1 << refcountOrder;
    }

    /** Guest clusters one L2 table maps. */
    int l2Entries() {
        return clusterSize() / (extendedL2() ? 16 : 8);
    }

    /** L1 entries needed to map {@code size} bytes with these cluster and L2 sizes. */
    static long l1EntriesFor(long size, int clusterBits, boolean extendedL2) {
        int l2Bits = clusterBits - (extendedL2 ? 4 : 3);
        int shift = clusterBits + l2Bits;
        return shift >= 63 ? (size > 0 ? 1 : 0) : ceilShift(size, shift);
    }

    static long ceilShift(long value, int shift) {
        return (value >>> shift) + ((value & ((1L << shift) - 1)) != 0 ? 1 : 0);
    }

    /** How many bytes of the first cluster {@link #parse} needs to see. */
    static int probeLength() {
        return V2_HEADER_LENGTH;
    }

    /**
     * Parses and validates the header from {@code first} (the first cluster, or as much of it as the
     * file has) against {@code fileSize}.
     */
    static Qcow2Header parse(ByteBuffer first, long fileSize) throws BlockException {
        return parse(first, fileSize, false);
    }

    /**
     * As {@link #parse(ByteBuffer, long)}; with {@code forCheck} (an open for check, qemu's
     * BDRV_O_CHECK) the refcount table may reach past the end of the file (check reads that part
     * as zeroes and reports it) and the snapshot table is left to {@link Qcow2Check}, which
     * reports an invalid offset and reads a table past the end as zeroes, as qemu-img check does.
     * Offsets whose sums overflow are refused either way.
     */
    static Qcow2Header parse(ByteBuffer first, long fileSize, boolean forCheck) throws BlockException {
        ByteBuffer b = first.duplicate().order(java.nio.ByteOrder.BIG_ENDIAN);
        int avail = b.remaining();
        if (avail < V2_HEADER_LENGTH) {
            throw corrupt("Image is truncated: the qcow2 header needs " + V2_HEADER_LENGTH + " bytes, the file has "
                    + avail);
        }
        int base = b.position();
        if (b.getInt(base) != MAGIC) {
            throw BlockException.invalid("Image is not in qcow2 format");
        }
        int version = b.getInt(base + 4);
        if (version != 2 && version != 3) {
            throw new BlockException(Reason.UNSUPPORTED, "Unsupported qcow2 version " + Integer.toUnsignedString(version));
        }
        long backingFileOffset = b.getLong(base + 8);
        long backingFileSize = Integer.toUnsignedLong(b.getInt(base + 16));
        long clusterBitsRaw = Integer.toUnsignedLong(b.getInt(base + 20));
        if (clusterBitsRaw < MIN_CLUSTER_BITS || clusterBitsRaw > MAX_CLUSTER_BITS) {
            throw corrupt("Unsupported cluster size: 2^" + clusterBitsRaw + " (cluster_bits must be "
                    + MIN_CLUSTER_BITS + " to " + MAX_CLUSTER_BITS + ")");
        }
        int clusterBits = (int) clusterBitsRaw;
        long clusterSize = 1L << clusterBits;
        long size = b.getLong(base + 24);
        if (size < 0) {
            throw corrupt("Virtual size " + Long.toUnsignedString(size) + " is too large");
        }
        long cryptMethod = Integer.toUnsignedLong(b.getInt(base + 32));
        long l1Size = Integer.toUnsignedLong(b.getInt(base + 36));
        long l1TableOffset = b.getLong(base + 40);
        long refcountTableOffset = b.getLong(base + 48);
        long refcountTableClusters = Integer.toUnsignedLong(b.getInt(base + 56));
        long nbSnapshots = Integer.toUnsignedLong(b.getInt(base + 60));
        long snapshotsOffset = b.getLong(base + 64);

        long incompatible = 0;
        long compatible = 0;
        long autoclear = 0;
        int refcountOrder = 4;
        long headerLength = V2_HEADER_LENGTH;
        int compressionType = COMPRESSION_ZLIB;
        if (version >= 3) {
            if (avail < V3_HEADER_LENGTH) {
                throw corrupt("Image is truncated: a version 3 header needs " + V3_HEADER_LENGTH + " bytes, the file has "
                        + avail);
            }
            incompatible = b.getLong(base + 72);
            compatible = b.getLong(base + 80);
            autoclear = b.getLong(base + 88);
            long order = Integer.toUnsignedLong(b.getInt(base + 96));
            if (order > 6) {
                throw corrupt("Reference count entry width too large: refcount_order " + order + " (at most 6)");
            }
            refcountOrder = (int) order;
            headerLength = Integer.toUnsignedLong(b.getInt(base + 100));
            if (headerLength < V3_HEADER_LENGTH) {
                throw corrupt("qcow2 header too short: header_length " + headerLength + " (at least "
                        + V3_HEADER_LENGTH + ")" + (headerLength == 0 ? "; the image may be truncated" : ""));
            }
            if (headerLength % 8 != 0) {
                throw corrupt("qcow2 header_length " + headerLength + " is not a multiple of 8");
            }
            if (headerLength > clusterSize) {
                throw corrupt("qcow2 header exceeds cluster size: header_length " + headerLength);
            }
            if (headerLength > avail) {
                throw corrupt("Image is truncated: header_length " + headerLength + " but the file has " + avail
                        + " bytes");
            }
            if (headerLength > 104) {
                compressionType = Byte.toUnsignedInt(b.get(base + 104));
            }
        }
        Map<Integer, String> featureNames = new LinkedHashMap<>();
        String backingFormat = null;
        String dataFile = null;
        List<Extension> unknown = new ArrayList<>();

        // Header extensions run from header_length to the backing file name (or the cluster end).
        long extEnd = Math.min(clusterSize, avail);
        if (backingFileOffset != 0 && backingFileOffset < extEnd) {
            extEnd = backingFileOffset;
        }
        long pos = headerLength;
        while (pos + 8 <= extEnd) {
            int type = b.getInt(base + (int) pos);
            long len = Integer.toUnsignedLong(b.getInt(base + (int) pos + 4));
            pos += 8;
            if (type == EXT_END) {
                break;
            }
            if (len > extEnd - pos) {
                throw corrupt("Header extension 0x" + Integer.toHexString(type) + " of " + len
                        + " bytes runs past the header area");
            }
            byte[] data = new byte[(int) len];
            b.get(base + (int) pos, data);
            switch (type) {
                case EXT_BACKING_FORMAT -> {
                    if (len > 1023) {
                        throw corrupt("Backing format name is too long (" + len + " bytes)");
                    }
                    backingFormat = new String(data, StandardCharsets.UTF_8);
                }
                case EXT_DATA_FILE -> dataFile = new String(data, StandardCharsets.UTF_8);
                case EXT_FEATURE_TABLE -> {
                    for (int i = 0; i + 48 <= data.length; i += 48) {
                        int kind = Byte.toUnsignedInt(data[i]);
                        int bit = Byte.toUnsignedInt(data[i + 1]);
                        int n = 0;
                        while (n < 46 && data[i + 2 + n] != 0) {
                            n++;
                        }
                        if (bit < 64 && kind <= 2) {
                            featureNames.put(kind * 64 + bit, new String(data, i + 2, n, StandardCharsets.UTF_8));
                        }
                    }
                    unknown.add(new Extension(type, data)); // rewritten as-is
                }
                default -> unknown.add(new Extension(type, data));
            }
            pos += (len + 7) & ~7L;
        }

        long unknownIncompat = incompatible & ~INCOMPAT_KNOWN;
        if (unknownIncompat != 0) {
            int bit = Long.numberOfTrailingZeros(unknownIncompat);
            String name = featureNames.get(bit);
            throw new BlockException(Reason.UNSUPPORTED, "Unsupported qcow2 feature(s): incompatible feature bit "
                    + bit + (name != null ? " (" + name + ")" : "") + " is set; this driver does not know it");
        }
        if ((incompatible & INCOMPAT_COMPRESSION) != 0) {
            if (compressionType == COMPRESSION_ZLIB) {
                throw corrupt("Compression type bit is set but compression_type is zlib (0)");
            }
        } else if (compressionType != COMPRESSION_ZLIB) {
            throw corrupt("compression_type " + compressionType + " is set without the compression type bit");
        }
        if (compressionType > COMPRESSION_ZSTD) {
            throw new BlockException(Reason.UNSUPPORTED, "Unknown compression type " + compressionType);
        }
        if ((incompatible & INCOMPAT_EXTL2) != 0 && clusterBits < 14) {
            throw corrupt("Extended L2 entries need clusters of at least 16 KiB (cluster_bits " + clusterBits + ")");
        }
        if (cryptMethod != 0) {
            throw new BlockException(Reason.UNSUPPORTED, "Encrypted qcow2 images (crypt_method " + cryptMethod
                    + ") are not supported: no crypto backend is installed");
        }

        // L1 table: big enough for the virtual size, inside QEMU's limit and inside the file.
        boolean extL2 = (incompatible & INCOMPAT_EXTL2) != 0;
        long needL1 = l1EntriesFor(size, clusterBits, extL2);
        if (l1Size * 8 > MAX_L1_BYTES) {
            throw corrupt("Active L1 table too large: " + l1Size + " entries (at most " + MAX_L1_BYTES / 8 + ")");
        }
        if (l1Size < needL1) {
            throw corrupt("L1 table is too small: " + l1Size + " entries cannot map a virtual size of " + size
                    + " bytes (" + needL1 + " needed)");
        }
        if (l1Size > 0) {
            checkTable("L1 table", l1TableOffset, l1Size * 8, clusterSize, fileSize);
        }
        // Refcount table. An open for check takes, as qemu's, a table that reaches past the end of
        // the file (read as zeroes there) and an empty one (every refcount reads 0): check reports
        // them and -r all rebuilds.
        if (refcountTableClusters > MAX_REFTABLE_BYTES / clusterSize) {
            throw corrupt("Reference count table too large: " + refcountTableClusters + " clusters");
        }
        if (!forCheck && (refcountTableOffset == 0 || refcountTableClusters == 0)) {
            throw corrupt("Invalid reference count table: offset " + refcountTableOffset + ", " + refcountTableClusters
                    + " clusters");
        } else if (!forCheck) {
            checkTable("Reference count table", refcountTableOffset, refcountTableClusters * clusterSize, clusterSize,
                    fileSize);
        } else if (refcountTableClusters > 0) {
            checkTableOffset("Reference count table", refcountTableOffset, refcountTableClusters * clusterSize,
                    clusterSize);
        } else if (!validTableOffset(refcountTableOffset, 0, clusterSize)) {
            throw corrupt("Reference count table offset " + refcountTableOffset + " is invalid (not cluster aligned)");
        }
        // Snapshot table: its size is only known after parsing; check the start here.
        if (nbSnapshots > MAX_SNAPSHOTS) {
            throw corrupt("Too many snapshots: " + nbSnapshots + " (at most " + MAX_SNAPSHOTS + ")");
        }
        // (an open for check leaves the snapshot table to Qcow2Check, which reports it as qemu-img
        // check does, except at offset 0: qemu reads the header as snapshot entries there)
        if (forCheck && nbSnapshots > 0 && snapshotsOffset == 0) {
            throw corrupt("Snapshot table offset 0 is invalid (" + nbSnapshots + " snapshots)");
        }
        if (!forCheck && nbSnapshots > 0) {
            checkTable("Snapshot table", snapshotsOffset, 40L * nbSnapshots, clusterSize, fileSize);
        } else if (!forCheck && !validTableOffset(snapshotsOffset, 0, clusterSize)) {
            // as qemu: an empty table needs no offset, but a set one must still be a valid one
            throw corrupt("Snapshot table offset " + snapshotsOffset + " is invalid (must be a multiple of the"
                    + " cluster size, also when there are no snapshots)");
        }
        // Backing file name: inside the first cluster.
        String backingFile = null;
        if (backingFileOffset != 0) {
            if (backingFileSize > MAX_BACKING_NAME) {
                throw corrupt("Backing file name too long: " + backingFileSize + " bytes (at most " + MAX_BACKING_NAME
                        + ")");
            }
            if (backingFileOffset < 0 || backingFileOffset > clusterSize - backingFileSize
                    || backingFileOffset + backingFileSize > avail) {
                throw corrupt("Invalid backing file offset " + backingFileOffset + " (the name must lie inside the "
                        + "first cluster)");
            }
            byte[] name = new byte[(int) backingFileSize];
            b.get(base + (int) backingFileOffset, name);
            backingFile = new String(name, StandardCharsets.UTF_8);
        }
        if ((incompatible & INCOMPAT_DATA_FILE) == 0 && dataFile != null) {
            throw corrupt("data-file name extension present without the external data file bit");
        }
        return new Qcow2Header(version, backingFileOffset, (int) backingFileSize, clusterBits, size, (int) cryptMethod,
                (int) l1Size, l1TableOffset, refcountTableOffset, (int) refcountTableClusters, (int) nbSnapshots,
                snapshotsOffset, incompatible, compatible, autoclear, refcountOrder, (int) headerLength,
                compressionType, backingFile, backingFormat, dataFile, Map.copyOf(featureNames), List.copyOf(unknown));
    }

    /** A table must be cluster aligned and lie inside the file; every sum is overflow checked. */
    static void checkTable(String what, long offset, long bytes, long clusterSize, long fileSize)
            throws BlockException {
        if (offset <= 0 || (offset & (clusterSize - 1)) != 0) {
            throw corrupt(what + " offset " + offset + " is invalid (must be a non-zero multiple of the cluster size)");
        }
        if (bytes < 0 || offset > fileSize || bytes > fileSize - offset) {
            throw corrupt(what + " at offset " + offset + " (" + bytes + " bytes) lies beyond the end of the file ("
                    + fileSize + " bytes)");
        }
    }

    /**
     * The part of {@link #checkTable} that does not depend on the file's size: the offset is a
     * non-zero multiple of the cluster size and offset + bytes does not overflow.
     */
    static void checkTableOffset(String what, long offset, long bytes, long clusterSize) throws BlockException {
        if (offset <= 0 || (offset & (clusterSize - 1)) != 0) {
            throw corrupt(what + " offset " + offset + " is invalid (must be a non-zero multiple of the cluster size)");
        }
        if (!validTableOffset(offset, bytes, clusterSize)) {
            throw corrupt(what + " offset " + offset + " is invalid (" + bytes + " bytes from there overflow)");
        }
    }

    /**
     * qemu's validity of a table's offset, without the file's size: cluster aligned, not negative,
     * and offset + bytes at most 2^63 - 1 (0 is valid: no table).
     */
    static boolean validTableOffset(long offset, long bytes, long clusterSize) {
        return offset >= 0 && (offset & (clusterSize - 1)) == 0 && bytes >= 0 && bytes <= Long.MAX_VALUE - offset;
    }

    static BlockException corrupt(String message) {
        return BlockException.corrupt("qcow2: " + message);
    }

    /**
     * Serializes a fresh header for {@code create}: fixed fields, version 3 fields, the backing format
     * and feature name extensions, then the backing file name, all inside the first cluster.
     */
    byte[] serialize() throws BlockException {
        int clusterSize = clusterSize();
        ByteBuffer b = ByteBuffer.allocate(clusterSize);
        int hdrLen = version >= 3 ? V3_WRITTEN_HEADER_LENGTH : V2_HEADER_LENGTH;
        b.putInt(MAGIC).putInt(version).putLong(0).putInt(0).putInt(clusterBits).putLong(size).putInt(cryptMethod)
                .putInt(l1Size).putLong(l1TableOffset).putLong(refcountTableOffset).putInt(refcountTableClusters)
                .putInt(nbSnapshots).putLong(snapshotsOffset);
        if (version >= 3) {
            b.putLong(incompatibleFeatures).putLong(compatibleFeatures).putLong(autoclearFeatures).putInt(refcountOrder)
                    .putInt(hdrLen).put((byte) compressionType);
        }
        b.position(hdrLen);
        if (backingFormat != null) {
            putExtension(b, EXT_BACKING_FORMAT, backingFormat.getBytes(StandardCharsets.UTF_8));
        }
        if (dataFile != null) {
            putExtension(b, EXT_DATA_FILE, dataFile.getBytes(StandardCharsets.UTF_8));
        }
        for (Extension e : unknownExtensions) {
            putExtension(b, e.type(), e.data());
        }
        if (b.remaining() < 8) {
            throw BlockException.invalid("qcow2 header extensions do not fit in one cluster");
        }
        b.putInt(EXT_END).putInt(0);
        if (backingFile != null) {
            byte[] name = backingFile.getBytes(StandardCharsets.UTF_8);
            if (name.length > MAX_BACKING_NAME || name.length > b.remaining()) {
                throw BlockException.invalid("Backing file name too long");
            }
            int at = b.position();
            b.put(name);
            b.putLong(8, at).putInt(16, name.length);
        }
        byte[] out = new byte[b.position()];
        b.get(0, out);
        return out;
    }

    private static void putExtension(ByteBuffer b, int type, byte[] data) throws BlockException {
        int padded = (data.length + 7) & ~7;
        if (b.remaining() < 8 + padded + 8) {
            throw BlockException.invalid("qcow2 header extensions do not fit in one cluster");
        }
        b.putInt(type).putInt(data.length).put(data);
        b.position(b.position() + padded - data.length);
    }

    /** The feature name table qemu writes into version 3 images, so older tools can name our bits. */
    static Extension standardFeatureTable() {
        String[][] rows = {
            {"0", "0", "dirty bit"}, {"0", "1", "corrupt bit"}, {"0", "2", "external data file"},
            {"0", "3", "compression type"}, {"0", "4", "extended L2 entries"},
            {"1", "0", "lazy refcounts"}, {"2", "0", "bitmaps"}, {"2", "1", "raw external data"}};
        byte[] data = new byte[rows.length * 48];
        for (int i = 0; i < rows.length; i++) {
            data[i * 48] = (byte) Integer.parseInt(rows[i][0]);
            data[i * 48 + 1] = (byte) Integer.parseInt(rows[i][1]);
            byte[] name = rows[i][2].getBytes(StandardCharsets.US_ASCII);
            System.arraycopy(name, 0, data, i * 48 + 2, name.length);
        }
        return new Extension(EXT_FEATURE_TABLE, data);
    }

    /**
     * A new first cluster for an existing image (amend, rebase): fixed fields from the current
     * state, the additional version 3 fields the old header had ({@code oldHeader}, kept as they
     * were), the extensions we keep (backing format, data file, unknown ones, the feature table
     * for version 3), then the backing file name.
     */
    static ByteBuffer rewrite(Qcow2Header h, byte[] oldHeader, int version, String backingFile, String backingFormat,
            long compatible, long size, int l1Size, long l1Offset, long reftableOffset, int reftableClusters)
            throws BlockException {
        int clusterSize = h.clusterSize();
        int hdrLen = version < 3 ? V2_HEADER_LENGTH : h.version() >= 3 ? h.headerLength() : V3_WRITTEN_HEADER_LENGTH;
        ByteBuffer b = ByteBuffer.allocate(clusterSize);
        if (h.version() >= 3 && version >= 3) {
            b.put(oldHeader, 0, hdrLen); // keeps additional fields we do not know
        }
        b.putInt(0, MAGIC).putInt(4, version).putLong(8, 0).putInt(16, 0).putInt(20, h.clusterBits())
                .putLong(24, size).putInt(32, 0).putInt(36, l1Size).putLong(40, l1Offset)
                .putLong(48, reftableOffset).putInt(56, reftableClusters)
                .putInt(60, h.nbSnapshots()).putLong(64, h.snapshotsOffset());
        if (version >= 3) {
            b.putLong(72, h.incompatibleFeatures()).putLong(80, compatible).putLong(88, h.autoclearFeatures())
                    .putInt(96, h.refcountOrder()).putInt(100, hdrLen);
            if (hdrLen > 104) {
                b.put(104, (byte) h.compressionType());
            }
        }
        b.position(hdrLen);
        List<Extension> keep = new ArrayList<>();
        if (backingFormat != null) {
            keep.add(new Extension(EXT_BACKING_FORMAT, backingFormat.getBytes(StandardCharsets.UTF_8)));
        }
        if (h.dataFile() != null) {
            keep.add(new Extension(EXT_DATA_FILE, h.dataFile().getBytes(StandardCharsets.UTF_8)));
        }
        boolean hasFeatureTable = false;
        for (Extension e : h.unknownExtensions()) {
            if (e.type() == EXT_FEATURE_TABLE) {
                hasFeatureTable = true;
                if (version < 3) {
                    continue;
                }
            }
            keep.add(e);
        }
        if (version >= 3 && !hasFeatureTable) {
            keep.add(standardFeatureTable());
        }
        // The feature name table is only informative: it goes when the first cluster is too small
        // for it and the extensions that matter (small clusters with bitmaps, as qemu does).
        int room = clusterSize - hdrLen - 8 - (backingFile == null ? 0
                : backingFile.getBytes(StandardCharsets.UTF_8).length);
        int need = 0;
        for (Extension e : keep) {
            need += 8 + ((e.data().length + 7) & ~7);
        }
        if (need > room) {
            keep.removeIf(e -> e.type() == EXT_FEATURE_TABLE);
        }
        for (Extension e : keep) {
            putExtension(b, e.type(), e.data());
        }
        b.putInt(EXT_END).putInt(0);
        if (backingFile != null) {
            byte[] name = backingFile.getBytes(StandardCharsets.UTF_8);
            if (name.length > MAX_BACKING_NAME || name.length > b.remaining()) {
                throw BlockException.invalid("Backing file name too long");
            }
            b.putLong(8, b.position()).putInt(16, name.length);
            b.put(name);
        }
        return b.flip();
    }
}
