package org.blockhaus.core.impl;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.ReentrantReadWriteLock;
import java.util.function.Consumer;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.BlockStatus;
import org.blockhaus.api.Capabilities;
import org.blockhaus.api.Capabilities.Feature;
import org.blockhaus.api.Image;
import org.blockhaus.api.Limits;
import org.blockhaus.api.Preallocation;

/**
 * The core's wrapper around every node a driver returns. It keeps QEMU's I/O contract in one
 * place so drivers stay small: bounds and read-only checks, alignment with read-modify-write,
 * splitting at the node's maximum transfer, emulated write-zeroes and FUA. It also knows the
 * node's place in the graph, so that when a driver goes away every node above it is closed.
 */
final class ManagedNode implements Image {
    /** How long close waits for requests in flight before closing anyway. */
    private static final long CLOSE_WAIT_SECONDS = 30;
    private static final int ZERO_CHUNK = 1 << 20;
    /** qemu's BDRV_MAX_LENGTH: the largest size a node may be given (2^63 - 1, rounded down to 1 GiB). */
    static final long MAX_LENGTH = Long.MAX_VALUE & -(1L << 30);

    private final String driverName;
    private final String filename;
    private final BlockNode node;
    private final boolean readOnly;
    /** cache.no-flush: flushes are not passed on (qemu's "unsafe" cache mode). */
    private final boolean noFlush;
    private final Limits limits;
    private final Capabilities caps;
    private final List<Child> children = new CopyOnWriteArrayList<>();
    private final List<ManagedNode> parents = new CopyOnWriteArrayList<>();
    private final List<Consumer<String>> closeListeners = new CopyOnWriteArrayList<>();
    private final ReentrantReadWriteLock lifecycle = new ReentrantReadWriteLock();
    /**
     * Read-modify-write cycles run alone (write lock); aligned writes share the read lock, so
     * none of them can land between a cycle's read and its write and be lost. Nodes without an
     * alignment never read-modify-write and take neither.
     */
    private final ReentrantReadWriteLock rmw = new ReentrantReadWriteLock();
    private final Runnable onClosed;
    private volatile boolean closed;
    /** What defines this node, for the json: names of the nodes above it (see NodeNames). */
    private volatile Map<String, Object> fullOpenOptions = Map.of();

    ManagedNode(String driverName, String filename, BlockNode node, boolean readOnly, boolean noFlush,
            List<Child> children, Runnable onClosed) {
        this.noFlush = noFlush;
        this.driverName = driverName;
        this.filename = filename;
        this.node = node;
        this.readOnly = readOnly;
        Limits l = node.limits();
        this.limits = l == null ? Limits.DEFAULT : l;
        Capabilities c = node.capabilities();
        this.caps = c == null ? Capabilities.BASIC : c;
        this.onClosed = onClosed;
        for (Child child : children) {
            this.children.add(child);
            ((ManagedNode) child.image()).parents.add(this);
        }
    }

    @Override public String driverName() { return driverName; }
    @Override public String filename() { return filename; }
    @Override public List<Child> children() { return List.copyOf(children); }
    @Override public BlockNode driverNode() { return node; }
    @Override public boolean isClosed() { return closed; }
    @Override public Limits limits() { return limits; }
    @Override public boolean hasZeroInit() { return node.hasZeroInit(); }
    boolean readOnly() { return readOnly; }
    Map<String, Object> fullOpenOptions() { return fullOpenOptions; }
    void fullOpenOptions(Map<String, Object> options) { this.fullOpenOptions = Map.copyOf(options); }

    @Override
    public Capabilities capabilities() {
        // What the core adds: write-zeroes and FUA always work (emulated where not native).
        Capabilities.Builder b = caps.toBuilder();
        if (!readOnly) {
            if (!caps.can(Feature.WRITE_ZEROES)) {
                b.with(Feature.WRITE_ZEROES, Capabilities.Support.EMULATE);
            }
            if (!caps.can(Feature.FUA)) {
                b.with(Feature.FUA, Capabilities.Support.EMULATE);
            }
        } else {
            b.with(Feature.WRITE, Capabilities.Support.NONE);
        }
        return b.build();
    }

