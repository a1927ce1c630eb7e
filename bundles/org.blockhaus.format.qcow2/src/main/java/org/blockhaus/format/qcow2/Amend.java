package org.blockhaus.format.qcow2;

import java.nio.ByteBuffer;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.Options;

/**
 * qemu-img amend for qcow2: compat up and down (zero clusters expanded for version 2),
 * lazy_refcounts, backing file and format, refcount_bits (a new refcount structure). Options that
 * describe the layout (cluster_size, extended_l2, compression_type) can only be given unchanged.
 * Callers hold the node's lock; size changes are the node's (a resize).
 */
final class Amend {
    private final Qcow2Node node;
    private final int clusterBits;
    private final int clusterSize;

    Amend(Qcow2Node node) {
        this.node = node;
        this.clusterBits = node.header().clusterBits();
        this.clusterSize = 1 << clusterBits;
    }

    void apply(Options o) throws BlockException {
        Qcow2Header header = node.header();
        for (String key : o.asMap().keySet()) {
            switch (key) {
                case "compat", "lazy_refcounts", "backing_file", "backing_fmt", "size", "refcount_bits" -> { }
                case "cluster_size" -> unchanged(key, o.getSize(key, clusterSize) == clusterSize, "cluster size");
                case "extended_l2" -> unchanged(key, o.getBool(key, false) == header.extendedL2(),
                        "extended L2 setting");
                case "compression_type" -> unchanged(key, o.get(key).equals(
                        header.compressionType() == Qcow2Header.COMPRESSION_ZSTD ? "zstd" : "zlib"),
                        "compression type");
                case "preallocation" -> throw BlockException.invalid("Cannot change preallocation mode");
                case "data_file" -> {
                    if ((header.incompatibleFeatures() & Qcow2Header.INCOMPAT_DATA_FILE) == 0) {
                        throw BlockException.invalid("data-file can only be set for images that use an external"
                                + " data file");
                    }
                    throw new BlockException(Reason.UNSUPPORTED, "Changing the option '" + key + "' is not supported");
                }
                case "data_file_raw" -> {
                    if (o.getBool(key, false)) {
                        throw BlockException.invalid("data-file-raw cannot be set on existing images");
                    }
                    if ((header.autoclearFeatures() & Qcow2Header.AUTOCLEAR_DATA_FILE_RAW) != 0) {
                        throw new BlockException(Reason.UNSUPPORTED, "Changing the option '" + key
                                + "' is not supported");
                    }
                }
                default -> throw key.startsWith("encrypt.")
                        // this driver opens no encrypted image, so none it amends has encryption
                        ? BlockException.invalid("Can't amend encryption options - encryption not present")
                        : new BlockException(Reason.UNSUPPORTED, "Changing the option '" + key
                        + "' is not supported");
            }
        }
        node.flushLocked();
        int version = header.version();
        if (o.has("compat")) {
            version = switch (o.get("compat")) {
                case "0.10", "v2" -> 2;
                case "1.1", "v3" -> 3;
                default -> throw BlockException.invalid("Invalid compatibility level: '" + o.get("compat") + "'");
            };
        }
        long compat = header.compatibleFeatures();
        if (o.has("lazy_refcounts")) {
            boolean lazy = o.getBool("lazy_refcounts", false);
            if (lazy && version < 3) {
                throw BlockException.invalid("Lazy refcounts only supported with compatibility level 1.1 and"
                        + " above (use compat=1.1 or greater)");
            }
            compat = lazy ? compat | Qcow2Header.COMPAT_LAZY_REFCOUNTS : compat & ~Qcow2Header.COMPAT_LAZY_REFCOUNTS;
        }
        if (version < 3) {
            compat &= ~Qcow2Header.COMPAT_LAZY_REFCOUNTS;
        }
        int bits = header.refcountBits();
        if (o.has("refcount_bits")) {
            long b = o.getLong("refcount_bits", 16);
            if (b < 1 || b > 64 || Long.bitCount(b) != 1) {
                throw BlockException.invalid("Refcount width must be a power of two and may not exceed 64 bits");
            }
            bits = (int) b;
        }
        // Everything refusable is refused before the first change, so a refused amend leaves the
        // image as it was (a downgrade refused for its refcount width used to leave a version 2
        // header behind).
        if (bits != 16 && version < 3) {
            throw BlockException.invalid(o.has("refcount_bits")
                    ? "Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1"
                    + " or greater)"
                    : "compat=0.10 requires refcount_bits=16");
        }
        boolean downgrade = version < header.version();
        if (downgrade) {
            downgradeChecks(header);
        }
        String backing = o.has("backing_file") ? o.get("backing_file") : header.backingFile();
        String backingFmt = o.has("backing_fmt") ? o.get("backing_fmt")
                : o.has("backing_file") ? null : header.backingFormat();
        if (downgrade) {
            // as qemu: the width goes back to 16 bits while version 3 still allows any, then down
            if (bits != header.refcountBits()) {
                changeRefcountWidth(bits);
            }
            node.expandZeroClusters();
            node.flushLocked();
            node.expandSnapshotZeroClusters();
            node.rewriteHeader(version, backing, backing == null ? null : backingFmt, compat);
        } else {
            node.rewriteHeader(version, backing, backing == null ? null : backingFmt, compat);
            if (bits != node.header().refcountBits()) {
                changeRefcountWidth(bits);
            }
        }
    }

