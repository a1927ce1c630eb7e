package org.blockhaus.format.qcow2;

import java.util.zip.DataFormatException;
import java.util.zip.Inflater;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;

/**
 * Compressed clusters: the descriptor layout of the spec ("Compressed Clusters Descriptor") and
 * decompression. qemu's "zlib" type is raw deflate (no zlib header). Output is capped at one
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
        if (compressionType != Qcow2Header.COMPRESSION_ZLIB) {
            throw new BlockException(Reason.UNSUPPORTED, "qcow2: reading zstd-compressed clusters is not supported"
                    + " (cluster at guest offset " + guestOffset + ")");
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

    int clusterBits() {
        return clusterBits;
    }
}
