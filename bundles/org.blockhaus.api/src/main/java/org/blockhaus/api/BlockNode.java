package org.blockhaus.api;

import java.nio.ByteBuffer;
import java.util.Map;
import org.osgi.annotation.versioning.ConsumerType;

/**
 * One open layer of a driver chain: a format, a filter or a protocol.
 *
 * <p>A driver implements only what it does natively; optional operations default to
 * "unsupported" and the core emulates them where it can (write-zeroes by writing zeroes, FUA by
 * flushing, unaligned requests by read-modify-write). The core calls a driver only with requests
 * that fit its {@link #limits()} and lie inside {@link #size()} (protocols may be asked to read
 * past their end and return zeroes there). Nodes must accept calls from several threads at once.
 */
@ConsumerType
public interface BlockNode extends AutoCloseable {
    /** Write flag: the data must be on stable storage when the call returns. */
    int FUA = 1;
    /** writeZeroes flag: the zeroed range may be deallocated. */
    int MAY_UNMAP = 2;
    /** writeZeroes flag: fail with UNSUPPORTED rather than writing zero buffers. */
    int NO_FALLBACK = 4;
    /**
     * Write flag (qemu-img convert -c): store the data compressed where the format can. Such
     * writes start on a cluster boundary and cover whole clusters (or end at the image's end);
     * formats that cannot compress refuse them with UNSUPPORTED.
     */
    int COMPRESSED = 8;

    /** Virtual size in bytes. */
    long size() throws BlockException;

    /** Reads {@code dst.remaining()} bytes at {@code offset} into {@code dst}, filling it completely. */
    void read(long offset, ByteBuffer dst) throws BlockException;

    /** Writes all of {@code src} at {@code offset}; {@code flags} may hold {@link #FUA}. */
    void write(long offset, ByteBuffer src, int flags) throws BlockException;

    /** What this node does natively, emulates, or cannot do. */
    default Capabilities capabilities() {
        return Capabilities.BASIC;
    }

    /** Request geometry the core must respect when calling this node. */
    default Limits limits() {
        return Limits.DEFAULT;
    }

    /** Makes a range read as zeroes; flags may hold {@link #MAY_UNMAP}, {@link #FUA}, {@link #NO_FALLBACK}. */
    default void writeZeroes(long offset, long length, int flags) throws BlockException {
        throw BlockException.unsupported("write zeroes");
    }

    /** Tells the node a range is no longer needed; its content afterwards is unspecified. */
    default void discard(long offset, long length) throws BlockException {
        throw BlockException.unsupported("discard");
    }

    /** Makes every completed write durable. */
    default void flush() throws BlockException {
    }

    /**
     * Advisory: asks the node to bring a range into a cache it keeps (QEMU's prefetch request; an
     * NBD client sends NBD_CMD_CACHE where the server offers it). The content does not change;
     * nodes without such a cache do nothing.
     */
    default void prefetch(long offset, long length) throws BlockException {
    }

    /**
     * Describes the range starting at {@code offset}, for this layer only: the answer covers a
     * prefix of at most {@code length} bytes with one kind of content. Nodes that do not know say
     * "data, allocated" for the whole range.
     */
    default BlockStatus blockStatus(long offset, long length) throws BlockException {
        return new BlockStatus(offset, length, BlockStatus.DATA | BlockStatus.ALLOCATED, -1, null);
    }

    /** Changes the size; {@code exact} forbids rounding, {@code prealloc} says how to fill growth. */
    default void truncate(long size, boolean exact, Preallocation prealloc) throws BlockException {
        throw BlockException.unsupported("resize");
    }

    /** Bytes the node uses on its host storage (qemu-img's "disk size"), or -1 if unknown. */
    default long allocatedSize() throws BlockException {
        return -1;
    }

    /**
     * Extra facts for {@code info}: qemu-img's JSON field names as keys ("cluster-size",
     * "format-specific", "backing-filename", "dirty-flag", "encrypted" ...). Values are
     * strings, numbers, booleans, lists or maps, so one renderer can show them.
     */
    default Map<String, Object> info() throws BlockException {
        return Map.of();
    }

    /** Whether the content of a freshly created node of this kind reads as zeroes. */
    default boolean hasZeroInit() {
        return false;
    }

    @Override
    void close() throws BlockException;
}
