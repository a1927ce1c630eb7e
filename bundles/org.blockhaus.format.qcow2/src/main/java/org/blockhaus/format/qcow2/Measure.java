package org.blockhaus.format.qcow2;

import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.BlockStatus;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.api.Sizes;
import org.blockhaus.api.spi.MeasureResult;

/**
 * qemu-img measure for qcow2: the fully allocated size is every cluster plus the metadata that maps
 * and counts them; the required size leaves out the data clusters the source does not have.
 */
final class Measure {
    private Measure() {
    }

    static MeasureResult measure(Options o, long size, BlockNode source) throws BlockException {
        if (o.has("encryption") && o.getBool("encryption", false) || o.hasTree("encrypt")) {
            throw new BlockException(BlockException.Reason.UNSUPPORTED, "Measuring encrypted qcow2 images is not"
                    + " supported yet: no crypto backend is installed");
        }
        long clusterSize = o.has("cluster_size") ? Sizes.parse(o.get("cluster_size")) : 65536;
        if (clusterSize < 512 || clusterSize > (2 << 20) || Long.bitCount(clusterSize) != 1) {
            throw BlockException.invalid("Cluster size must be a power of two between 512 and 2048k");
        }
        long refcountBits = o.getLong("refcount_bits", 16);
        if (refcountBits < 1 || refcountBits > 64 || Long.bitCount(refcountBits) != 1) {
            throw BlockException.invalid("Refcount width must be a power of two and may not exceed 64 bits");
        }
        boolean extL2 = o.getBool("extended_l2", false);
        String prealloc = o.get("preallocation", "off");
        long sourceSize = source != null ? source.size() : size;
        long virtualSize = roundUp(sourceSize, clusterSize);
        long required = 0;
        if (source != null) {
            if (o.get("backing_file") != null) {
                required = virtualSize; // nothing known about what the backing file shares: assume all
            } else {
                long offset = 0;
                while (offset < sourceSize) {
                    BlockStatus s = statusAbove(source, offset, sourceSize - offset);
                    long n = s.length();
                    if (!s.isZero() && s.isData() && s.isAllocated()) {
                        n = roundUp(offset + n, clusterSize) - offset;
                        required += offset % clusterSize + n;
                    }
                    offset += n;
                }
            }
        }
        if (prealloc.equals("full") || prealloc.equals("falloc")) {
            required = virtualSize;
        }
        long full = preallocSize(virtualSize, clusterSize, Long.numberOfTrailingZeros(refcountBits), extL2);
        return new MeasureResult(full - virtualSize + required, full, bitmapsSize(source, sourceSize, clusterSize));
    }

    /**
     * Room the source's persistent bitmaps take when copied (convert --bitmaps), as qemu counts it:
     * per bitmap all its data clusters and its table, plus the directory.
     */
    private static long bitmapsSize(BlockNode source, long size, long clusterSize) throws BlockException {
        if (!(source instanceof Image img) || !(img.driverNode() instanceof org.blockhaus.api.spi.BitmapNode bn)) {
            return 0;
        }
        long total = 0;
        long directory = 0;
        for (org.blockhaus.api.spi.BitmapNode.Bitmap b : bn.bitmaps()) {
            long bits = (size + b.granularity() - 1) / b.granularity();
            long clusters = ((bits + 7) / 8 + clusterSize - 1) / clusterSize;
            total += clusters * clusterSize + roundUp(clusters * 8, clusterSize);
            directory += BitmapDirectory.align8(BitmapDirectory.ENTRY_HEADER_BYTES
                    + b.name().getBytes(java.nio.charset.StandardCharsets.UTF_8).length);
        }
        return total + roundUp(directory, clusterSize);
    }

    /** Block status through the backing chain, as qemu's bdrv_block_status_above answers it. */
    private static BlockStatus statusAbove(BlockNode node, long offset, long length) throws BlockException {
        BlockStatus s = node.blockStatus(offset, length);
        if (s.isAllocated()) {
            return s;
        }
        Image backing = node instanceof Image img ? img.backing() : null;
        if (backing == null || offset >= backing.size()) {
            return new BlockStatus(offset, s.length(), BlockStatus.ZERO, -1, null); // reads as zeroes
        }
        return statusAbove(backing, offset, Math.min(s.length(), backing.size() - offset));
    }

    static long roundUp(long v, long align) {
        return (v + align - 1) / align * align;
    }

    /** Size of a fully allocated image: header, L2 and L1 tables, refcount structures and data. */
    static long preallocSize(long totalSize, long clusterSize, int refcountOrder, boolean extL2) {
        long aligned = roundUp(totalSize, clusterSize);
        long l2eSize = extL2 ? 16 : 8;
        long meta = clusterSize;
        long nl2e = roundUp(aligned / clusterSize, clusterSize / l2eSize);
        meta += nl2e * l2eSize;
        long nl1e = roundUp(nl2e * l2eSize / clusterSize, clusterSize / 8);
        meta += nl1e * 8;
        meta += refcountMetadataSize((meta + aligned) / clusterSize, clusterSize, refcountOrder);
        return meta + aligned;
    }

    /** Refcount table and block clusters needed to count {@code clusters} clusters plus themselves. */
    static long refcountMetadataSize(long clusters, long clusterSize, int refcountOrder) {
        long perTableCluster = clusterSize / 8;
        long perBlock = clusterSize * 8 / (1L << refcountOrder);
        long table = 0;
        long blocks = 0;
        long n = 0;
        long last;
        do {
            last = n;
            blocks = (clusters + table + blocks + perBlock - 1) / perBlock;
            table = (blocks + perTableCluster - 1) / perTableCluster;
            n = clusters + blocks + table;
        } while (n != last);
        return (blocks + table) * clusterSize;
    }
}
