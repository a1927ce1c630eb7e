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
}
