package org.blockhaus.api.spi;

import java.util.List;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;

/** A format node with internal snapshots (qcow2). */
public interface SnapshotNode extends BlockNode {
    /** One internal snapshot, with qemu-img's JSON names. */
    record Snapshot(String id, String name, long vmStateSize, long dateSec, long dateNsec,
            long vmClockNsec, long icount) {
    }

    List<Snapshot> snapshots() throws BlockException;

    void createSnapshot(String name) throws BlockException;

    void applySnapshot(String nameOrId) throws BlockException;

    void deleteSnapshot(String nameOrId) throws BlockException;

    /**
     * Makes a node opened read-only show an internal snapshot instead of the active state, until it
     * is closed (qemu's temporary snapshot load behind {@code convert -l} and {@code measure -l}).
     * The snapshot must match {@code id} and {@code name}, each ignored when null. Fails with
     * {@code NOT_FOUND} "Can't find snapshot" when none matches, and on a read-write node.
     */
    default void loadSnapshotReadOnly(String id, String name) throws BlockException {
        throw BlockException.unsupported("Loading an internal snapshot read-only");
    }
}