    @Override
    public void onClose(Consumer<String> listener) {
        closeListeners.add(listener);
    }

    // ---- I/O contract -------------------------------------------------------------------

    private void enter() throws BlockException {
        lifecycle.readLock().lock();
        if (closed) {
            lifecycle.readLock().unlock();
            throw new BlockException(Reason.CLOSED, "Node '" + filename + "' (" + driverName + ") is closed");
        }
    }

    private void exit() {
        lifecycle.readLock().unlock();
    }

    private void checkRange(long offset, long length, long size) throws BlockException {
        if (offset < 0 || length < 0 || offset > size || length > size - offset) {
            throw new BlockException(Reason.OUT_OF_RANGE, "Request out of range: offset " + offset + ", length "
                    + length + ", image size " + size);
        }
    }

    private void checkWritable() throws BlockException {
        if (readOnly) {
            throw new BlockException(Reason.READ_ONLY, "Block node is read-only");
        }
    }

    @Override
    public long size() throws BlockException {
        enter();
        try {
            return node.size();
        } finally {
            exit();
        }
    }

    @Override
    public void read(long offset, ByteBuffer dst) throws BlockException {
        enter();
        try {
            checkRange(offset, dst.remaining(), node.size());
            readAligned(offset, dst);
        } finally {
            exit();
        }
    }

    private void readAligned(long offset, ByteBuffer dst) throws BlockException {
        int align = limits.requestAlignment();
        int len = dst.remaining();
        if (len == 0) {
            return;
        }
        if (align > 1 && ((offset | len) & (align - 1)) != 0) {
            long start = offset & -align;
            long end = roundUp(offset + len, align);
            ByteBuffer bounce = ByteBuffer.allocate(Math.toIntExact(end - start));
            readSplit(start, bounce);
            bounce.position((int) (offset - start)).limit((int) (offset - start) + len);
            dst.put(bounce);
            return;
        }
        readSplit(offset, dst);
    }

    private void readSplit(long offset, ByteBuffer dst) throws BlockException {
        int max = maxTransfer();
        int limit = dst.limit();
        long at = offset;
        try {
            while (dst.hasRemaining()) {
                int n = Math.min(dst.remaining(), max);
                dst.limit(dst.position() + n);
                node.read(at, dst);
                at += n;
                dst.position(dst.limit()).limit(limit);
            }
        } finally {
            dst.limit(limit);
        }
    }

    private int maxTransfer() {
        int max = limits.maxTransfer();
        if (max <= 0) {
            max = 64 << 20;
        }
        int align = limits.requestAlignment();
        return Math.max(align, max & -align);
    }

    @Override
    public void write(long offset, ByteBuffer src, int flags) throws BlockException {
        enter();
        try {
            checkWritable();
            checkRange(offset, src.remaining(), node.size());
            writeAligned(offset, src, flags);
        } finally {
            exit();
        }
    }

    private void writeAligned(long offset, ByteBuffer src, int flags) throws BlockException {
        int align = limits.requestAlignment();
        int len = src.remaining();
        if (len == 0) {
            return;
        }
        if (align > 1 && ((offset | len) & (align - 1)) != 0) {
            long start = offset & -align;
            long end = roundUp(offset + len, align);
            ByteBuffer bounce = ByteBuffer.allocate(Math.toIntExact(end - start));
            rmw.writeLock().lock();
            try {
                // Only the partial first and last blocks need their old content.
                readSplit(start, bounce.duplicate().limit(align));
                if (end - align > start) {
                    readSplit(end - align, bounce.duplicate().position((int) (end - align - start)));
                }
                bounce.position((int) (offset - start));
                bounce.put(src);
                bounce.clear();
                writeSplit(start, bounce, flags);
            } finally {
                rmw.writeLock().unlock();
            }
            return;
        }
        if (align > 1) {
            rmw.readLock().lock();
            try {
                writeSplit(offset, src, flags);
            } finally {
                rmw.readLock().unlock();
            }
            return;
        }
        writeSplit(offset, src, flags);
    }

