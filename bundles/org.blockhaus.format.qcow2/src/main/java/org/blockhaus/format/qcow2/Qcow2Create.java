package org.blockhaus.format.qcow2;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.Options;
import org.blockhaus.api.Sizes;
import org.blockhaus.api.spi.CreateContext;

/**
 * qemu-img create for qcow2: checks the options the way qemu does, then lays out a fresh image as
 * qemu 7.2 does (header, refcount table, refcount blocks, L1 table, in that order from cluster 0),
 * optionally preallocating metadata.
 */
final class Qcow2Create {
    private Qcow2Create() {
    }

    static void create(CreateContext ctx) throws BlockException {
        Options o = ctx.options();
        if (o.has("encryption") && o.getBool("encryption", false) || o.hasTree("encrypt")) {
            throw new BlockException(Reason.UNSUPPORTED, "Encrypted qcow2 images cannot be created yet: no crypto"
                    + " backend is installed (encryption/encrypt.* need one)");
        }
        int version = switch (o.get("compat", "1.1")) {
            case "0.10", "v2" -> 2;
            case "1.1", "v3" -> 3;
            // qemu-img names the option by its QAPI name here
            default -> throw BlockException.invalid("Parameter 'version' does not accept value '" + o.get("compat")
                    + "'");
        };
        long clusterSize = o.has("cluster_size") ? Sizes.parse(o.get("cluster_size")) : 65536;
        if (clusterSize < 512 || clusterSize > (2 << 20) || Long.bitCount(clusterSize) != 1) {
            throw BlockException.invalid("Cluster size must be a power of two between 512 and 2048k");
        }
        int clusterBits = Long.numberOfTrailingZeros(clusterSize);
        long refcountBits = o.getLong("refcount_bits", 16);
        if (refcountBits < 1 || refcountBits > 64 || Long.bitCount(refcountBits) != 1) {
            throw BlockException.invalid("Refcount width must be a power of two and may not exceed 64 bits");
        }
        if (version < 3 && refcountBits != 16) {
            throw BlockException.invalid("Different refcount widths than 16 bits require compatibility level 1.1 or"
                    + " above (use version=v3 or greater)");
        }
        boolean lazy = o.getBool("lazy_refcounts", false);
        if (version < 3 && lazy) {
            throw BlockException.invalid("Lazy refcounts only supported with compatibility level 1.1 and above (use"
                    + " version=v3 or greater)");
        }
        boolean extL2 = o.getBool("extended_l2", false);
        if (extL2 && version < 3) {
            throw BlockException.invalid("Extended L2 entries are only supported with compatibility level 1.1 and"
                    + " above (use version=v3 or greater)");
        }
        if (extL2 && clusterSize < 16384) {
            throw BlockException.invalid("Extended L2 entries are only supported with cluster sizes of at least"
                    + " 16384 bytes");
        }
        String ct = o.get("compression_type", "zlib");
        int compressionType = switch (ct) {
            case "zlib" -> Qcow2Header.COMPRESSION_ZLIB;
            case "zstd" -> Qcow2Header.COMPRESSION_ZSTD;
            default -> throw BlockException.invalid("Parameter 'compression-type' does not accept value '" + ct + "'");
        };
        if (compressionType != Qcow2Header.COMPRESSION_ZLIB && version < 3) {
            throw BlockException.invalid("Non-zlib compression type is only supported with compatibility level 1.1"
                    + " and above (use version=v3 or greater)");
        }
        String prealloc = o.get("preallocation", "off");
        switch (prealloc) {
            case "off", "metadata", "falloc", "full" -> { }
            default -> throw BlockException.invalid("Parameter 'preallocation' does not accept value '" + prealloc
                    + "'");
        }
        String backingFile = o.get("backing_file");
        String backingFmt = o.get("backing_fmt");
        String dataFile = o.get("data_file");
        boolean dataFileRaw = o.getBool("data_file_raw", false);
        if (dataFileRaw && dataFile == null) {
            throw BlockException.invalid("data-file-raw requires data-file");
        }
        if (dataFile != null && version < 3) {
            throw BlockException.invalid("External data files are only supported with compatibility level 1.1 and"
                    + " above (use version=v3 or greater)");
        }
        if (dataFileRaw && backingFile != null) {
            throw BlockException.invalid("Backing file and data-file-raw cannot be used at the same time");
        }
        if (backingFmt != null && backingFile == null) {
            throw BlockException.invalid("Backing format cannot be used without backing file");
        }
        if (backingFile != null && !ctx.unsafeBacking()) {
            // Opening it proves it exists and is readable with the named format (not with -u,
            // where it may not exist yet).
            try (BlockNode b = ctx.openBacking(backingFile, backingFmt)) {
                if (backingFmt == null) {
                    // qemu-img 7.2 no longer records a probed format: the user must name it (-F)
                    String detected = b instanceof org.blockhaus.api.Image img ? img.driverName() : "unknown";
                    throw BlockException.invalid("Backing file specified without backing format\nDetected format of "
                            + detected + ".");
                }
            }
        }
        long size = (ctx.size() + 511) & ~511L;
        long l1Entries = Qcow2Header.l1EntriesFor(size, clusterBits, extL2);
        if (l1Entries * 8 > Qcow2Header.MAX_L1_BYTES) {
            throw BlockException.invalid("The image size is too large for file format 'qcow2' (try using a larger"
                    + " cluster size)");
        }

        // Layout: header, refcount table (R clusters), refcount blocks (B), L1 table (L).
        long c = clusterSize;
        long l1Clusters = Qcow2Header.ceilShift(l1Entries * 8, clusterBits);
        long blockEntries = c * 8 / refcountBits;
        long r = 1;
        long b = 1;
        while (true) {
            long total = 1 + r + b + l1Clusters;
            long needB = (total + blockEntries - 1) / blockEntries;
            long needR = (needB * 8 + c - 1) / c;
            if (needB <= b && needR <= r) {
                break;
            }
            b = Math.max(b, needB);
            r = Math.max(r, needR);
        }
        long total = 1 + r + b + l1Clusters;
        long reftableOffset = c;
        long blocksOffset = c * (1 + r);
        long l1Offset = l1Entries == 0 ? 0 : c * (1 + r + b);

        long incompat = 0;
        if (compressionType != Qcow2Header.COMPRESSION_ZLIB) {
            incompat |= Qcow2Header.INCOMPAT_COMPRESSION;
        }
        if (extL2) {
            incompat |= Qcow2Header.INCOMPAT_EXTL2;
        }
        if (dataFile != null) {
            incompat |= Qcow2Header.INCOMPAT_DATA_FILE;
        }
        List<Qcow2Header.Extension> exts = new ArrayList<>();
        if (version >= 3) {
            exts.add(Qcow2Header.standardFeatureTable());
        }
        Qcow2Header h = new Qcow2Header(version, 0, 0, clusterBits, size, 0, (int) l1Entries, l1Offset,
                reftableOffset, (int) r, 0, 0, incompat, lazy ? Qcow2Header.COMPAT_LAZY_REFCOUNTS : 0,
                dataFileRaw ? Qcow2Header.AUTOCLEAR_DATA_FILE_RAW : 0,
                Long.numberOfTrailingZeros(refcountBits), version >= 3 ? Qcow2Header.V3_WRITTEN_HEADER_LENGTH : 72,
                compressionType, backingFile, backingFile == null ? null : backingFmt, dataFile, java.util.Map.of(),
                exts);
        byte[] hdr = h.serialize();

        BlockNode node = ctx.createFile(Options.empty());
        HostFile f = new HostFile(node);
        f.ensureSize(l1Offset == 0 ? c * (1 + r + b) : l1Offset + l1Entries * 8);
        // Refcount blocks: one reference for each metadata cluster.
        ByteBuffer blocks = ByteBuffer.allocate((int) (b * c));
        RefcountWriter.fill(blocks, (int) refcountBits, total);
        f.write(blocksOffset, blocks.flip());
        ByteBuffer table = ByteBuffer.allocate((int) (r * c));
        for (long i = 0; i < b; i++) {
            table.putLong(blocksOffset + i * c);
        }
        table.clear();
        f.write(reftableOffset, table);
        // The L1 table is written (as zeroes), not left a hole, and the header below fills its
        // whole cluster: qemu-img writes both, so the file occupies the same blocks and `info`
        // reports the same disk size for a new image (CreateLayoutTest).
        ByteBuffer zeroes = ByteBuffer.allocate((int) Math.min(l1Entries * 8, 1 << 20));
        for (long at = 0; at < l1Entries * 8; at += zeroes.capacity()) {
            f.write(l1Offset + at, zeroes.clear().limit((int) Math.min(zeroes.capacity(), l1Entries * 8 - at)));
        }
        f.flush();
        f.write(0, java.util.Arrays.copyOf(hdr, (int) Math.max(hdr.length, c))); // last: until here the file is not a qcow2 image
        f.flush();
        HostFile data = null;
        if (dataFile != null) {
            // as qemu-img: the data file is created at the virtual size by its protocol, with the
            // preallocation asked for (or its first block allocated, as QEMU's file-posix does);
            // a raw one is mapped 1:1 from the start
            boolean dataPrealloc = prealloc.equals("falloc") || prealloc.equals("full");
            data = new HostFile(ctx.createFile(dataFile, Options.of("size", Long.toString(size))
                    .with("preallocation", dataPrealloc ? prealloc : "off")));
            data.ensureSize(size);
            if (dataFileRaw && prealloc.equals("off")) {
                prealloc = "metadata";
            }
        }
        if (!prealloc.equals("off") && size > 0) {
            Qcow2Header written = Qcow2Header.parse(f.read(0, (int) Math.min(c, f.size()), "qcow2 header"), f.size());
            Qcow2Node q = new Qcow2Node(f, data, written, null, false, 32L << 20);
            q.preallocate(org.blockhaus.api.Preallocation.parse(prealloc));
            q.close();
        }
    }

    /** Writes refcount 1 for the first {@code count} clusters into fresh refcount blocks. */
    static final class RefcountWriter {
        private RefcountWriter() {
        }

        static void fill(ByteBuffer blocks, int bits, long count) {
            for (long i = 0; i < count; i++) {
                switch (bits) {
                    case 1, 2, 4 -> {
                        long bitPos = i * bits;
                        int at = (int) (bitPos >>> 3);
                        blocks.put(at, (byte) (blocks.get(at) | (1 << (bitPos & 7))));
                    }
                    case 8 -> blocks.put((int) i, (byte) 1);
                    case 16 -> blocks.putShort((int) (2 * i), (short) 1);
                    case 32 -> blocks.putInt((int) (4 * i), 1);
                    default -> blocks.putLong((int) (8 * i), 1);
                }
            }
            blocks.position(blocks.capacity());
        }
    }
}
