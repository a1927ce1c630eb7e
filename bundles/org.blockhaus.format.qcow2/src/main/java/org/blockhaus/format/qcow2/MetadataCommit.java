package org.blockhaus.format.qcow2;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;

/**
 * Switches an image to a new metadata state with one header write, for the operations that change
 * refcounts and COPIED flags of many clusters at once (internal snapshot create, apply, delete).
 *
 * <p>Why: {@code qemu-img check} demands that COPIED is set exactly where the refcount is 1 in the
 * active tables. A snapshot operation moves many clusters between refcount 1 and 2; the refcount
 * and the flag live in different clusters, so updating them in place leaves a window in which a
 * killed writer leaves an image that check calls corrupt, whatever the order. Here everything that
 * changes is written to fresh clusters past the end of the file instead: copies of the active L2
 * tables (COPIED computed from the final counts), the active L1 table, a new snapshot's L1 table,
 * the snapshot table, and a whole new refcount table with blocks whose counts are recounted from
 * every reference of the new state. Then bytes 24..71 of the header (virtual size, L1 table,
 * refcount table, snapshot table) are rewritten by one write. Before that write the old state is
 * intact and the new clusters are unreferenced with refcount 0 (free); after it the new state is
 * complete and the old metadata is free. Snapshot trees' COPIED flags are left alone: the spec
 * says they are only meaningful in tables reachable from the active L1 table.
 *
 * <p>The recount also drops leaks, as {@code check -r leaks} would. The cost is one read of every
 * L2 table of every snapshot (as check does) and one write of the active tables.
 */
final class MetadataCommit {
    private final Qcow2Node node;
    private final HostFile file;
    private final Qcow2Header h;
    private final int clusterBits;
    private final int clusterSize;
    private final int step;
    private final int refcountBits;
    private final long maxRefcount;
    /** First cluster index past the file: everything new goes from here on. */
    private final long start;
    private long next;
    private int[] refs;

    MetadataCommit(Qcow2Node node) throws BlockException {
        this.node = node;
        this.file = node.hostFile();
        this.h = node.header();
        this.clusterBits = h.clusterBits();
        this.clusterSize = h.clusterSize();
        this.step = h.extendedL2() ? 2 : 1;
        this.refcountBits = h.refcountBits();
        this.maxRefcount = refcountBits == 64 ? Long.MAX_VALUE : (1L << refcountBits) - 1;
        this.start = Qcow2Header.ceilShift(file.size(), clusterBits);
        this.next = start;
    }

    /** Reserves fresh clusters past the file for {@code bytes} bytes of new metadata. */
    private long place(long bytes) {
        long off = next << clusterBits;
        next += Qcow2Header.ceilShift(bytes, clusterBits);
        return off;
    }

