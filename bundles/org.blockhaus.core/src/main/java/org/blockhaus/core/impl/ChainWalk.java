package org.blockhaus.core.impl;

import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockStatus;
import org.blockhaus.api.Image;
import org.blockhaus.core.ChainStatus;

/**
 * The walk down a backing chain behind {@link org.blockhaus.core.BlockCore#chainStatus}: ask each
 * layer for its own status, stop at the first that allocates the range, shorten the range to what
 * every layer above answered for.
 */
public final class ChainWalk {
    /** Backing chains deeper than this are refused when opened; the walk trusts that bound. */
    private ChainWalk() {
    }

    public static ChainStatus status(Image top, long offset, long length) throws BlockException {
        int depth = 0;
        Image img = top;
        long len = length;
        while (true) {
            BlockStatus st = img.blockStatus(offset, len);
            if (st.isAllocated()) {
                return new ChainStatus(offset, st.length(), depth, true, st.flags() & ~BlockStatus.ALLOCATED,
                        st.hostOffset(), st.file());
            }
            Image backing = img.backing();
            if (backing == null) {
                // unallocated in the bottom layer: zeroes (a format without backing says so itself)
                return new ChainStatus(offset, st.length(), depth, false, BlockStatus.ZERO, -1, null);
            }
            long bsize = backing.size();
            if (offset >= bsize) {
                return new ChainStatus(offset, st.length(), depth + 1, false, BlockStatus.ZERO, -1, null);
            }
            len = Math.min(st.length(), bsize - offset);
            img = backing;
            depth++;
        }
    }
}
