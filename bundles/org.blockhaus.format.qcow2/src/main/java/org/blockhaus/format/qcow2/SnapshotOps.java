package org.blockhaus.format.qcow2;

import java.util.ArrayList;
import java.util.List;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;

/**
 * Creating, applying and deleting internal snapshots (spec: "Snapshots"). A snapshot is an L1
 * table of its own plus one more reference on everything that table reaches; the active state
 * then copies on write. Each operation is one {@link MetadataCommit}, so a writer killed at any
 * instant leaves the old state or the new one, never a mix that check calls corrupt. Callers hold
 * the node's lock and have flushed its metadata.
 */
final class SnapshotOps {
    private final Qcow2Node node;

    SnapshotOps(Qcow2Node node) {
        this.node = node;
    }

    void create(String name) throws BlockException {
        if (node.external()) {
            throw new BlockException(Reason.UNSUPPORTED, "qcow2: internal snapshots cannot be used with an"
                    + " external data file");
        }
        List<Snapshots.Entry> entries = new ArrayList<>(node.snapshotEntries());
        if (entries.size() >= Qcow2Header.MAX_SNAPSHOTS) {
            throw BlockException.invalid("qcow2: too many snapshots");
        }
        long[] l1 = node.activeL1();
        java.time.Instant now = java.time.Instant.now();
        // as qemu-img: wall time with microsecond precision, no VM clock, icount 0 for an offline snapshot;
        // the snapshot keeps the current tables, the active state continues in copies of them
        entries.add(new Snapshots.Entry(-1, l1.length, Snapshots.nextId(entries), name, now.getEpochSecond(),
                now.getNano() / 1000 * 1000, 0, 0, node.size(), 0));
        new MetadataCommit(node).commit(l1, l1.length, node.size(), entries, l1.clone());
    }

    private Snapshots.Entry find(List<Snapshots.Entry> entries, String nameOrId) throws BlockException {
        int idx = Snapshots.find(entries, nameOrId);
        if (idx < 0) {
            throw new BlockException(Reason.NOT_FOUND, "Can't find snapshot '" + nameOrId + "'");
        }
        return entries.get(idx);
    }

    void apply(String nameOrId) throws BlockException {
        List<Snapshots.Entry> entries = node.snapshotEntries();
        Snapshots.Entry sn = find(entries, nameOrId);
        long[] snapL1 = node.readTable(sn.l1TableOffset(), sn.l1Size());
        refuseTransientOverflow(snapL1, sn.name());
        int l1Length = Math.max(snapL1.length, node.activeL1().length);
        new MetadataCommit(node).commit(snapL1, l1Length, sn.diskSize(), entries, null);
    }

    /**
     * qemu 7.2 applies a snapshot by first adding a reference to every L2 table and data cluster
     * the snapshot reaches and only then dropping the active state's, so a cluster both share that
     * is already at the refcount width's maximum (3 with refcount_bits=2) makes it fail, although
     * the counts at the end would fit. Ours commits the end state at once; it refuses alike, so
     * the two agree on which images can go back to a snapshot (DifferentialWorkloadTest seeds 9037,
     * 9198, 9216). Compressed clusters are not looked at here.
     */
    private void refuseTransientOverflow(long[] snapL1, String name) throws BlockException {
        Refcounts refcounts = node.refcounts();
        long max = refcounts.maxRefcount();
        int clusterBits = node.header().clusterBits();
        int step = node.header().extendedL2() ? 2 : 1;
        int words = (1 << clusterBits) / 8;
        for (long e : snapL1) {
            long table = e & Qcow2Node.L1_OFFSET_MASK;
            if (table == 0) {
                continue;
            }
            boolean full = refcounts.get(table >>> clusterBits) >= max;
            if (!full) {
                long[] l2 = node.readTable(table, words);
                for (int j = 0; j < words && !full; j += step) {
                    long host = l2[j] & Qcow2Node.L2_OFFSET_MASK;
                    full = (l2[j] & Qcow2Node.OFLAG_COMPRESSED) == 0 && host != 0
                            && refcounts.get(host >>> clusterBits) >= max;
                }
            }
            if (full) {
                throw BlockException.invalid("Could not apply snapshot '" + name + "': a cluster it shares is at the"
                        + " refcount maximum (" + max + "), which applying it would exceed first (as qemu's"
                        + " \"Failed to load snapshot: Invalid argument\")");
            }
        }
    }

    void delete(String nameOrId) throws BlockException {
        List<Snapshots.Entry> entries = new ArrayList<>(node.snapshotEntries());
        entries.remove(find(entries, nameOrId));
        long[] l1 = node.activeL1();
        new MetadataCommit(node).commit(l1, l1.length, node.size(), entries, null);
    }
}