    private static void unchanged(String key, boolean same, String what) throws BlockException {
        if (!same) {
            throw new BlockException(Reason.UNSUPPORTED, "Changing the " + what + " (" + key + ") is not supported");
        }
    }

    private void downgradeChecks(Qcow2Header header) throws BlockException {
        if ((header.incompatibleFeatures() & Qcow2Header.INCOMPAT_DATA_FILE) != 0) {
            throw BlockException.invalid("Cannot downgrade an image with a data file");
        }
        if (header.extendedL2()) {
            throw BlockException.invalid("Cannot downgrade an image with extended L2 entries to compat=0.10");
        }
        if (header.compressionType() != Qcow2Header.COMPRESSION_ZLIB) {
            throw BlockException.invalid("Cannot downgrade an image with a compression type other than zlib");
        }
        // As qemu: a version 2 reader would not know that a snapshot's disk size or large VM state
        // size (kept in the extra data) matter, so only snapshots that need neither are kept.
        for (Snapshots.Entry e : node.snapshotEntries()) {
            if (e.vmStateSize() > 0xffff_ffffL || e.diskSize() != node.size()) {
                throw new BlockException(Reason.UNSUPPORTED, "Internal snapshots prevent downgrade of image");
            }
        }
    }

    /**
     * refcount_bits: builds a complete refcount structure of the new width past the end of the used
     * space (counting itself and the old one), switches the header to it in one write, then releases
     * the old table and blocks. A crash before the switch leaves the old structure in force (the new
     * one is unreferenced space); after it, leaks at most.
     */
    private void changeRefcountWidth(int bits) throws BlockException {
        node.flushLocked();
        HostFile file = node.hostFile();
        Qcow2Header header = node.header();
        Refcounts refcounts = node.refcounts();
        long perBlock = (long) clusterSize * 8 / bits;
        long maxValue = bits == 64 ? Long.MAX_VALUE : (1L << bits) - 1;
        long used = refcounts.highestUsedCluster() + 1;
        long start = Math.max(used, Qcow2Header.ceilShift(file.size(), clusterBits));
        long tableClusters = 1;
        long blocks = 1;
        while (true) {
            long end = start + tableClusters + blocks;
            long needBlocks = (end + perBlock - 1) / perBlock;
            long needTable = Qcow2Header.ceilShift(needBlocks * 8, clusterBits);
            if (needBlocks <= blocks && needTable <= tableClusters) {
                break;
            }
            blocks = Math.max(blocks, needBlocks);
            tableClusters = Math.max(tableClusters, needTable);
        }
        if (tableClusters * clusterSize > Qcow2Header.MAX_REFTABLE_BYTES) {
            throw BlockException.invalid("qcow2: the new refcount table would be too large");
        }
        long end = start + tableClusters + blocks;
        if (blocks * clusterSize > (1L << 30) || end > Integer.MAX_VALUE / 8) {
            throw new BlockException(Reason.UNSUPPORTED, "qcow2: the image is too large to change its refcount width");
        }
        // Consecutive blocks form one flat array of entries: entry i sits at bit i * bits.
        ByteBuffer blockData = ByteBuffer.allocate((int) (blocks * clusterSize));
        byte[] bd = blockData.array();
        for (long i = 0; i < end; i++) {
            long v = i >= start ? 1 : refcounts.get(i);
            if (v > maxValue) {
                throw BlockException.invalid("Cannot change the refcount width to " + bits + " bits: cluster " + i
                        + " has refcount " + v);
            }
            if (v != 0) {
                Refcounts.putEntry(bd, bits, (int) i, v);
            }
        }
        long tableOffset = start << clusterBits;
        ByteBuffer table = ByteBuffer.allocate((int) (tableClusters * clusterSize));
        for (long b = 0; b < blocks; b++) {
            table.putLong((start + tableClusters + b) << clusterBits);
        }
        file.write((start + tableClusters) << clusterBits, blockData);
        file.write(tableOffset, table.clear());
        file.flush();
        // the switch: reftable offset and clusters (48..59) and refcount_order (96) in one write
        ByteBuffer h = ByteBuffer.allocate(52).putLong(tableOffset).putInt((int) tableClusters)
                .putInt(header.nbSnapshots()).putLong(header.snapshotsOffset()).putLong(header.incompatibleFeatures())
                .putLong(header.compatibleFeatures()).putLong(header.autoclearFeatures())
                .putInt(Integer.numberOfTrailingZeros(bits)).flip();
        file.write(48, h);
        file.flush();
        node.replaceRefcounts();
        Refcounts fresh = node.refcounts();
        fresh.queueFree(refcounts.tableOffset(), (long) refcounts.tableClusters() << clusterBits);
        for (long b : refcounts.table()) {
            if (b != 0) {
                fresh.queueFree(b, clusterSize);
            }
        }
        fresh.applyQueuedFrees();
    }
}
