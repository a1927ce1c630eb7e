package org.blockhaus.api;

import java.util.List;
import java.util.function.Consumer;
import org.osgi.annotation.versioning.ProviderType;

/**
 * An open node of a chain as users see it: the core's wrapper around a driver's node, which
 * keeps the I/O contract, knows its children and closes itself when its driver goes away.
 */
@ProviderType
public interface Image extends BlockNode {
    /** QEMU's driver name of this node ("qcow2", "file"). */
    String driverName();

    /** The filename this node was opened from (as qemu-img shows it), or a json: description. */
    String filename();

    /** Children by role ("file", "backing", "data-file", "extents.0"), in opening order. */
    List<Child> children();

    /** The backing image, or null. */
    default Image backing() {
        for (Child c : children()) {
            if (c.role().equals("backing")) {
                return c.image();
            }
        }
        return null;
    }

    /** The "file" child, or null for a protocol. */
    default Image file() {
        for (Child c : children()) {
            if (c.role().equals("file")) {
                return c.image();
            }
        }
        return null;
    }

    /** The driver's own node, for optional interfaces (CheckableNode, SnapshotNode ...). */
    BlockNode driverNode();

    boolean isClosed();

    /** Called once when the node closes, with the reason (e.g. "driver 'qcow2' was removed"). */
    void onClose(Consumer<String> listener);

    record Child(String role, Image image) {
    }
}
