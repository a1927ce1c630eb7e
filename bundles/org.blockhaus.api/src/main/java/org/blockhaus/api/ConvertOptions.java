package org.blockhaus.api;

/**
 * qemu-img convert's copy options.
 *
 * @param minSparse        -S: runs of zeroes at least this long (bytes, multiple of 512) become
 *                         holes; 0 writes everything (fully allocated target)
 * @param compress         -c: write compressed clusters where the target format can
 * @param targetIsZero     --target-is-zero / a fresh target: zero runs need not be written
 * @param skipUnallocated  with a backing target (-B): keep unallocated ranges unallocated
 * @param parallel         -m: coroutines in flight (1..16)
 * @param outOfOrder       -W: writes may complete out of order
 * @param bufferSize       bytes per request
 */
public record ConvertOptions(long minSparse, boolean compress, boolean targetIsZero, boolean skipUnallocated,
        int parallel, boolean outOfOrder, int bufferSize) {
    public static final ConvertOptions DEFAULT = new ConvertOptions(4096, false, false, false, 8, false, 2 << 20);

    public ConvertOptions {
        if (minSparse < 0 || parallel < 1 || parallel > 16 || bufferSize < 512) {
            throw new IllegalArgumentException("invalid convert options");
        }
    }

    public ConvertOptions withMinSparse(long v) { return new ConvertOptions(v, compress, targetIsZero, skipUnallocated, parallel, outOfOrder, bufferSize); }
    public ConvertOptions withCompress(boolean v) { return new ConvertOptions(minSparse, v, targetIsZero, skipUnallocated, parallel, outOfOrder, bufferSize); }
    public ConvertOptions withTargetIsZero(boolean v) { return new ConvertOptions(minSparse, compress, v, skipUnallocated, parallel, outOfOrder, bufferSize); }
    public ConvertOptions withSkipUnallocated(boolean v) { return new ConvertOptions(minSparse, compress, targetIsZero, v, parallel, outOfOrder, bufferSize); }
    public ConvertOptions withParallel(int v) { return new ConvertOptions(minSparse, compress, targetIsZero, skipUnallocated, v, outOfOrder, bufferSize); }
    public ConvertOptions withOutOfOrder(boolean v) { return new ConvertOptions(minSparse, compress, targetIsZero, skipUnallocated, parallel, v, bufferSize); }
}
