package org.blockhaus.format.qcow2;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;

/**
 * Creating, applying and deleting internal snapshots (spec: "Snapshots"). A snapshot is a copy of
 * the active L1 table plus one more reference on everything that table reaches; the active state
 * then copies on write. Each step orders its writes so that a crash leaves leaks at most. Callers
 * hold the node's lock and have flushed its metadata.
 */
final class SnapshotOps {
    private final Qcow2Node node;
    private final int clusterBits;
    private final int clusterSize;
    private final int step;

    SnapshotOps(Qcow2Node node) {
        this.node = node;
        this.clusterBits = node.header().clusterBits();
        this.clusterSize = 1 << clusterBits;
        this.step = node.header().extendedL2() ? 2 : 1;
    }

    /** Visits every host range a mapping tree references: its L2 tables and their data clusters. */
    private interface RefVisitor {
        void visit(long offset, long bytes) throws BlockException;
    }

    private void walkTree(long[] table, RefVisitor v) throws BlockException {
        Compression comp = node.compression();
        for (long e : table) {
            long off = e & Qcow2Node.L1_OFFSET_MASK;
            if (off == 0) {
                continue;
            }
            v.visit(off, clusterSize);
            L2Cache.Table t = node.l2Table(off);
            for (int i = 0; i < t.words.length; i += step) {
                long w = t.words[i];
                if ((w & Qcow2Node.OFLAG_COMPRESSED) != 0) {
                    v.visit(comp.refStart(w), comp.refLength(w));
                } else if ((w & Qcow2Node.L2_OFFSET_MASK) != 0) {
                    long host = w & Qcow2Node.L2_OFFSET_MASK;
                    if ((host & (clusterSize - 1)) != 0) {
                        throw Qcow2Header.corrupt("Unaligned cluster offset " + host + " in L2 table " + off);
                    }
                    v.visit(host, clusterSize);
                }
            }
        }
    }

    private void incrementRange(long offset, long bytes) throws BlockException {
        long first = offset >>> clusterBits;
        long last = (offset + bytes - 1) >>> clusterBits;
        node.refcounts().increment(first, last - first + 1);
    }

    private static void writeTable(HostFile file, long offset, long[] table) throws BlockException {
        ByteBuffer b = ByteBuffer.allocate(table.length * 8);
        for (long e : table) {
            b.putLong(e);
        }
        file.write(offset, b.flip());
        file.flush();
    }

    /** Writes a snapshot table to fresh clusters and points the header at it; frees the old one. */
    private void replaceSnapshotTable(List<Snapshots.Entry> entries) throws BlockException {
        Qcow2Header h = node.header();
        HostFile file = node.hostFile();
        Refcounts refcounts = node.refcounts();
        long[] oldBytes = new long[1];
        if (h.nbSnapshots() > 0) {
            Snapshots.read(file, h, oldBytes);
        }
        byte[] table = Snapshots.serialize(entries);
        long newOffset = 0;
        if (table.length > 0) {
            newOffset = refcounts.allocate((int) Qcow2Header.ceilShift(table.length, clusterBits));
            refcounts.writeIncreases();
            file.write(newOffset, table);
            file.flush();
        }
        file.write(60, ByteBuffer.allocate(12).putInt(entries.size()).putLong(newOffset).flip());
        file.flush();
        node.snapshotTableMoved(entries.size(), newOffset);
        if (oldBytes[0] > 0) {
            refcounts.queueFree(h.snapshotsOffset(), oldBytes[0]);
        }
    }

    void create(String name) throws BlockException {
        if (node.external()) {
            throw new BlockException(Reason.UNSUPPORTED, "qcow2: internal snapshots cannot be used with an"
                    + " external data file");
        }
        Refcounts refcounts = node.refcounts();
        List<Snapshots.Entry> entries = new ArrayList<>(node.snapshotEntries());
        if (entries.size() >= Qcow2Header.MAX_SNAPSHOTS) {
            throw BlockException.invalid("qcow2: too many snapshots");
        }
        long[] l1 = node.activeL1();
        // 1. The active tables lose COPIED and reach the disk first: a crash now leaves flags that
        //    only cause needless copies (check -r all sets them again), never a shared cluster
        //    still marked as exclusively owned.
        long[] copy = l1.clone();
        for (int i = 0; i < l1.length; i++) {
            if ((l1[i] & Qcow2Node.OFLAG_COPIED) != 0) {
                l1[i] &= ~Qcow2Node.OFLAG_COPIED;
                node.markL1Dirty(i);
                L2Cache.Table t = node.l2Table(l1[i] & Qcow2Node.L1_OFFSET_MASK);
                for (int j = 0; j < t.words.length; j += step) {
                    if ((t.words[j] & Qcow2Node.OFLAG_COPIED) != 0) {
                        t.words[j] &= ~Qcow2Node.OFLAG_COPIED;
                        t.dirty = true;
                    }
                }
            }
            copy[i] &= ~Qcow2Node.OFLAG_COPIED;
        }
        node.flushLocked();
        // 2. Everything the active tree references gains the snapshot's reference.
        long l1Bytes = (long) l1.length * 8;
        long snapL1 = l1.length == 0 ? 0 : refcounts.allocate((int) Qcow2Header.ceilShift(l1Bytes, clusterBits));
        walkTree(copy, this::incrementRange);
        refcounts.writeIncreases();
        // 3. The snapshot's L1 table, then the snapshot table and the header that point to it.
        if (snapL1 != 0) {
            writeTable(node.hostFile(), snapL1, copy);
        }
        java.time.Instant now = java.time.Instant.now();
        // as qemu-img: wall time with microsecond precision, no VM clock, icount 0 for an offline snapshot
        entries.add(new Snapshots.Entry(snapL1, l1.length, Snapshots.nextId(entries), name, now.getEpochSecond(),
                now.getNano() / 1000 * 1000, 0, 0, node.size(), 0));
        replaceSnapshotTable(entries);
        refcounts.applyQueuedFrees();
    }

