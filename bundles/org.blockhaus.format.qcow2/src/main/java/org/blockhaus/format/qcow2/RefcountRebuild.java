package org.blockhaus.format.qcow2;

import java.nio.ByteBuffer;
import java.util.Arrays;
import org.blockhaus.api.BlockException;

/**
 * {@code check -r all} on an image whose refcount structure is broken (a referenced cluster with
 * refcount 0): a new refcount table and new refcount blocks are built from the counted references
 * and placed where qemu places them, so that the repaired image (and what check prints about it)
 * is the one qemu-img would leave. Blocks go to the first free cluster at or after the range they
 * describe; the table goes to the first run of free clusters once the last block is placed (or
 * after the last block's range if it does not fit). One header write (refcount table offset and
 * size) switches to the new structure; the old one is then a leak, which the caller repairs.
 */
final class RefcountRebuild {
    private final Qcow2Node node;
    private final HostFile file;
    private final int clusterBits;
    private final int clusterSize;
    private final int refcountBits;
    private final int blockBits;
    private final int blockEntries;
    /** In-memory refcounts, grown when new clusters are needed past the end. */
    private long[] counts;
    private long nb;
    private long firstFree;

    RefcountRebuild(Qcow2Node node, int[] references) {
        this.node = node;
        this.file = node.hostFile();
        Qcow2Header h = node.header();
        this.clusterBits = h.clusterBits();
        this.clusterSize = h.clusterSize();
        this.refcountBits = h.refcountBits();
        this.blockEntries = clusterSize * 8 / refcountBits;
        this.blockBits = Integer.numberOfTrailingZeros(blockEntries);
        this.counts = new long[Math.max(16, references.length)];
        for (int i = 0; i < references.length; i++) {
            counts[i] = Integer.toUnsignedLong(references[i]);
        }
        this.nb = references.length;
    }

    /** Builds, writes and switches to the new structure; the node re-reads its refcounts. */
    void run() throws BlockException {
        long[] table = new long[0];
        long tableEntries = 0;
        long tableOffset = -1;
        long cluster = 0;
        while (true) {
            for (; cluster < nb; cluster++) {
                if (counts[(int) cluster] == 0) {
                    continue;
                }
                long index = cluster >>> blockBits;
                long start = index << blockBits;
                // never place a block inside a range whose block is already written
                firstFree = Math.max(firstFree, start);
                long blockCluster = allocate(1);
                if (tableEntries <= index) {
                    long oldEntries = tableEntries;
                    tableEntries = Qcow2Header.ceilShift((index + 1) * 8, clusterBits) << clusterBits >>> 3;
                    table = Arrays.copyOf(table, (int) tableEntries);
                    if (tableOffset >= 0) { // the table grew: its old place is free again
                        release(tableOffset >>> clusterBits, tableClusters(oldEntries));
                        tableOffset = -1;
                    }
                }
                table[(int) index] = blockCluster << clusterBits;
                if (index == (nb - 1) >>> blockBits && tableOffset < 0) {
                    tableOffset = allocate(tableClusters(tableEntries)) << clusterBits;
                }
                writeBlock(index, table[(int) index]);
                cluster = start + blockEntries - 1;
            }
            if (tableOffset >= 0) {
                break;
            }
            // no room found while placing blocks: after the last block's range, then place its block
            firstFree = Math.max(firstFree, Qcow2Header.ceilShift(nb, blockBits) << blockBits);
            tableOffset = allocate(tableClusters(tableEntries)) << clusterBits;
        }
        ByteBuffer t = ByteBuffer.allocate((int) (tableClusters(tableEntries) << clusterBits));
        for (long e : table) {
            t.putLong(e);
        }
        file.write(tableOffset, t.flip());
        file.flush();
        file.write(48, ByteBuffer.allocate(12).putLong(tableOffset).putInt((int) tableClusters(tableEntries)).flip());
        file.flush();
        node.replaceRefcounts();
    }

    private long tableClusters(long entries) {
        return Qcow2Header.ceilShift(entries * 8, clusterBits);
    }

    /** {@code n} contiguous clusters with refcount 0, from {@link #firstFree} on (growing the image). */
    private long allocate(long n) {
        long c = firstFree;
        long run = 0;
        boolean firstGap = true;
        for (; c < nb && run < n; c++) {
            if (counts[(int) c] == 0) {
                run++;
                if (firstGap) {
                    firstFree = c;
                    firstGap = false;
                }
            } else {
                run = 0;
            }
        }
        if (run < n) {
            grow(c + n - run);
        }
        long start = c - run;
        for (long i = start; i < start + n; i++) {
            counts[(int) i] = 1;
        }
        return start;
    }

    private void release(long first, long n) {
        for (long i = first; i < first + n; i++) {
            counts[(int) i] = 0;
        }
    }

    private void grow(long clusters) {
        if (clusters > counts.length) {
            counts = Arrays.copyOf(counts, (int) Math.max(clusters, counts.length * 2L));
        }
        nb = Math.max(nb, clusters);
    }

    private void writeBlock(long index, long offset) throws BlockException {
        byte[] block = new byte[clusterSize];
        long max = refcountBits == 64 ? Long.MAX_VALUE : (1L << refcountBits) - 1;
        long base = index << blockBits;
        for (int i = 0; i < blockEntries && base + i < nb; i++) {
            Refcounts.putEntry(block, refcountBits, i, Math.min(max, counts[(int) (base + i)]));
        }
        file.write(offset, block);
    }
}