    /**
     * Makes this the image's state: an active tree made of copies of the L2 tables {@code source}
     * points to, in an L1 table of {@code l1Length} entries; virtual size {@code size}; the snapshot
     * table {@code snaps}, in which an entry whose L1 offset is -1 gets {@code newSnapshotL1} (a
     * table written fresh). The caller has flushed the node and holds its lock.
     */
    void commit(long[] source, int l1Length, long size, List<Snapshots.Entry> snaps, long[] newSnapshotL1)
            throws BlockException {
        if (l1Length < source.length) {
            throw new IllegalArgumentException("L1 table shorter than its source");
        }
        // 1. Lay out the new clusters (nothing is written yet).
        long[] newL1 = new long[l1Length];
        for (int i = 0; i < source.length; i++) {
            if ((source[i] & Qcow2Node.L1_OFFSET_MASK) != 0) {
                newL1[i] = place(clusterSize);
            }
        }
        long l1Offset = l1Length == 0 ? node.activeL1Offset() : place((long) l1Length * 8);
        List<Snapshots.Entry> entries = new ArrayList<>(snaps);
        // the new snapshot is known by its index: an existing entry may name any offset (a
        // hostile one past the end of the file, with an empty L1 table, passes validation)
        int newEntry = -1;
        for (int i = 0; i < entries.size(); i++) {
            Snapshots.Entry e = entries.get(i);
            if (e.l1TableOffset() == -1) {
                newEntry = i;
                long off = newSnapshotL1.length == 0 ? 0 : place((long) newSnapshotL1.length * 8);
                entries.set(i, new Snapshots.Entry(off, newSnapshotL1.length, e.id(), e.name(), e.dateSec(),
                        e.dateNsec(), e.vmClockNsec(), e.vmStateSize(), e.diskSize(), e.icount()));
            }
        }
        byte[] snapTable = Snapshots.serialize(entries);
        long snapOffset = snapTable.length == 0 ? 0 : place(snapTable.length);
        int blockEntries = clusterSize * 8 / refcountBits;
        long metaEnd = next;
        long blocks = 0;
        long tableClusters = 1;
        while (true) {
            long end = metaEnd + tableClusters + blocks;
            long b = Qcow2Header.ceilShift(end, Integer.numberOfTrailingZeros(blockEntries));
            long t = Math.max(1, Qcow2Header.ceilShift(b * 8, clusterBits));
            if (b == blocks && t == tableClusters) {
                break;
            }
            blocks = b;
            tableClusters = t;
        }
        if (tableClusters * clusterSize > Qcow2Header.MAX_REFTABLE_BYTES) {
            throw new BlockException(Reason.NO_SPACE, "qcow2: the reference count table would exceed "
                    + Qcow2Header.MAX_REFTABLE_BYTES + " bytes");
        }
        long tableOffset = place(tableClusters * clusterSize);
        long firstBlock = next;
        next += blocks;
        if (next > Qcow2Check.MAX_CLUSTERS) {
            throw new BlockException(Reason.UNSUPPORTED, "qcow2: the image file would have " + next
                    + " clusters; snapshot operations count at most " + Qcow2Check.MAX_CLUSTERS);
        }

        // 2. Count every reference of the new state.
        refs = new int[(int) next];
        addRef(0, clusterSize, false);
        addRef(l1Offset, (long) l1Length * 8, true);
        for (int i = 0; i < source.length; i++) {
            long off = source[i] & Qcow2Node.L1_OFFSET_MASK;
            if (off != 0) {
                addRef(newL1[i], clusterSize, true);
                countData(node.l2Table(off).words);
            }
        }
        for (int k = 0; k < entries.size(); k++) {
            Snapshots.Entry e = entries.get(k);
            addRef(e.l1TableOffset(), (long) e.l1Size() * 8, true);
            long[] sl1 = k == newEntry ? newSnapshotL1 : node.readTable(e.l1TableOffset(), e.l1Size());
            for (long le : sl1) {
                long off = le & Qcow2Node.L1_OFFSET_MASK;
                if (off != 0) {
                    addRef(off, clusterSize, false);
                    countData(readL2(off));
                }
            }
        }
        addRef(snapOffset, snapTable.length, true);
        if ((h.autoclearFeatures() & Qcow2Header.AUTOCLEAR_BITMAPS) != 0) {
            for (Qcow2Header.Extension x : h.unknownExtensions()) {
                if (x.type() == Qcow2Header.EXT_BITMAPS) {
                    countBitmaps(ByteBuffer.wrap(x.data()));
                }
            }
        }
        addRef(tableOffset, tableClusters * clusterSize, true);
        for (long b = 0; b < blocks; b++) {
            addRef((firstBlock + b) << clusterBits, clusterSize, true);
        }
        for (int i = 0; i < refs.length; i++) {
            if (Integer.toUnsignedLong(refs[i]) > maxRefcount) {
                throw new BlockException(Reason.INVALID_ARGUMENT, "qcow2: cluster " + i + " would need refcount "
                        + Integer.toUnsignedLong(refs[i]) + ", more than refcount_bits=" + refcountBits + " allows");
            }
        }

        // 3. Write the new clusters, all past the old end of the file.
        for (int i = 0; i < source.length; i++) {
            long off = source[i] & Qcow2Node.L1_OFFSET_MASK;
            if (off == 0) {
                continue;
            }
            long[] words = node.l2Table(off).words.clone();
            for (int j = 0; j < words.length && !node.external(); j += step) { // data file clusters stay owned
                long w = words[j];
                if ((w & Qcow2Node.OFLAG_COMPRESSED) != 0) {
                    continue;
                }
                long host = w & Qcow2Node.L2_OFFSET_MASK;
                boolean owned = host != 0 && refs[(int) (host >>> clusterBits)] == 1;
                words[j] = owned ? w | Qcow2Node.OFLAG_COPIED : w & ~Qcow2Node.OFLAG_COPIED;
            }
            writeLongs(newL1[i], words);
            newL1[i] |= refs[(int) (newL1[i] >>> clusterBits)] == 1 ? Qcow2Node.OFLAG_COPIED : 0;
        }
        if (l1Length > 0) {
            writeLongs(l1Offset, newL1);
        }
        if (newEntry >= 0 && newSnapshotL1.length > 0) {
            long[] clean = newSnapshotL1.clone();
            for (int i = 0; i < clean.length; i++) {
                clean[i] &= ~Qcow2Node.OFLAG_COPIED;
            }
            writeLongs(entries.get(newEntry).l1TableOffset(), clean);
        }
        if (snapTable.length > 0) {
            file.write(snapOffset, snapTable);
        }
        long[] table = new long[(int) (tableClusters * clusterSize / 8)];
        for (int b = 0; b < blocks; b++) {
            byte[] block = new byte[clusterSize];
            long base = (long) b * blockEntries;
            for (int i = 0; i < blockEntries && base + i < refs.length; i++) {
                Refcounts.putEntry(block, refcountBits, i, Integer.toUnsignedLong(refs[(int) (base + i)]));
            }
            table[b] = (firstBlock + b) << clusterBits;
            file.write(table[b], block);
        }
        writeLongs(tableOffset, table);
        file.flush();

        // Clusters the old state uses and the new one does not: qemu passes the discards of
        // snapshot operations to the file (pass-discard-snapshot is on by default), so they become
        // holes once the new state is on disk. Advisory: unreadable old counts punch nothing.
        List<long[]> freed = node.passDiscardSnapshot() ? freedByCommit() : List.of();

        // 4. One write switches the header to the new state.
        ByteBuffer hdr = ByteBuffer.allocate(48).putLong(size).putInt((int) h.cryptMethod()).putInt(l1Length)
                .putLong(l1Offset).putLong(tableOffset).putInt((int) tableClusters).putInt(entries.size())
                .putLong(snapOffset).flip();
        file.write(24, hdr);
        file.flush();
        for (long[] run : freed) {
            file.punch(run[0] << clusterBits, (run[1] - run[0]) << clusterBits);
        }
        node.reloadMetadata();
    }