    private Snapshots.Entry find(List<Snapshots.Entry> entries, String nameOrId) throws BlockException {
        int idx = Snapshots.find(entries, nameOrId);
        if (idx < 0) {
            throw new BlockException(Reason.NOT_FOUND, "Can't find snapshot '" + nameOrId + "'");
        }
        return entries.get(idx);
    }

    void apply(String nameOrId) throws BlockException {
        Refcounts refcounts = node.refcounts();
        Snapshots.Entry sn = find(node.snapshotEntries(), nameOrId);
        long[] snapL1 = node.readTable(sn.l1TableOffset(), sn.l1Size());
        // 1. the snapshot's tree gains the active reference
        walkTree(snapL1, this::incrementRange);
        refcounts.writeIncreases();
        long[] oldL1 = node.activeL1().clone();
        if (snapL1.length > oldL1.length) {
            node.growL1(snapL1.length);
        }
        // 2. the active L1 becomes the snapshot's (its tables are shared now: no COPIED)
        long[] l1 = node.activeL1();
        for (int i = 0; i < l1.length; i++) {
            l1[i] = i < snapL1.length ? snapL1[i] & ~Qcow2Node.OFLAG_COPIED : 0;
        }
        writeTable(node.hostFile(), node.activeL1Offset(), l1);
        node.setSize(sn.diskSize());
        // 3. the old active tree loses its reference
        walkTree(oldL1, refcounts::queueFree);
        refcounts.applyQueuedFrees();
    }

    void delete(String nameOrId) throws BlockException {
        Refcounts refcounts = node.refcounts();
        List<Snapshots.Entry> entries = new ArrayList<>(node.snapshotEntries());
        Snapshots.Entry sn = find(entries, nameOrId);
        entries.remove(sn);
        long[] snapL1 = node.readTable(sn.l1TableOffset(), sn.l1Size());
        replaceSnapshotTable(entries); // from here on nothing refers to the snapshot's tree
        walkTree(snapL1, refcounts::queueFree);
        if (sn.l1Size() > 0) {
            refcounts.queueFree(sn.l1TableOffset(), (long) sn.l1Size() * 8);
        }
        refcounts.applyQueuedFrees();
        // Clusters the active tree now owns alone get their COPIED flag back.
        long[] l1 = node.activeL1();
        for (int i = 0; i < l1.length; i++) {
            long off = l1[i] & Qcow2Node.L1_OFFSET_MASK;
            if (off == 0) {
                continue;
            }
            boolean l2Owned = refcounts.get(off >>> clusterBits) == 1;
            if (l2Owned != ((l1[i] & Qcow2Node.OFLAG_COPIED) != 0)) {
                l1[i] = l2Owned ? l1[i] | Qcow2Node.OFLAG_COPIED : l1[i] & ~Qcow2Node.OFLAG_COPIED;
                node.markL1Dirty(i);
            }
            if (!l2Owned) {
                continue;
            }
            L2Cache.Table t = node.l2Table(off);
            for (int j = 0; j < t.words.length; j += step) {
                long w = t.words[j];
                long host = w & Qcow2Node.L2_OFFSET_MASK;
                if ((w & Qcow2Node.OFLAG_COMPRESSED) != 0 || host == 0) {
                    continue;
                }
                boolean owned = refcounts.get(host >>> clusterBits) == 1;
                if (owned != ((w & Qcow2Node.OFLAG_COPIED) != 0)) {
                    t.words[j] = owned ? w | Qcow2Node.OFLAG_COPIED : w & ~Qcow2Node.OFLAG_COPIED;
                    t.dirty = true;
                }
            }
        }
        node.flushLocked();
    }
}
