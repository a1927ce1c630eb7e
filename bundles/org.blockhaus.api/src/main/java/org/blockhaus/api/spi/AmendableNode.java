package org.blockhaus.api.spi;

import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.Options;

/** A format node whose create options can be changed in place (qemu-img amend). */
public interface AmendableNode extends BlockNode {
    void amend(Options createOptions, boolean force) throws BlockException;
}
