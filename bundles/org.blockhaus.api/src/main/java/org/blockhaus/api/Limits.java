package org.blockhaus.api;

/**
 * Request geometry of a node (QEMU's BlockLimits). The core aligns and splits requests so that a
 * driver only ever sees requests that fit.
 *
 * @param requestAlignment  every offset and length is a multiple of this (1 = byte granular)
 * @param maxTransfer       largest read or write in one call, 0 = no limit
 * @param discardAlignment  preferred discard granularity, 0 = none
 * @param zeroAlignment     preferred write-zeroes granularity, 0 = none
 * @param optimalTransfer   transfer size that performs best, 0 = unknown
 */
public record Limits(int requestAlignment, int maxTransfer, int discardAlignment, int zeroAlignment,
        int optimalTransfer) {
    public static final Limits DEFAULT = new Limits(1, 0, 0, 0, 0);

    public Limits {
        if (requestAlignment < 1 || Integer.bitCount(requestAlignment) != 1) {
            throw new IllegalArgumentException("request alignment must be a power of two: " + requestAlignment);
        }
        if (maxTransfer < 0 || discardAlignment < 0 || zeroAlignment < 0 || optimalTransfer < 0) {
            throw new IllegalArgumentException("limits must not be negative");
        }
    }

    public Limits withRequestAlignment(int alignment) {
        return new Limits(alignment, maxTransfer, discardAlignment, zeroAlignment, optimalTransfer);
    }
}
