package org.blockhaus.api.spi;

import java.util.function.Consumer;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;

/** A format node that can check (and repair) its own metadata. */
public interface CheckableNode extends BlockNode {
    CheckResult check(CheckResult.Repair repair) throws BlockException;

    /**
     * Like {@link #check(CheckResult.Repair)}, and tells {@code findings} about each problem found
     * or repaired, one line each, in the words qemu-img prints on stderr for the same format
     * ("Leaked cluster 8 refcount=1 reference=0", "Repairing cluster 5 refcount=0 reference=1").
     * A check that cannot go on (qemu-img's "Check failed") ends in a {@link BlockException}.
     * Drivers without per-finding messages keep this default, which reports none.
     */
    default CheckResult check(CheckResult.Repair repair, Consumer<String> findings) throws BlockException {
        return check(repair);
    }
}
