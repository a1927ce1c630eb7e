package org.blockhaus.core;

import org.blockhaus.api.BlockNode;
import org.blockhaus.api.BlockStatus;

/**
 * Block status of a whole backing chain for one range (qemu's block status "above" a base, with
 * the allocation depth qemu-img map reports).
 *
 * @param offset     start of the range, guest view
 * @param length     bytes this answer covers (at least 1)
 * @param depth      the layer that decides the range: 0 is the top; when no layer allocates it,
 *                   the layer where the walk ended (the bottom, or the layer below a backing file
 *                   that is shorter than the range's offset)
 * @param allocated  the layer at {@code depth} allocates the range (qemu-img map's "present")
 * @param flags      {@link BlockStatus#DATA} and {@link BlockStatus#ZERO} as the whole chain reads
 * @param hostOffset where the data lives in {@code file}, or -1
 * @param file       the node holding the data at {@code hostOffset}, or null
 */
public record ChainStatus(long offset, long length, int depth, boolean allocated, int flags, long hostOffset,
        BlockNode file) {
    public ChainStatus {
        if (length <= 0) {
            throw new IllegalArgumentException("chain status length must be positive: " + length);
        }
    }

    /** Reads of the range return zeroes. */
    public boolean isZero() {
        return (flags & BlockStatus.ZERO) != 0;
    }

    /** Reads of the range return data from some layer. */
    public boolean isData() {
        return (flags & BlockStatus.DATA) != 0;
    }

    /** The top layer itself allocates the range (what convert -B copies). */
    public boolean allocatedInTop() {
        return allocated && depth == 0;
    }
}
