package org.blockhaus.format.qcow2;

import java.util.zip.DataFormatException;
import java.util.zip.Deflater;
import java.util.zip.Inflater;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;

/**
 * Compressed clusters: the descriptor layout of the spec ("Compressed Clusters Descriptor") and
 * decompression. qemu's "zlib" type is raw deflate (no zlib header); zstd goes through {@link Zstd}. Output is capped at one
 * cluster, so a compression bomb cannot grow past it.
 */
final class Compression {
    private final int clusterBits;
    private final int compressionType;
    /** Bit where the additional-sectors field starts: 62 - (cluster_bits - 8). */
    private final int sizeShift;
    private final long sizeMask;
    private final long offsetMask;

    Compression(int clusterBits, int compressionType) {
        this.clusterBits = clusterBits;
        this.compressionType = compressionType;
        this.sizeShift = 62 - (clusterBits - 8);
        this.sizeMask = (1L << (clusterBits - 8)) - 1;
        this.offsetMask = (1L << sizeShift) - 1;
    }

    /** Host byte offset where the compressed data starts. */
    long hostOffset(long l2Entry) {
        return l2Entry & offsetMask;
    }

    /** 512-byte sectors the compressed data spans, counting the one holding the start. */
    long sectors(long l2Entry) {
        return ((l2Entry >>> sizeShift) & sizeMask) + 1;
    }

    /** Bytes to read: from the start to the end of the last sector. */
    int compressedLength(long l2Entry) {
        return (int) (sectors(l2Entry) * 512 - (hostOffset(l2Entry) & 511));
    }

    /** The host range refcounts account to this cluster: whole sectors from the start's sector. */
    long refStart(long l2Entry) {
        return hostOffset(l2Entry) & ~511L;
    }

    long refLength(long l2Entry) {
        return sectors(l2Entry) * 512;
    }

    /** Inflates {@code src} into exactly one cluster, {@code dst}. */
    void decompress(byte[] src, int srcLen, byte[] dst, long guestOffset) throws BlockException {
        if (compressionType == Qcow2Header.COMPRESSION_ZSTD) {
            Zstd.decompress(src, srcLen, dst, guestOffset);
            return;
        }
        Inflater inf = new Inflater(true);
        try {
            inf.setInput(src, 0, srcLen);
            int n = 0;
            while (n < dst.length) {
                int k = inf.inflate(dst, n, dst.length - n);
                n += k;
                if (k == 0 && (inf.finished() || inf.needsInput() || inf.needsDictionary())) {
                    break;
                }
            }
            if (n < dst.length) {
                throw Qcow2Header.corrupt("Compressed cluster at guest offset " + guestOffset
                        + " inflates to " + n + " bytes instead of " + dst.length);
            }
        } catch (DataFormatException e) {
            throw Qcow2Header.corrupt("Compressed cluster at guest offset " + guestOffset + " is not valid deflate"
                    + " data: " + e.getMessage());
        } finally {
            inf.end();
        }
    }

    /** Largest window qemu inflates with (windowBits 12): no match may reach further back. */
    private static final int QEMU_WINDOW = 4096;

    /**
     * Deflates one cluster; null when the result would not be smaller than the cluster (qemu then
     * stores it uncompressed). The input goes in 4 KiB pieces with a full flush after each, which
     * resets the match history, so no back reference exceeds qemu's 4 KiB inflate window.
     */
    byte[] compress(byte[] cluster, int len) throws BlockException {
        int limit = (1 << clusterBits) - 1;
        if (compressionType == Qcow2Header.COMPRESSION_ZSTD) {
            return Zstd.compress(cluster, len, limit);
        }
        ZlibNative z = ZlibNative.get();
        if (z != null) {
            return z.compress(cluster, len, limit); // qemu's exact deflate (see ZlibNative)
        }
        byte[] out = new byte[limit + 64];
        Deflater d = new Deflater(Deflater.DEFAULT_COMPRESSION, true);
        try {
            int n = 0;
            for (int at = 0; at < len; at += QEMU_WINDOW) {
                int piece = Math.min(QEMU_WINDOW, len - at);
                d.setInput(cluster, at, piece);
                if (at + piece < len) {
                    while (true) { // a full flush is complete once it leaves output space unused
                        int space = out.length - n;
                        if (space == 0) {
                            return null;
                        }
                        int k = d.deflate(out, n, space, Deflater.FULL_FLUSH);
                        n += k;
                        if (k < space) {
                            break;
                        }
                    }
                } else {
                    d.finish();
                    while (!d.finished()) {
                        if (n == out.length) {
                            return null;
                        }
                        n += d.deflate(out, n, out.length - n);
                    }
                }
            }
            return n > limit ? null : java.util.Arrays.copyOf(out, n);
        } finally {
            d.end();
        }
    }

    /** The L2 entry for compressed data of {@code len} bytes at host byte {@code offset}. */
    long descriptor(long offset, int len) throws BlockException {
        if (offset > offsetMask) {
            throw new BlockException(Reason.NO_SPACE, "qcow2: compressed data cannot be stored beyond offset "
                    + offsetMask);
        }
        long extraSectors = ((offset + len - 1) >>> 9) - (offset >>> 9);
        return Qcow2Node.OFLAG_COMPRESSED | (extraSectors << sizeShift) | offset;
    }

    int clusterBits() {
        return clusterBits;
    }
}