    /**
     * Clusters the old state uses and the new one does not: qemu passes the discards of snapshot
     * operations to the file (pass-discard-snapshot, on by default), so they become holes once the
     * new state is on disk. Advisory: old counts that cannot be read punch nothing.
     */
    private List<long[]> freedByCommit() {
        List<long[]> freed = new ArrayList<>();
        try {
            Refcounts old = node.refcounts();
            for (long i = 1; i < start; i++) {
                if (refs[(int) i] == 0 && old.get(i) > 0) {
                    long[] last = freed.isEmpty() ? null : freed.get(freed.size() - 1);
                    if (last != null && last[1] == i) {
                        last[1] = i + 1;
                    } else {
                        freed.add(new long[] {i, i + 1});
                    }
                }
            }
        } catch (BlockException e) {
            freed.clear();
        }
        return freed;
    }

    private long[] readL2(long off) throws BlockException {
        long[] words = new long[clusterSize / 8];
        file.read(off, clusterSize, "Snapshot L2 table").asLongBuffer().get(words);
        return words;
    }

    private void writeLongs(long offset, long[] words) throws BlockException {
        ByteBuffer b = ByteBuffer.allocate(words.length * 8);
        for (long w : words) {
            b.putLong(w);
        }
        file.write(offset, b.flip());
    }

