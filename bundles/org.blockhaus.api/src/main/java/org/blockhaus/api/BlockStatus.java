package org.blockhaus.api;

/**
 * Answer to a block-status query for one range of one layer (QEMU's BDRV_BLOCK_* flags).
 *
 * @param offset     start of the range, guest view
 * @param length     bytes this answer covers (at least 1, at most what was asked)
 * @param flags      {@link #DATA}, {@link #ZERO}, {@link #ALLOCATED}
 * @param hostOffset where the data lives in {@code file}, or -1
 * @param file       the child node that holds the data at {@code hostOffset}, or null
 */
public record BlockStatus(long offset, long length, int flags, long hostOffset, BlockNode file) {
    /** Reads return data from this layer or from {@code file}. */
    public static final int DATA = 1;
    /** Reads return zeroes. */
    public static final int ZERO = 2;
    /** This layer decides the content (it does not come from a backing file). */
    public static final int ALLOCATED = 4;

    public BlockStatus {
        if (length <= 0) {
            throw new IllegalArgumentException("block status length must be positive: " + length);
        }
    }

    public boolean isData() {
        return (flags & DATA) != 0;
    }

    public boolean isZero() {
        return (flags & ZERO) != 0;
    }

    public boolean isAllocated() {
        return (flags & ALLOCATED) != 0;
    }

    public BlockStatus withLength(long newLength) {
        return new BlockStatus(offset, newLength, flags, hostOffset, file);
    }
}
