package org.blockhaus.api.spi;

import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;

/** A format node that can check (and repair) its own metadata. */
public interface CheckableNode extends BlockNode {
    CheckResult check(CheckResult.Repair repair) throws BlockException;
}