    private void writeSplit(long offset, ByteBuffer src, int flags) throws BlockException {
        boolean emulateFua = (flags & FUA) != 0 && !caps.isNative(Feature.FUA);
        int driverFlags = emulateFua ? flags & ~FUA : flags;
        int max = maxTransfer();
        int limit = src.limit();
        long at = offset;
        try {
            while (src.hasRemaining()) {
                int n = Math.min(src.remaining(), max);
                src.limit(src.position() + n);
                node.write(at, src, driverFlags);
                at += n;
                src.position(src.limit()).limit(limit);
            }
        } finally {
            src.limit(limit);
        }
        if (emulateFua && !noFlush) {
            node.flush();
        }
    }

    @Override
    public void writeZeroes(long offset, long length, int flags) throws BlockException {
        enter();
        try {
            checkWritable();
            checkRange(offset, length, node.size());
            if (length == 0) {
                return;
            }
            int align = Math.max(limits.requestAlignment(), 1);
            long head = offset & (align - 1);
            long start = offset;
            long end = offset + length;
            // Unaligned edges go through the ordinary write path (read-modify-write).
            if (head != 0) {
                long n = Math.min(align - head, length);
                writeAligned(start, ByteBuffer.allocate((int) n), flags);
                start += n;
            }
            long tailStart = Math.max(start, end & -align);
            if (tailStart < end) {
                writeAligned(tailStart, ByteBuffer.allocate((int) (end - tailStart)), flags);
                end = tailStart;
            }
            if (start >= end) {
                return;
            }
            if (align > 1) {
                rmw.readLock().lock(); // no read-modify-write may straddle the zeroing
            }
            try {
                zeroAligned(start, end, flags);
            } finally {
                if (align > 1) {
                    rmw.readLock().unlock();
                }
            }
        } finally {
            exit();
        }
    }

    /** The aligned middle of a write-zeroes: the driver's own, else zero buffers. */
    private void zeroAligned(long start, long end, int flags) throws BlockException {
        if (caps.can(Feature.WRITE_ZEROES)) {
            try {
                boolean emulateFua = (flags & FUA) != 0 && !caps.isNative(Feature.FUA);
                node.writeZeroes(start, end - start, emulateFua ? flags & ~FUA : flags);
                if (emulateFua && !noFlush) {
                    node.flush();
                }
                return;
            } catch (BlockException e) {
                if (e.reason() != Reason.UNSUPPORTED) {
                    throw e;
                }
            }
        }
        if ((flags & NO_FALLBACK) != 0) {
            throw BlockException.unsupported("write zeroes without fallback");
        }
        ByteBuffer zeroes = ByteBuffer.allocateDirect((int) Math.min(ZERO_CHUNK, end - start));
        for (long at = start; at < end; ) {
            int n = (int) Math.min(zeroes.capacity(), end - at);
            zeroes.clear().limit(n);
            writeSplit(at, zeroes, flags & FUA);
            at += n;
        }
    }

    @Override
    public void prefetch(long offset, long length) throws BlockException {
        enter();
        try {
            checkRange(offset, length, node.size());
            if (length == 0) {
                return;
            }
            try {
                node.prefetch(offset, length);
            } catch (BlockException e) {
                if (e.reason() != Reason.UNSUPPORTED) {
                    throw e;
                }
            }
        } finally {
            exit();
        }
    }

    @Override
    public void discard(long offset, long length) throws BlockException {
        enter();
        try {
            checkWritable();
            checkRange(offset, length, node.size());
            if (length == 0 || !caps.can(Feature.DISCARD)) {
                return; // discard is advisory: a node that cannot discard just keeps the data
            }
            int align = Math.max(limits.discardAlignment(), limits.requestAlignment());
            long start = roundUp(offset, align);
            long end = (offset + length) & -(long) align;
            if (start < end) {
                try {
                    node.discard(start, end - start);
                } catch (BlockException e) {
                    if (e.reason() != Reason.UNSUPPORTED) {
                        throw e;
                    }
                }
            }
        } finally {
            exit();
        }
    }

