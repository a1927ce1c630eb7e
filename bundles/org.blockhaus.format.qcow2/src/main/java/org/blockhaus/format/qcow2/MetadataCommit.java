package org.blockhaus.format.qcow2;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.BitSet;
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
 * changes is written to clusters that are free in the current state instead (refcount 0 in the
 * structure the header describes, referenced by neither state; found by the allocator's search, so
 * holes inside the file come first and the file grows only when there are none): copies of the
 * active L2 tables whose COPIED flags change (computed from the final counts; a table that stays as
 * it is on disk is kept, only its refcount changes), the active L1 table, a new snapshot's L1
 * table, the snapshot table, and a whole new refcount table with blocks whose counts are recounted
 * from every reference of the new state. Then bytes 24..71 of the header (virtual size, L1 table,
 * refcount table, snapshot table) are rewritten by one write. Before that write the old state is
 * intact and the new clusters are unreferenced with refcount 0 (free); after it the new state is
 * complete and the old metadata is free, in the new refcounts only, so nothing reuses it before the
 * switch is on disk. Snapshot trees' COPIED flags are left alone: the spec
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
    /** First cluster index past the file: references to existing clusters lie below it. */
    private final long start;
    private int[] refs;
    /** Tables of the old state: left untouched until the header write has switched away from them. */
    private final BitSet busy = new BitSet();
    /** Clusters laid out for the new metadata so far. */
    private BitSet placed = new BitSet();
    /** No cluster below this one can still take new metadata. */
    private long cursor = 1;

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
    }

    /**
     * Lays out clusters for {@code bytes} bytes of new metadata, through the allocator's search for
     * free clusters (lowest first, as every allocation): they have refcount 0 in the structure the
     * header describes now, and neither the old state nor the new one references them. Writing
     * there before the switch harms nothing a crash could leave behind; nothing is marked in the
     * old refcounts, as the new structure is recounted.
     */
    private long place(long bytes) throws BlockException {
        int n = (int) Qcow2Header.ceilShift(bytes, clusterBits);
        long first = node.refcounts().findFree(cursor, n, this::unusable);
        if (first + n > Qcow2Check.MAX_CLUSTERS) {
            throw new BlockException(Reason.UNSUPPORTED, "qcow2: the image file would have " + (first + n)
                    + " clusters; snapshot operations count at most " + Qcow2Check.MAX_CLUSTERS);
        }
        placed.set((int) first, (int) (first + n));
        if (n == 1) {
            cursor = first + 1; // everything from the cursor up to here was unusable
        }
        return first << clusterBits;
    }

    private boolean unusable(long c) {
        if (c == 0 || c > Qcow2Check.MAX_CLUSTERS) {
            return c == 0;
        }
        int i = (int) c;
        return busy.get(i) || placed.get(i) || (i < refs.length && refs[i] != 0);
    }

    /** Marks {@code [offset, offset+bytes)} as a table of the old state. */
    private void markBusy(long offset, long bytes) {
        if (bytes <= 0 || offset < 0) {
            return;
        }
        long first = offset >>> clusterBits;
        long last = Math.min((offset + bytes - 1) >>> clusterBits, Qcow2Check.MAX_CLUSTERS);
        if (first <= last) {
            busy.set((int) first, (int) last + 1);
        }
    }

    /**
     * The tables of the state the header describes now (active L1 and L2 tables, refcount table and
     * blocks, snapshot table, the L1 and L2 tables of snapshots that go away) keep their clusters
     * until the switch, whatever their refcounts say: a crash before it must find them intact.
     */
    private void markOldMetadata(List<Snapshots.Entry> kept) throws BlockException {
        long[] oldL1 = node.activeL1();
        markBusy(node.activeL1Offset(), (long) oldL1.length * 8);
        for (long e : oldL1) {
            markBusy(e & Qcow2Node.L1_OFFSET_MASK, (e & Qcow2Node.L1_OFFSET_MASK) == 0 ? 0 : clusterSize);
        }
        Refcounts rc = node.refcounts();
        markBusy(rc.tableOffset(), (long) rc.tableClusters() << clusterBits);
        for (long b : rc.table()) {
            markBusy(b, b == 0 ? 0 : clusterSize);
        }
        if (h.nbSnapshots() > 0) {
            long[] bytes = new long[1];
            Snapshots.read(file, h, bytes);
            markBusy(h.snapshotsOffset(), bytes[0]);
        }
        for (Snapshots.Entry e : node.snapshotEntries()) {
            if (kept.contains(e)) {
                continue; // its tables are references of the new state
            }
            markBusy(e.l1TableOffset(), (long) e.l1Size() * 8);
            for (long le : node.readTable(e.l1TableOffset(), e.l1Size())) {
                long off = le & Qcow2Node.L1_OFFSET_MASK;
                markBusy(off, off == 0 ? 0 : clusterSize);
            }
        }
    }

    /**
     * Makes this the image's state: an active tree made of the L2 tables {@code source} points to
     * (copies where COPIED flags change), in an L1 table of {@code l1Length} entries; virtual size
     * {@code size}; the snapshot table {@code snaps}, in which an entry whose L1 offset is -1 gets {@code newSnapshotL1} (a
     * table written fresh). The caller has flushed the node and holds its lock.
     */
    void commit(long[] source, int l1Length, long size, List<Snapshots.Entry> snaps, long[] newSnapshotL1)
            throws BlockException {
        if (l1Length < source.length) {
            throw new IllegalArgumentException("L1 table shorter than its source");
        }
        if (start > Qcow2Check.MAX_CLUSTERS) {
            throw new BlockException(Reason.UNSUPPORTED, "qcow2: the image file has " + start
                    + " clusters; snapshot operations count at most " + Qcow2Check.MAX_CLUSTERS);
        }
        List<Snapshots.Entry> entries = new ArrayList<>(snaps);
        // the new snapshot is known by its index: an existing entry may name any offset (a
        // hostile one past the end of the file, with an empty L1 table, passes validation)
        int newEntry = -1;
        for (int i = 0; i < entries.size(); i++) {
            if (entries.get(i).l1TableOffset() == -1) {
                newEntry = i;
            }
        }

        // 1. Count every reference the new state keeps to clusters that exist already.
        refs = new int[(int) start];
        addRef(0, clusterSize, false);
        for (long le : source) {
            long off = le & Qcow2Node.L1_OFFSET_MASK;
            if (off != 0) {
                countData(node.l2Table(off).words);
            }
        }
        for (int k = 0; k < entries.size(); k++) {
            Snapshots.Entry e = entries.get(k);
            long[] sl1;
            if (k == newEntry) {
                sl1 = newSnapshotL1;
            } else {
                addRef(e.l1TableOffset(), (long) e.l1Size() * 8, false);
                sl1 = node.readTable(e.l1TableOffset(), e.l1Size());
            }
            for (long le : sl1) {
                long off = le & Qcow2Node.L1_OFFSET_MASK;
                if (off != 0) {
                    addRef(off, clusterSize, false);
                    countData(readL2(off));
                }
            }
        }
        if ((h.autoclearFeatures() & Qcow2Header.AUTOCLEAR_BITMAPS) != 0) {
            for (Qcow2Header.Extension x : h.unknownExtensions()) {
                if (x.type() == Qcow2Header.EXT_BITMAPS) {
                    countBitmaps(ByteBuffer.wrap(x.data()));
                }
            }
        }
        // An L2 table whose COPIED flags come out as they are on disk serves the new active state as
        // it is (its own refcount and the L1 entry's COPIED flag change, both in new structures).
        boolean[] keep = new boolean[source.length];
        for (int i = 0; i < source.length; i++) {
            long off = source[i] & Qcow2Node.L1_OFFSET_MASK;
            if (off != 0 && java.util.Arrays.equals(activeWords(off), node.l2Table(off).words)) {
                keep[i] = true;
                addRef(off, clusterSize, false);
            }
        }
        markOldMetadata(entries);

        // 2. Lay out the new clusters in free ones (nothing is written yet).
        long[] newL1 = new long[l1Length];
        for (int i = 0; i < source.length; i++) {
            long off = source[i] & Qcow2Node.L1_OFFSET_MASK;
            if (off != 0) {
                newL1[i] = keep[i] ? off : place(clusterSize);
            }
        }
        long l1Offset = l1Length == 0 ? node.activeL1Offset() : place((long) l1Length * 8);
        if (newEntry >= 0) {
            Snapshots.Entry e = entries.get(newEntry);
            long off = newSnapshotL1.length == 0 ? 0 : place((long) newSnapshotL1.length * 8);
            entries.set(newEntry, new Snapshots.Entry(off, newSnapshotL1.length, e.id(), e.name(), e.dateSec(),
                    e.dateNsec(), e.vmClockNsec(), e.vmStateSize(), e.diskSize(), e.icount()));
        }
        byte[] snapTable = Snapshots.serialize(entries);
        long snapOffset = snapTable.length == 0 ? 0 : place(snapTable.length);
        // The refcount structure covers every cluster in use, its own included: lay it out, and
        // again with more blocks if it landed past what it covers.
        int blockEntries = clusterSize * 8 / refcountBits;
        int blockBits = Integer.numberOfTrailingZeros(blockEntries);
        long cover = Math.max(highestReferenced() + 1, placed.length());
        long tableOffset;
        long tableClusters;
        long[] blockAt;
        while (true) {
            long blocks = Qcow2Header.ceilShift(cover, blockBits);
            tableClusters = Math.max(1, Qcow2Header.ceilShift(blocks * 8, clusterBits));
            if (tableClusters * clusterSize > Qcow2Header.MAX_REFTABLE_BYTES) {
                throw new BlockException(Reason.NO_SPACE, "qcow2: the reference count table would exceed "
                        + Qcow2Header.MAX_REFTABLE_BYTES + " bytes");
            }
            BitSet savedPlaced = (BitSet) placed.clone();
            long savedCursor = cursor;
            tableOffset = place(tableClusters * clusterSize);
            blockAt = new long[(int) blocks];
            for (int b = 0; b < blocks; b++) {
                blockAt[b] = place(clusterSize);
            }
            long end = Math.max(cover, placed.length());
            if (Qcow2Header.ceilShift(end, blockBits) <= blocks) {
                break;
            }
            placed = savedPlaced;
            cursor = savedCursor;
            cover = end;
        }

        // 3. Count the new clusters.
        refs = java.util.Arrays.copyOf(refs, (int) Math.max(start, placed.length()));
        addRef(l1Offset, (long) l1Length * 8, true);
        for (int i = 0; i < source.length; i++) {
            if ((source[i] & Qcow2Node.L1_OFFSET_MASK) != 0 && !keep[i]) { // kept ones are counted
                addRef(newL1[i], clusterSize, true);
            }
        }
        if (newEntry >= 0) {
            addRef(entries.get(newEntry).l1TableOffset(), (long) newSnapshotL1.length * 8, true);
        }
        addRef(snapOffset, snapTable.length, true);
        addRef(tableOffset, tableClusters * clusterSize, true);
        for (long b : blockAt) {
            addRef(b, clusterSize, true);
        }
        for (int i = 0; i < refs.length; i++) {
            if (Integer.toUnsignedLong(refs[i]) > maxRefcount) {
                throw new BlockException(Reason.INVALID_ARGUMENT, "qcow2: cluster " + i + " would need refcount "
                        + Integer.toUnsignedLong(refs[i]) + ", more than refcount_bits=" + refcountBits + " allows");
            }
        }

        // 4. Write the new clusters, none of which the old state uses.
        for (int i = 0; i < source.length; i++) {
            long off = source[i] & Qcow2Node.L1_OFFSET_MASK;
            if (off == 0) {
                continue;
            }
            if (!keep[i]) {
                writeLongs(newL1[i], activeWords(off));
            }
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
        for (int b = 0; b < blockAt.length; b++) {
            byte[] block = new byte[clusterSize];
            long base = (long) b * blockEntries;
            for (int i = 0; i < blockEntries && base + i < refs.length; i++) {
                Refcounts.putEntry(block, refcountBits, i, Integer.toUnsignedLong(refs[(int) (base + i)]));
            }
            table[b] = blockAt[b];
            file.write(table[b], block);
        }
        writeLongs(tableOffset, table);
        file.flush();

        // Clusters the old state uses and the new one does not: qemu passes the discards of
        // snapshot operations to the file (pass-discard-snapshot is on by default), so they become
        // holes once the new state is on disk. Advisory: unreadable old counts punch nothing.
        List<long[]> freed = node.passDiscardSnapshot() ? freedByCommit() : List.of();

        // 5. One write switches the header to the new state; only now is the old metadata free
        // (in the new refcounts), and only the reloaded node allocates from them.
        ByteBuffer hdr = ByteBuffer.allocate(48).putLong(size).putInt((int) h.cryptMethod()).putInt(l1Length)
                .putLong(l1Offset).putLong(tableOffset).putInt((int) tableClusters).putInt(entries.size())
                .putLong(snapOffset).flip();
        file.write(24, hdr);
        file.flush();
        node.refcounts().punchRuns(freed);
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
                if ((i >= refs.length || refs[(int) i] == 0) && old.get(i) > 0) {
                    Refcounts.addToRuns(freed, i);
                }
            }
        } catch (BlockException e) {
            freed.clear();
        }
        return freed;
    }

    /** The L2 table at {@code off} with COPIED set where the data cluster's final refcount is 1. */
    private long[] activeWords(long off) throws BlockException {
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
        return words;
    }

    /** Highest cluster an existing reference of the new state reaches, or -1. */
    private long highestReferenced() {
        for (int i = refs.length - 1; i >= 0; i--) {
            if (refs[i] != 0) {
                return i;
            }
        }
        return -1;
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
