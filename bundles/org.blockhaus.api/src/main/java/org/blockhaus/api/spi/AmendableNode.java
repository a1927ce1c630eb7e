package org.blockhaus.api.spi;

import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.Options;

/** A format node whose create options can be changed in place (qemu-img amend). */
public interface AmendableNode extends BlockNode {
    void amend(Options createOptions, boolean force) throws BlockException;

    /**
     * Points the image at another backing file (qemu-img rebase): only the name and format in
     * the image's metadata change; {@code filename} null removes the backing file.
     */
    default void changeBackingFile(String filename, String format) throws BlockException {
        throw new BlockException(BlockException.Reason.UNSUPPORTED, "Changing the backing file is not supported");
    }

    /**
     * Drops every mapping of this layer so that all reads go to the backing file again (qemu's
     * make_empty, which qemu-img commit uses on the committed image); unlike a discard, nothing is
     * left as a zero cluster.
     */
    default void makeEmpty() throws BlockException {
        throw new BlockException(BlockException.Reason.UNSUPPORTED, "Emptying the image is not supported");
    }
}
