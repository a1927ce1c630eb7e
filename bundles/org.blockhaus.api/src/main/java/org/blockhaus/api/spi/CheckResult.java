package org.blockhaus.api.spi;

/**
 * Result of a consistency check, with qemu-img check's counters (its JSON names in comments).
 * Counts of -1 mean "not known for this format".
 */
public record CheckResult(
        long corruptions,          // corruptions
        long leaks,                // leaks
        long checkErrors,          // check-errors
        long corruptionsFixed,     // corruptions-fixed
        long leaksFixed,           // leaks-fixed
        long imageEndOffset,       // image-end-offset
        long totalClusters,        // total-clusters
        long allocatedClusters,    // allocated-clusters
        long fragmentedClusters,   // fragmented-clusters
        long compressedClusters) { // compressed-clusters

    public enum Repair { NONE, LEAKS, ALL }
}