    /** One more reference on each cluster of {@code [offset, offset+bytes)}. */
    private void addRef(long offset, long bytes, boolean fresh) throws BlockException {
        if (bytes <= 0) {
            return;
        }
        long first = offset >>> clusterBits;
        long last = (offset + bytes - 1) >>> clusterBits;
        long limit = fresh ? refs.length : start;
        if (offset < 0 || last >= limit) {
            throw Qcow2Header.corrupt("Cluster " + last + " is referenced but lies past the end of the image file;"
                    + " run 'qemu-img check -r all'");
        }
        for (long i = first; i <= last; i++) {
            refs[(int) i]++;
        }
    }

    private void countData(long[] words) throws BlockException {
        if (node.external()) {
            return; // guest data lives in the data file, whose clusters are not refcounted
        }
        Compression comp = node.compression();
        for (int j = 0; j < words.length; j += step) {
            long w = words[j];
            if ((w & Qcow2Node.OFLAG_COMPRESSED) != 0) {
                addRef(comp.refStart(w), comp.refLength(w), false);
            } else if ((w & Qcow2Node.L2_OFFSET_MASK) != 0) {
                long host = w & Qcow2Node.L2_OFFSET_MASK;
                if ((host & (clusterSize - 1)) != 0) {
                    throw Qcow2Header.corrupt("Unaligned cluster offset " + host + " in an L2 table");
                }
                addRef(host, clusterSize, false);
            }
        }
    }

    /** Persistent bitmaps (spec: "Bitmaps extension"): directory, bitmap tables and their data. */
    private void countBitmaps(ByteBuffer ext) throws BlockException {
        if (ext.remaining() < 24) {
            throw Qcow2Header.corrupt("Bitmaps extension is too short");
        }
        long count = Integer.toUnsignedLong(ext.getInt(0));
        long dirSize = ext.getLong(8);
        long dirOffset = ext.getLong(16);
        if (count > 65535 || dirSize < 0 || dirSize > 64L * 65535 * 1024 || dirOffset <= 0
                || dirOffset > file.size() - dirSize) {
            throw Qcow2Header.corrupt("Bitmap directory lies outside the image file");
        }
        addRef(dirOffset, dirSize, false);
        ByteBuffer dir = file.read(dirOffset, (int) dirSize, "Bitmap directory");
        int pos = 0;
        for (long i = 0; i < count; i++) {
            if (pos + 24 > dir.limit()) {
                throw Qcow2Header.corrupt("Bitmap directory entry " + i + " is truncated");
            }
            long tableOffset = dir.getLong(pos);
            long tableEntries = Integer.toUnsignedLong(dir.getInt(pos + 8));
            int nameSize = Short.toUnsignedInt(dir.getShort(pos + 18));
            long extra = Integer.toUnsignedLong(dir.getInt(pos + 20));
            pos += (int) ((24 + extra + nameSize + 7) & ~7L);
            if (tableEntries == 0) {
                continue;
            }
            if (tableEntries * 8 > Qcow2Header.MAX_L1_BYTES || tableOffset <= 0
                    || tableOffset > file.size() - tableEntries * 8) {
                throw Qcow2Header.corrupt("Bitmap table " + i + " lies outside the image file");
            }
            addRef(tableOffset, tableEntries * 8, false);
            ByteBuffer t = file.read(tableOffset, (int) (tableEntries * 8), "Bitmap table");
            for (int k = 0; k < tableEntries; k++) {
                long data = t.getLong(k * 8) & Qcow2Node.L2_OFFSET_MASK;
                if (data != 0) {
                    addRef(data, clusterSize, false);
                }
            }
        }
    }
}
