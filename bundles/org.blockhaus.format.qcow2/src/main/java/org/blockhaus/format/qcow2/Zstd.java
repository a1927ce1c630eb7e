package org.blockhaus.format.qcow2;

import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;

/**
 * zstd for compressed clusters (compression_type=zstd): the system's libzstd through FFM
 * ({@link ZstdNative}) where it exists, else the embedded pure-Java aircompressor. Kept apart so
 * that these classes load only when an image really uses zstd.
 */
final class Zstd {
    private Zstd() {
    }

    /**
     * Decompresses one cluster. The stored bytes run to a sector boundary, so the frame may be
     * followed by padding or by another cluster's data: find the frame's end first.
     */
    static void decompress(byte[] src, int srcLen, byte[] dst, long guestOffset) throws BlockException {
        int frame = frameLength(src, srcLen);
        if (frame < 0) {
            throw Qcow2Header.corrupt("zstd-compressed cluster at guest offset " + guestOffset
                    + " does not hold a complete zstd frame");
        }
        ZstdNative z = ZstdNative.get();
        if (z != null) {
            int n = z.decompress(src, frame, dst);
            if (n < 0) {
                throw Qcow2Header.corrupt("zstd-compressed cluster at guest offset " + guestOffset + " is not valid");
            }
            if (n < dst.length) {
                throw Qcow2Header.corrupt("zstd-compressed cluster at guest offset " + guestOffset
                        + " decompresses to " + n + " bytes instead of " + dst.length);
            }
            return;
        }
        try {
            int n = new io.airlift.compress.zstd.ZstdDecompressor().decompress(src, 0, frame, dst, 0, dst.length);
            if (n < dst.length) {
                throw Qcow2Header.corrupt("zstd-compressed cluster at guest offset " + guestOffset
                        + " decompresses to " + n + " bytes instead of " + dst.length);
            }
        } catch (RuntimeException e) {
            throw Qcow2Header.corrupt("zstd-compressed cluster at guest offset " + guestOffset + " is not valid: "
                    + e.getMessage());
        } catch (LinkageError e) {
            throw new BlockException(Reason.UNSUPPORTED, "qcow2: the zstd decoder cannot run here: " + e);
        }
    }

    /** Length of the zstd frame at the start of {@code b} (RFC 8878, section 3.1.1), or -1. */
    static int frameLength(byte[] b, int len) {
        if (len < 6 || (b[0] & 0xff) != 0x28 || (b[1] & 0xff) != 0xb5 || (b[2] & 0xff) != 0x2f
                || (b[3] & 0xff) != 0xfd) {
            return -1;
        }
        int fhd = b[4] & 0xff;
        int fcsFlag = fhd >>> 6;
        boolean singleSegment = (fhd & 0x20) != 0;
        boolean checksum = (fhd & 0x04) != 0;
        int dictIdFlag = fhd & 0x03;
        int pos = 5 + (singleSegment ? 0 : 1) + new int[] {0, 1, 2, 4}[dictIdFlag]
                + (fcsFlag == 0 ? (singleSegment ? 1 : 0) : 1 << fcsFlag);
        while (true) {
            if (pos + 3 > len) {
                return -1;
            }
            int header = (b[pos] & 0xff) | (b[pos + 1] & 0xff) << 8 | (b[pos + 2] & 0xff) << 16;
            pos += 3;
            int type = (header >>> 1) & 3;
            int size = header >>> 3;
            pos += type == 1 ? 1 : size; // RLE blocks store one byte
            if (type == 3 || pos > len) {
                return -1;
            }
            if ((header & 1) != 0) {
                break;
            }
        }
        pos += checksum ? 4 : 0;
        return pos <= len ? pos : -1;
    }

    /** One cluster as a zstd frame, or null if it does not fit in {@code limit} bytes. */
    static byte[] compress(byte[] cluster, int len, int limit) throws BlockException {
        ZstdNative z = ZstdNative.get();
        if (z != null) {
            byte[] out = new byte[limit];
            int n = z.compress(cluster, len, out);
            return n < 0 ? null : java.util.Arrays.copyOf(out, n);
        }
        try {
            io.airlift.compress.zstd.ZstdCompressor c = new io.airlift.compress.zstd.ZstdCompressor();
            byte[] out = new byte[c.maxCompressedLength(len)];
            int n = c.compress(cluster, 0, len, out, 0, out.length);
            return n > limit ? null : java.util.Arrays.copyOf(out, n);
        } catch (LinkageError e) {
            throw new BlockException(Reason.UNSUPPORTED, "qcow2: the zstd encoder cannot run here: " + e);
        }
    }
}