    @Override
    public void flush() throws BlockException {
        enter();
        try {
            if (!readOnly && !noFlush) {
                node.flush();
            }
        } finally {
            exit();
        }
    }

    @Override
    public BlockStatus blockStatus(long offset, long length) throws BlockException {
        enter();
        try {
            long size = node.size();
            checkRange(offset, length, size);
            if (length == 0) {
                throw BlockException.invalid("block status of an empty range");
            }
            BlockStatus s = node.blockStatus(offset, length);
            if (s == null || s.offset() != offset || s.length() <= 0) {
                throw new BlockException(Reason.IO, "Driver '" + driverName + "' answered block status wrongly at "
                        + offset);
            }
            return s.length() > length ? s.withLength(length) : s;
        } finally {
            exit();
        }
    }

    @Override
    public void truncate(long size, boolean exact, Preallocation prealloc) throws BlockException {
        enter();
        try {
            checkWritable();
            if (size < 0) {
                throw BlockException.invalid("Image size cannot be negative");
            }
            if (size > MAX_LENGTH) {
                throw BlockException.invalid("offset(" + size + ") exceeds maximum(" + MAX_LENGTH + ")");
            }
            node.truncate(size, exact, prealloc);
        } finally {
            exit();
        }
    }

    @Override
    public long allocatedSize() throws BlockException {
        enter();
        try {
            return node.allocatedSize();
        } finally {
            exit();
        }
    }

    @Override
    public Map<String, Object> info() throws BlockException {
        enter();
        try {
            return node.info();
        } finally {
            exit();
        }
    }

    // ---- life cycle ---------------------------------------------------------------------

    @Override
    public void close() throws BlockException {
        close("closed by its user");
    }

    /**
     * Closes this node and then its children that no other parent uses. Waits for requests in
     * flight (bounded), so nothing is cut off half-written.
     */
    void close(String reason) throws BlockException {
        BlockException failure = null;
        boolean locked = false;
        try {
            locked = lifecycle.writeLock().tryLock(CLOSE_WAIT_SECONDS, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        try {
            if (closed) {
                return;
            }
            closed = true;
            try {
                if (!readOnly && !noFlush) {
                    node.flush();
                }
            } catch (BlockException | RuntimeException e) {
                failure = asBlock(e);
            }
            try {
                node.close();
            } catch (BlockException | RuntimeException e) {
                failure = failure == null ? asBlock(e) : failure;
            }
        } finally {
            if (locked) {
                lifecycle.writeLock().unlock();
            }
        }
        for (Child c : children) {
            ManagedNode child = (ManagedNode) c.image();
            child.parents.remove(this);
            if (child.parents.isEmpty()) {
                try {
                    child.close(reason);
                } catch (BlockException e) {
                    failure = failure == null ? e : failure;
                }
            }
        }
        onClosed.run();
        for (Consumer<String> l : closeListeners) {
            try {
                l.accept(reason);
            } catch (RuntimeException ignored) {
                // a listener's failure must not stop the others from hearing about the close
            }
        }
        if (failure != null) {
            throw failure;
        }
    }

    /** Closes every node that uses this one (transitively), then this one: its driver is leaving. */
    void closeWithUsers(String reason) {
        for (ManagedNode p : List.copyOf(parents)) {
            p.closeWithUsers(reason);
        }
        try {
            close(reason);
        } catch (BlockException ignored) {
            // the driver is leaving; the close listeners already carry the reason
        }
    }

    List<ManagedNode> parents() {
        return new ArrayList<>(parents);
    }

    private static BlockException asBlock(Exception e) {
        return e instanceof BlockException be ? be : new BlockException(Reason.IO, String.valueOf(e.getMessage()), e);
    }

    static long roundUp(long v, long align) {
        return Math.addExact(v, align - 1) & -align;
    }

    @Override
    public String toString() {
        return driverName + ":" + filename;
    }
}
