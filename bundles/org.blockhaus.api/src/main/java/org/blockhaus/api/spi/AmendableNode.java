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
}
