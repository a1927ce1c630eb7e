package org.blockhaus.protocol.nbd;

import static org.blockhaus.nbd.common.Nbd.*;

import java.nio.ByteBuffer;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicInteger;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.BlockStatus;
import org.blockhaus.api.Capabilities;
import org.blockhaus.api.Capabilities.Feature;
import org.blockhaus.api.Capabilities.Support;
import org.blockhaus.api.Limits;

/**
 * An open NBD export. What the server offers (transmission flags, block sizes, base:allocation)
 * becomes the node's capabilities and limits; every operation is one or more NBD requests.
 */
final class NbdNode implements BlockNode {
    /** Write-zeroes and trim are split into requests of at most this many bytes (lengths are 32-bit). */
    private static final int MAX_RANGE = 1 << 30;

    /** With multi-conn: every connection to the export, requests spread over them. */
    private final List<ConnectionSlot> slots;
    private final AtomicInteger next = new AtomicInteger();
    private final NbdConnection.Address address;
    private final NbdConnection.Export export;
    private final boolean readOnly;
    private final Capabilities caps;
    private final Limits limits;

    /** One request on one connection; run again after a reconnect, so it must be repeatable. */
    private interface Request<T> {
        T on(NbdConnection c) throws BlockException;
    }

    NbdNode(List<NbdConnection> connections, boolean readOnly) {
        this(connections, readOnly, null, java.time.Duration.ZERO);
    }

    /**
     * @param connector      opens another connection to the export (for reconnects); may be null
     *                       when {@code reconnectDelay} is zero
     * @param reconnectDelay QEMU's reconnect-delay
     */
    NbdNode(List<NbdConnection> connections, boolean readOnly, ConnectionSlot.Connector connector,
            java.time.Duration reconnectDelay) {
        this.slots = connections.stream().map(c -> new ConnectionSlot(c, connector, reconnectDelay)).toList();
        NbdConnection connection = connections.getFirst();
        this.address = connection.address();
        this.export = connection.export();
        this.readOnly = readOnly || export.has(FLAG_READ_ONLY);
        Capabilities.Builder b = Capabilities.builder();
        if (!this.readOnly) {
            b.with(Feature.WRITE, Support.NATIVE);
            if (export.has(FLAG_SEND_FUA)) {
                b.with(Feature.FUA, Support.NATIVE);
            }
            if (export.has(FLAG_SEND_TRIM)) {
                b.with(Feature.DISCARD, Support.NATIVE);
            }
            if (export.has(FLAG_SEND_WRITE_ZEROES)) {
                b.with(Feature.WRITE_ZEROES, Support.NATIVE);
            }
        }
        if (export.has(FLAG_SEND_FLUSH)) {
            b.with(Feature.FLUSH, Support.NATIVE);
        }
        if (export.baseAllocationId() >= 0) {
            b.with(Feature.BLOCK_STATUS, Support.NATIVE);
        }
        this.caps = b.build();
        this.limits = new Limits(export.minBlock(), export.maxBlock(), export.minBlock(), export.minBlock(),
                export.preferredBlock());
    }

    @Override
    public long size() {
        return export.size();
    }

    @Override
    public Capabilities capabilities() {
        return caps;
    }

    @Override
    public Limits limits() {
        return limits;
    }

    @Override
    public void read(long offset, ByteBuffer dst) throws BlockException {
        long size = export.size();
        while (dst.hasRemaining()) {
            if (offset >= size) {
                // Protocols read zeroes past their end (the core may round a last unaligned block up).
                while (dst.hasRemaining()) {
                    dst.put((byte) 0);
                }
                return;
            }
            int n = (int) Math.min(Math.min(dst.remaining(), export.maxBlock()), size - offset);
            int limit = dst.limit();
            int start = dst.position();
            dst.limit(start + n);
            long at = offset;
            try {
                run(pick(), c -> {
                    c.read(at, dst.position(start));
                    return null;
                });
            } finally {
                dst.limit(limit);
            }
            offset += n;
        }
    }

    @Override
    public void write(long offset, ByteBuffer src, int flags) throws BlockException {
        checkWritable();
        checkRange(offset, src.remaining());
        boolean fua = (flags & FUA) != 0;
        int nbdFlags = fua && export.has(FLAG_SEND_FUA) ? CMD_FLAG_FUA : 0;
        while (src.hasRemaining()) {
            int n = Math.min(src.remaining(), export.maxBlock());
            int limit = src.limit();
            int start = src.position();
            src.limit(start + n);
            long at = offset;
            try {
                run(pick(), c -> {
                    c.write(at, src.position(start), nbdFlags);
                    return null;
                });
            } finally {
                src.limit(limit);
            }
            offset += n;
        }
        if (fua && nbdFlags == 0) {
            flush();
        }
    }

    @Override
    public void writeZeroes(long offset, long length, int flags) throws BlockException {
        checkWritable();
        if (!export.has(FLAG_SEND_WRITE_ZEROES)) {
            throw BlockException.unsupported("write zeroes (the NBD server does not offer NBD_CMD_WRITE_ZEROES)");
        }
        checkRange(offset, length);
        int nbdFlags = 0;
        if ((flags & MAY_UNMAP) == 0) {
            nbdFlags |= CMD_FLAG_NO_HOLE;
        }
        if ((flags & NO_FALLBACK) != 0) {
            if (!export.has(FLAG_SEND_FAST_ZERO)) {
                throw BlockException.unsupported("fast write zeroes (the NBD server does not offer"
                        + " NBD_FLAG_SEND_FAST_ZERO)");
            }
            nbdFlags |= CMD_FLAG_FAST_ZERO;
        }
        boolean fua = (flags & FUA) != 0;
        if (fua && export.has(FLAG_SEND_FUA)) {
            nbdFlags |= CMD_FLAG_FUA;
        }
        ranges(CMD_WRITE_ZEROES, nbdFlags, offset, length);
        if (fua && !export.has(FLAG_SEND_FUA)) {
            flush();
        }
    }

    @Override
    public void discard(long offset, long length) throws BlockException {
        checkWritable();
        if (!export.has(FLAG_SEND_TRIM)) {
            throw BlockException.unsupported("discard (the NBD server does not offer NBD_CMD_TRIM)");
        }
        checkRange(offset, length);
        ranges(CMD_TRIM, 0, offset, length);
    }

    /** NBD_CMD_CACHE where the server offers it (NBD_FLAG_SEND_CACHE); advisory, so nothing otherwise. */
    @Override
    public void prefetch(long offset, long length) throws BlockException {
        if (!export.has(FLAG_SEND_CACHE)) {
            return;
        }
        checkRange(offset, length);
        ranges(CMD_CACHE, 0, offset, length);
    }

    private void ranges(int type, int flags, long offset, long length) throws BlockException {
        int chunk = MAX_RANGE & -export.minBlock();
        while (length > 0) {
            int n = (int) Math.min(length, chunk);
            long at = offset;
            run(pick(), c -> {
                c.command(type, flags, at, n);
                return null;
            });
            offset += n;
            length -= n;
        }
    }

    @Override
    public void flush() throws BlockException {
        if (export.has(FLAG_SEND_FLUSH) && !readOnly) {
            run(slots.getFirst(), c -> {
                c.command(CMD_FLUSH, 0, 0, 0);
                return null;
            });
        }
    }

    /**
     * base:allocation says "hole" (not allocated) and "zero" (reads as zeroes). A protocol has no
     * backing, so everything it describes belongs to this layer.
     */
    @Override
    public BlockStatus blockStatus(long offset, long length) throws BlockException {
        if (export.baseAllocationId() < 0 || offset >= export.size()) {
            return new BlockStatus(offset, length, BlockStatus.DATA | BlockStatus.ALLOCATED, offset, null);
        }
        int ask = (int) Math.min(Math.min(length, export.size() - offset), Integer.MAX_VALUE & -export.minBlock());
        NbdConnection.Extent e = run(pick(), c -> c.blockStatus(offset, ask));
        long n = Math.min(e.length(), length);
        int flags = BlockStatus.ALLOCATED;
        if ((e.flags() & STATE_HOLE) == 0) {
            flags |= BlockStatus.DATA;
        }
        if ((e.flags() & STATE_ZERO) != 0) {
            flags |= BlockStatus.ZERO;
        }
        return new BlockStatus(offset, n, flags, offset, null);
    }

    @Override
    public Map<String, Object> info() {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("nbd-server", address.toString());
        m.put("connections", slots.size());
        m.put("structured-replies", export.structured());
        m.put("block-status", export.baseAllocationId() >= 0);
        return m;
    }

    /**
     * The connection for the next request. Spreading is safe only because the server set
     * NBD_FLAG_CAN_MULTI_CONN: then a flush on any connection covers writes completed on all.
     */
    private ConnectionSlot pick() {
        if (slots.size() == 1) {
            return slots.getFirst();
        }
        return slots.get(Math.floorMod(next.getAndIncrement(), slots.size()));
    }

    /** Runs {@code r} on the slot's connection, again after a reconnect if reconnect-delay allows. */
    private static <T> T run(ConnectionSlot slot, Request<T> r) throws BlockException {
        while (true) {
            NbdConnection c = slot.current();
            try {
                return r.on(c);
            } catch (BlockException e) {
                slot.retryOrThrow(c, e);
            }
        }
    }

    @Override
    public void close() {
        for (ConnectionSlot s : slots) {
            s.close();
        }
    }

    private void checkWritable() throws BlockException {
        if (readOnly) {
            throw new BlockException(Reason.READ_ONLY, "NBD export is read-only");
        }
    }

    private void checkRange(long offset, long length) throws BlockException {
        if (offset < 0 || length < 0 || offset > export.size() || length > export.size() - offset) {
            throw new BlockException(Reason.OUT_OF_RANGE, "Request beyond the end of the NBD export: offset "
                    + offset + ", length " + length + ", export size " + export.size());
        }
    }
}
