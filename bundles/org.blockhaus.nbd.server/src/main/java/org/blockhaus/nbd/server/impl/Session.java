package org.blockhaus.nbd.server.impl;

import org.blockhaus.nbd.common.Wire;
import static org.blockhaus.nbd.common.Nbd.*;

import java.io.EOFException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.ReentrantLock;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.BlockStatus;
import org.blockhaus.api.Capabilities;
import org.blockhaus.api.Image;
import org.blockhaus.nbd.server.NbdServer;

/**
 * One client of the server: the fixed newstyle handshake, then the transmission phase. Requests
 * are read by this session's thread, checked, and served on their own virtual threads, at most
 * {@code maxInFlight} of them and at most {@link #BYTE_BUDGET} bytes of payload at once, so a
 * client can neither make the server allocate without bound nor stall other clients.
 *
 * <p>Every request is validated before it reaches the node: lengths over 32 MiB, ranges past the
 * end of the export (or overflowing 64 bits), unknown commands and flags are answered with an NBD
 * error; only a bad request magic, an oversized write payload or a broken handshake drop the
 * connection (a hard disconnect, which the spec allows for protocol violations).
 */
final class Session {
    /** Payload bytes (reads and writes) one client may have in flight. */
    static final int BYTE_BUDGET = 64 << 20;
    /** Options one client may send before it is considered to be haggling forever. */
    static final int MAX_OPTIONS = 256;
    /** Longest option payload we read; names are at most 4 KiB, so this is generous. */
    static final int MAX_OPTION_LENGTH = 64 * 1024;
    /** Extents in one block status reply. */
    static final int MAX_EXTENTS = 2048;
    /** Context id of an export's first qemu:dirty-bitmap (after base:allocation and qemu:allocation-depth). */
    static final int FIRST_BITMAP_ID = ALLOCATION_DEPTH_ID + 1;
    /** Reads at least this long look for holes to send as NBD_REPLY_TYPE_OFFSET_HOLE. */
    static final int SPARSE_READ_MIN = 64 * 1024;
    private static final int ZERO_CHUNK = 1 << 20;

    private final ServerInstance server;
    private final SocketChannel ch;
    private final ReentrantLock sendLock = new ReentrantLock();
    private final CountDownLatch ended = new CountDownLatch(1);
    private volatile boolean transmitting;
    /** The socket, or TLS over it after NBD_OPT_STARTTLS. */
    private Wire wire;
    private boolean tlsActive;

    // negotiated state
    private boolean noZeroes;
    private boolean structured;
    private String metaExport;
    private boolean baseAllocation;
    private boolean allocationDepth;
    /** The negotiated qemu:dirty-bitmap contexts: indexes into the export's bitmaps. */
    private List<Integer> dirtyBitmaps = List.of();

    // transmission state
    private NbdServer.Export export;
    private BlockNode node;
    private long size;
    private boolean readOnly;
    private Semaphore window;
    private final Semaphore budget = new Semaphore(BYTE_BUDGET);

    Session(ServerInstance server, SocketChannel ch) {
        this.server = server;
        this.ch = ch;
        this.wire = new Wire.Plain(ch);
    }

    void run() {
        try {
            NbdServer.Export e = handshakeWithin(server.settings().handshakeTimeout().toNanos());
            if (e != null) {
                transmission(e);
            }
        } catch (IOException | RuntimeException e) {
            // the client went away or broke the protocol: drop it; other clients are unaffected
        } finally {
            close();
            ended.countDown();
        }
    }

    /** Server shutdown: stop reading requests; those in flight still get their replies. */
    void shutdown() {
        if (transmitting) {
            try {
                ch.shutdownInput();
            } catch (IOException e) {
                close();
            }
        } else {
            close();
        }
    }

    void awaitEnd(long nanos) {
        try {
            if (!ended.await(nanos, TimeUnit.NANOSECONDS)) {
                close();
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    private void close() {
        try {
            ch.close();
        } catch (IOException ignored) {
            // nothing left to do for this client
        }
    }

    // ---- handshake -------------------------------------------------------------------------

    private NbdServer.Export handshakeWithin(long nanos) throws IOException {
        Object guard = new Object();
        boolean[] done = {false};
        Thread watchdog = Thread.ofVirtual().start(() -> {
            try {
                TimeUnit.NANOSECONDS.sleep(nanos);
            } catch (InterruptedException e) {
                return;
            }
            synchronized (guard) {
                if (!done[0]) {
                    close(); // a client that trickles or stalls in the handshake loses its slot
                }
            }
        });
        try {
            NbdServer.Export e = handshake();
            synchronized (guard) {
                done[0] = true;
                if (!ch.isOpen()) {
                    return null;
                }
            }
            return e;
        } finally {
            watchdog.interrupt();
        }
    }

    private NbdServer.Export handshake() throws IOException {
        ByteBuffer hello = ByteBuffer.allocate(18);
        hello.putLong(NBDMAGIC).putLong(IHAVEOPT).putShort((short) (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)).flip();
        writeFully(hello);
        int clientFlags = read(4).getInt();
        if ((clientFlags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)) != 0) {
            return null; // the spec says to drop clients that set flags we do not know
        }
        noZeroes = (clientFlags & FLAG_C_NO_ZEROES) != 0;
        for (int count = 0; count < MAX_OPTIONS; count++) {
            ByteBuffer h = read(16);
            if (h.getLong() != IHAVEOPT) {
                return null;
            }
            int opt = h.getInt();
            long len = Integer.toUnsignedLong(h.getInt());
            if (len > MAX_OPTION_LENGTH) {
                return null; // not worth reading: names are at most 4 KiB
            }
            ByteBuffer data = read((int) len);
            if (server.settings().tls() != null && !tlsActive && opt != OPT_STARTTLS && opt != OPT_ABORT) {
                if (opt == OPT_EXPORT_NAME) {
                    return null; // cannot be refused with an error: disconnect
                }
                reply(opt, REP_ERR_TLS_REQD, "TLS is required: send NBD_OPT_STARTTLS first");
                continue;
            }
            if (server.closing() && opt != OPT_ABORT) {
                if (opt == OPT_EXPORT_NAME) {
                    return null;
                }
                reply(opt, REP_ERR_SHUTDOWN, "server is shutting down");
                continue;
            }
            switch (opt) {
                case OPT_EXPORT_NAME -> {
                    return exportName(data);
                }
                case OPT_ABORT -> {
                    reply(opt, REP_ACK);
                    return null;
                }
                case OPT_LIST -> list(data);
                case OPT_INFO, OPT_GO -> {
                    NbdServer.Export e = infoOrGo(opt, data);
                    if (e != null && opt == OPT_GO) {
                        return e;
                    }
                }
                case OPT_STRUCTURED_REPLY -> {
                    if (data.hasRemaining()) {
                        reply(opt, REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data");
                    } else {
                        structured = true;
                        reply(opt, REP_ACK);
                    }
                }
                case OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT -> metaContext(opt, data);
                case OPT_STARTTLS -> startTls(data);
                default -> reply(opt, REP_ERR_UNSUP, "option " + opt + " is not supported");
            }
        }
        return null; // endless option haggling
    }

    /** NBD_OPT_STARTTLS: acknowledge, then the TLS handshake; everything after it runs over TLS. */
    private void startTls(ByteBuffer data) throws IOException {
        org.blockhaus.nbd.common.TlsCreds creds = server.settings().tls();
        if (creds == null) {
            reply(OPT_STARTTLS, REP_ERR_UNSUP, "TLS is not configured on this server");
        } else if (tlsActive || data.hasRemaining()) {
            reply(OPT_STARTTLS, REP_ERR_INVALID, tlsActive ? "TLS is already active" : "STARTTLS takes no data");
        } else {
            reply(OPT_STARTTLS, REP_ACK);
            wire = creds.handshake(ch, null, 0); // a failed handshake ends the session
            tlsActive = true;
        }
    }

    private NbdServer.Export exportName(ByteBuffer data) throws IOException {
        String name = StandardCharsets.UTF_8.decode(data).toString();
        NbdServer.Export e = server.export(name);
        if (e == null) {
            return null; // NBD_OPT_EXPORT_NAME cannot report errors: the spec says to disconnect
        }
        if (!name.equals(metaExport)) {
            baseAllocation = false;
            allocationDepth = false;
            dirtyBitmaps = List.of();
        }
        long sz;
        try {
            sz = e.node().size();
        } catch (BlockException ex) {
            return null;
        }
        ByteBuffer b = ByteBuffer.allocate(noZeroes ? 10 : 134);
        b.putLong(sz).putShort((short) transmissionFlags(e)).position(b.capacity()).flip();
        writeFully(b);
        return e;
    }

    private void list(ByteBuffer data) throws IOException {
        if (data.hasRemaining()) {
            reply(OPT_LIST, REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
            return;
        }
        for (NbdServer.Export e : server.exports()) {
            byte[] name = e.name().getBytes(StandardCharsets.UTF_8);
            byte[] desc = e.description() == null ? new byte[0] : e.description().getBytes(StandardCharsets.UTF_8);
            ByteBuffer b = ByteBuffer.allocate(4 + name.length + desc.length);
            b.putInt(name.length).put(name).put(desc).flip();
            reply(OPT_LIST, REP_SERVER, b);
        }
        reply(OPT_LIST, REP_ACK);
    }

    /** NBD_OPT_INFO and NBD_OPT_GO; returns the export when the option succeeded. */
    private NbdServer.Export infoOrGo(int opt, ByteBuffer data) throws IOException {
        String name = string(data, data.remaining() - 2);
        if (name == null || data.remaining() < 2) {
            reply(opt, REP_ERR_INVALID, "malformed request");
            return null;
        }
        int n = Short.toUnsignedInt(data.getShort());
        if (data.remaining() != 2 * n) {
            reply(opt, REP_ERR_INVALID, "information request count does not match the length");
            return null;
        }
        List<Integer> wanted = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            wanted.add(Short.toUnsignedInt(data.getShort()));
        }
        NbdServer.Export e = server.export(name);
        if (e == null) {
            reply(opt, REP_ERR_UNKNOWN, "export '" + name + "' not present");
            return null;
        }
        long sz;
        try {
            sz = e.node().size();
        } catch (BlockException ex) {
            reply(opt, REP_ERR_UNKNOWN, "export '" + name + "' is not available: " + ex.getMessage());
            return null;
        }
        ByteBuffer info = ByteBuffer.allocate(12);
        info.putShort((short) INFO_EXPORT).putLong(sz).putShort((short) transmissionFlags(e)).flip();
        reply(opt, REP_INFO, info);
        if (wanted.contains(INFO_NAME)) {
            byte[] b = name.getBytes(StandardCharsets.UTF_8);
            reply(opt, REP_INFO, ByteBuffer.allocate(2 + b.length).putShort((short) INFO_NAME).put(b).flip());
        }
        if (wanted.contains(INFO_DESCRIPTION) && e.description() != null) {
            byte[] b = e.description().getBytes(StandardCharsets.UTF_8);
            reply(opt, REP_INFO, ByteBuffer.allocate(2 + b.length).putShort((short) INFO_DESCRIPTION).put(b).flip());
        }
        int min = minBlock(e.node());
        ByteBuffer bs = ByteBuffer.allocate(14);
        bs.putShort((short) INFO_BLOCK_SIZE).putInt(min).putInt(Math.max(4096, min)).putInt(MAX_PAYLOAD).flip();
        reply(opt, REP_INFO, bs);
        reply(opt, REP_ACK);
        if (opt == OPT_GO && !name.equals(metaExport)) {
            baseAllocation = false; // contexts were negotiated for another export
            allocationDepth = false;
            dirtyBitmaps = List.of();
        }
        return e;
    }

    /**
     * NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT: we offer base:allocation and QEMU's
     * qemu:allocation-depth and qemu:dirty-bitmap:NAME (docs/interop/nbd.rst). As qemu-nbd, a list
     * query of "qemu:" names every qemu context and "qemu:dirty-bitmap:" every bitmap; a set
     * query must name a context exactly.
     */
    private void metaContext(int opt, ByteBuffer data) throws IOException {
        String name = string(data, data.remaining());
        if (name == null || data.remaining() < 4) {
            reply(opt, REP_ERR_INVALID, "malformed request");
            return;
        }
        long count = Integer.toUnsignedLong(data.getInt());
        List<String> queries = new ArrayList<>();
        for (long i = 0; i < count; i++) {
            String q = string(data, data.remaining());
            if (q == null) {
                reply(opt, REP_ERR_INVALID, "malformed query");
                return;
            }
            queries.add(q);
        }
        if (data.hasRemaining()) {
            reply(opt, REP_ERR_INVALID, "trailing data after the queries");
            return;
        }
        if (opt == OPT_SET_META_CONTEXT && !structured) {
            reply(opt, REP_ERR_INVALID, "structured replies must be negotiated first");
            return;
        }
        if (server.export(name) == null) {
            reply(opt, REP_ERR_UNKNOWN, "export '" + name + "' not present");
            return;
        }
        boolean list = opt == OPT_LIST_META_CONTEXT;
        boolean base = list && queries.isEmpty();
        boolean offersDepth = server.export(name).allocationDepth();
        boolean depth = list && queries.isEmpty();
        for (String q : queries) {
            base |= q.equals(CONTEXT_BASE_ALLOCATION) || list && q.equals("base:");
            depth |= q.equals(CONTEXT_ALLOCATION_DEPTH) || list && q.equals("qemu:");
        }
        depth &= offersDepth;
        List<ExportedBitmap> offered = server.bitmaps(name);
        List<Integer> chosen = new ArrayList<>();
        for (int i = 0; i < offered.size(); i++) {
            String ctx = offered.get(i).context();
            boolean all = list && queries.isEmpty();
            for (String q : queries) {
                all |= q.equals(ctx) || list && (q.equals("qemu:") || q.equals(ExportedBitmap.CONTEXT_PREFIX));
            }
            if (all) {
                chosen.add(i);
            }
        }
        if (base) {
            metaContextReply(opt, list ? 0 : BASE_ALLOCATION_ID, CONTEXT_BASE_ALLOCATION);
        }
        if (depth) {
            metaContextReply(opt, list ? 0 : ALLOCATION_DEPTH_ID, CONTEXT_ALLOCATION_DEPTH);
        }
        for (int i : chosen) {
            metaContextReply(opt, list ? 0 : FIRST_BITMAP_ID + i, offered.get(i).context());
        }
        if (!list) {
            metaExport = name;
            baseAllocation = base;
            allocationDepth = depth;
            dirtyBitmaps = List.copyOf(chosen);
        }
        reply(opt, REP_ACK);
    }

    private void metaContextReply(int opt, int id, String context) throws IOException {
        byte[] b = context.getBytes(StandardCharsets.UTF_8);
        reply(opt, REP_META_CONTEXT, ByteBuffer.allocate(4 + b.length).putInt(id).put(b).flip());
    }

    /** A 32-bit length and that many bytes of UTF-8, or null if it does not fit in {@code room}. */
    private static String string(ByteBuffer data, int room) {
        if (room < 4 || data.remaining() < 4) {
            return null;
        }
        long len = Integer.toUnsignedLong(data.getInt());
        if (len > MAX_STRING || len > room - 4 || len > data.remaining()) {
            return null;
        }
        ByteBuffer s = data.slice(data.position(), (int) len);
        data.position(data.position() + (int) len);
        return StandardCharsets.UTF_8.decode(s).toString();
    }

    private int transmissionFlags(NbdServer.Export e) {
        // CACHE on every export, read-only ones too, as qemu-nbd advertises it
        int f = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_CACHE;
        if (readOnly(e)) {
            f |= FLAG_READ_ONLY | FLAG_CAN_MULTI_CONN;
        } else {
            f |= FLAG_SEND_FUA | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO;
        }
        if (structured) {
            f |= FLAG_SEND_DF;
        }
        return f;
    }

    /** Read-only when asked, or when the node cannot write (an image opened read-only). */
    private static boolean readOnly(NbdServer.Export e) {
        Capabilities caps = e.node().capabilities();
        return e.readOnly() || caps != null && !caps.can(Capabilities.Feature.WRITE);
    }

    private static int minBlock(BlockNode node) {
        int a = node.limits() == null ? 1 : node.limits().requestAlignment();
        return Math.min(Math.max(a, 1), 65536);
    }

    private void reply(int opt, int type) throws IOException {
        reply(opt, type, ByteBuffer.allocate(0));
    }

    private void reply(int opt, int type, String message) throws IOException {
        reply(opt, type, StandardCharsets.UTF_8.encode(message));
    }

    private void reply(int opt, int type, ByteBuffer data) throws IOException {
        ByteBuffer h = ByteBuffer.allocate(20);
        h.putLong(OPTION_REPLY_MAGIC).putInt(opt).putInt(type).putInt(data.remaining()).flip();
        writeFully(h, data);
    }

    // ---- transmission ----------------------------------------------------------------------

    private record Request(int flags, int type, long cookie, long offset, long length, ByteBuffer payload) {
        boolean has(int flag) {
            return (flags & flag) != 0;
        }
    }

    /** A request that must be answered with an NBD error. */
    private static final class NbdError extends Exception {
        final int errno;

        NbdError(int errno, String message) {
            super(message, null, false, false);
            this.errno = errno;
        }
    }

    private void transmission(NbdServer.Export e) throws IOException {
        export = e;
        node = e.node();
        readOnly = readOnly(e);
        try {
            size = node.size();
        } catch (BlockException ex) {
            return;
        }
        int maxInFlight = server.settings().maxInFlight();
        window = new Semaphore(maxInFlight);
        transmitting = true;
        server.negotiated();
        ByteBuffer h = ByteBuffer.allocate(28);
        try {
            while (true) {
                h.clear();
                try {
                    readFully(h);
                } catch (EOFException eof) {
                    break;
                }
                h.flip();
                if (h.getInt() != REQUEST_MAGIC) {
                    return; // hard disconnect: we cannot find the next request
                }
                int flags = Short.toUnsignedInt(h.getShort());
                int type = Short.toUnsignedInt(h.getShort());
                long cookie = h.getLong();
                long offset = h.getLong();
                long length = Integer.toUnsignedLong(h.getInt());
                if (type == CMD_DISC) {
                    break;
                }
                boolean carriesPayload = type == CMD_WRITE;
                if (carriesPayload && length > MAX_PAYLOAD) {
                    // We will not read 4 GiB to stay in step: answer, then disconnect.
                    window.acquireUninterruptibly();
                    try {
                        sendError(new Request(flags, type, cookie, offset, length, null),
                                new NbdError(EOVERFLOW, "write of " + length + " bytes exceeds the maximum of "
                                        + MAX_PAYLOAD));
                    } finally {
                        window.release();
                    }
                    return;
                }
                int bytes = (type == CMD_READ || type == CMD_WRITE) && length <= MAX_PAYLOAD ? (int) length : 0;
                window.acquireUninterruptibly();
                budget.acquireUninterruptibly(bytes);
                ByteBuffer payload = null;
                try {
                    if (carriesPayload) {
                        payload = ByteBuffer.allocate((int) length);
                        readFully(payload);
                        payload.flip();
                    }
                } catch (IOException ex) {
                    budget.release(bytes);
                    window.release();
                    throw ex;
                }
                Request r = new Request(flags, type, cookie, offset, length, payload);
                Thread.ofVirtual().start(() -> {
                    try {
                        serve(r);
                    } finally {
                        budget.release(bytes);
                        window.release();
                    }
                });
            }
        } finally {
            // NBD_CMD_DISC or end of input: finish what is in flight, then close.
            try {
                window.tryAcquire(maxInFlight, ServerInstance.DRAIN_TIMEOUT.toMillis(), TimeUnit.MILLISECONDS);
            } catch (InterruptedException ie) {
                Thread.currentThread().interrupt();
            }
        }
    }

    private void serve(Request r) {
        try {
            try {
                switch (r.type()) {
                    case CMD_READ -> read(r);
                    case CMD_WRITE -> write(r);
                    case CMD_FLUSH -> {
                        checkFlags(r, CMD_FLAG_FUA);
                        node.flush();
                        sendOk(r);
                    }
                    case CMD_TRIM -> trim(r);
                    case CMD_WRITE_ZEROES -> writeZeroes(r);
                    case CMD_BLOCK_STATUS -> blockStatus(r);
                    case CMD_CACHE -> cache(r);
                    default -> throw new NbdError(EINVAL, "unknown command " + r.type());
                }
            } catch (BlockException e) {
                throw new NbdError(errnoOf(e), e.getMessage());
            } catch (RuntimeException e) {
                throw new NbdError(EIO, "internal error: " + e);
            }
        } catch (NbdError e) {
            try {
                sendError(r, e);
            } catch (IOException ignored) {
                close(); // the client is gone; the session thread notices
            }
        } catch (IOException e) {
            close();
        }
    }

    private static void checkFlags(Request r, int allowed) throws NbdError {
        if ((r.flags() & ~allowed) != 0) {
            throw new NbdError(EINVAL, "flags 0x" + Integer.toHexString(r.flags()) + " are not valid for this"
                    + " command");
        }
    }

    /** The range must lie inside the export; {@code errno} is what the spec asks for per command. */
    private void checkRange(Request r, int errno) throws NbdError {
        if (r.offset() < 0 || r.offset() > size || r.length() > size - r.offset()) {
            throw new NbdError(errno, "request at offset " + Long.toUnsignedString(r.offset()) + " for "
                    + r.length() + " bytes exceeds the export size " + size);
        }
    }

    private void checkWritable() throws NbdError {
        if (readOnly) {
            throw new NbdError(EPERM, "export '" + export.name() + "' is read-only");
        }
    }

    private int maxTransfer() {
        int max = node.limits() == null ? 0 : node.limits().maxTransfer();
        return max <= 0 ? MAX_PAYLOAD : max;
    }

    private void read(Request r) throws NbdError, BlockException, IOException {
        checkFlags(r, CMD_FLAG_FUA | (structured ? CMD_FLAG_DF : 0));
        if (r.length() > MAX_PAYLOAD) {
            throw new NbdError(EOVERFLOW, "read of " + r.length() + " bytes exceeds the maximum of " + MAX_PAYLOAD);
        }
        checkRange(r, EINVAL);
        int len = (int) r.length();
        ByteBuffer data = ByteBuffer.allocate(len);
        List<long[]> segments = structured && !r.has(CMD_FLAG_DF) && len >= SPARSE_READ_MIN
                ? segments(r.offset(), len) : List.of(new long[] {r.offset(), len, 0});
        for (long[] s : segments) {
            if (s[2] == 0) {
                int at = (int) (s[0] - r.offset());
                readNode(s[0], data.duplicate().position(at).limit(at + (int) s[1]));
            }
        }
        if (!structured) {
            ByteBuffer h = ByteBuffer.allocate(16);
            h.putInt(SIMPLE_REPLY_MAGIC).putInt(0).putLong(r.cookie()).flip();
            send(h, data);
            return;
        }
        if (len == 0) {
            send(chunkHeader(REPLY_FLAG_DONE, REPLY_TYPE_NONE, r.cookie(), 0).flip());
            return;
        }
        List<ByteBuffer> out = new ArrayList<>();
        for (int i = 0; i < segments.size(); i++) {
            long[] s = segments.get(i);
            int flags = i == segments.size() - 1 ? REPLY_FLAG_DONE : 0;
            if (s[2] != 0) {
                ByteBuffer c = chunkHeader(flags, REPLY_TYPE_OFFSET_HOLE, r.cookie(), 12);
                c.putLong(s[0]).putInt((int) s[1]).flip();
                out.add(c);
            } else {
                ByteBuffer c = chunkHeader(flags, REPLY_TYPE_OFFSET_DATA, r.cookie(), 8 + s[1]);
                c.putLong(s[0]).flip();
                out.add(c);
                int at = (int) (s[0] - r.offset());
                out.add(data.duplicate().position(at).limit(at + (int) s[1]));
            }
        }
        send(out.toArray(ByteBuffer[]::new));
    }

    /**
     * Splits a read into data and zero ranges from the node's block status: {offset, length,
     * 1 if zero}. Short zero runs stay data, and after a bounded number of ranges the rest is
     * data, so a fragmented image costs a few more bytes, not thousands of chunks.
     */
    private List<long[]> segments(long offset, int len) {
        List<long[]> out = new ArrayList<>();
        long end = offset + len;
        long pos = offset;
        try {
            while (pos < end && out.size() < 64) {
                Status s = chainStatus(pos, end - pos);
                long n = s.length();
                boolean zero = (s.flags() & BlockStatus.ZERO) != 0 && n >= 4096;
                long[] last = out.isEmpty() ? null : out.get(out.size() - 1);
                if (last != null && (last[2] != 0) == zero) {
                    last[1] += n;
                } else {
                    out.add(new long[] {pos, n, zero ? 1 : 0});
                }
                pos += n;
            }
        } catch (BlockException | RuntimeException e) {
            // block status is only an optimisation here: read what is left
        }
        if (pos < end) {
            long[] last = out.isEmpty() ? null : out.get(out.size() - 1);
            if (last != null && last[2] == 0) {
                last[1] += end - pos;
            } else {
                out.add(new long[] {pos, end - pos, 0});
            }
        }
        return out;
    }

    private void readNode(long offset, ByteBuffer dst) throws BlockException {
        int max = maxTransfer();
        while (dst.hasRemaining()) {
            int n = Math.min(dst.remaining(), max);
            ByteBuffer part = dst.duplicate().limit(dst.position() + n);
            node.read(offset, part);
            dst.position(dst.position() + n);
            offset += n;
        }
    }

    private void write(Request r) throws NbdError, BlockException, IOException {
        checkFlags(r, CMD_FLAG_FUA);
        checkWritable();
        checkRange(r, ENOSPC);
        ByteBuffer src = r.payload();
        int max = maxTransfer();
        long at = r.offset();
        while (src.hasRemaining()) {
            int n = Math.min(src.remaining(), max);
            ByteBuffer part = src.duplicate().limit(src.position() + n);
            node.write(at, part, r.has(CMD_FLAG_FUA) ? BlockNode.FUA : 0);
            src.position(src.position() + n);
            at += n;
        }
        sendOk(r);
    }

    /**
     * NBD_CMD_CACHE: the client will read this range soon. As qemu-nbd (a prefetching read), the
     * range is read through the chain and dropped, which loads the formats' metadata caches and
     * the host's page cache; the length is not limited by the payload maximum since nothing is
     * sent back, and one buffer of at most 1 MiB is used however long the range.
     */
    private void cache(Request r) throws NbdError, BlockException, IOException {
        checkFlags(r, CMD_FLAG_FUA);
        checkRange(r, EINVAL);
        ByteBuffer buf = ByteBuffer.allocate((int) Math.min(r.length(), Math.min(maxTransfer(), 1 << 20)));
        for (long at = r.offset(), end = r.offset() + r.length(); at < end; ) {
            int n = (int) Math.min(buf.capacity(), end - at);
            node.read(at, buf.clear().limit(n));
            at += n;
        }
        sendOk(r);
    }

    private void trim(Request r) throws NbdError, BlockException, IOException {
        checkFlags(r, CMD_FLAG_FUA);
        checkWritable();
        checkRange(r, EINVAL);
        try {
            if (r.length() > 0) {
                node.discard(r.offset(), r.length());
            }
        } catch (BlockException e) {
            if (e.reason() != BlockException.Reason.UNSUPPORTED) {
                throw e;
            } // trim is advisory: a node that cannot discard keeps the data
        }
        if (r.has(CMD_FLAG_FUA)) {
            node.flush();
        }
        sendOk(r);
    }

    private void writeZeroes(Request r) throws NbdError, BlockException, IOException {
        checkFlags(r, CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO);
        checkWritable();
        checkRange(r, ENOSPC);
        int flags = (r.has(CMD_FLAG_NO_HOLE) ? 0 : BlockNode.MAY_UNMAP) | (r.has(CMD_FLAG_FUA) ? BlockNode.FUA : 0);
        if (r.length() > 0) {
            if (r.has(CMD_FLAG_FAST_ZERO)) {
                try {
                    node.writeZeroes(r.offset(), r.length(), flags | BlockNode.NO_FALLBACK);
                } catch (BlockException e) {
                    if (e.reason() == BlockException.Reason.UNSUPPORTED) {
                        throw new NbdError(ENOTSUP, "fast zeroing is not possible here");
                    }
                    throw e;
                }
            } else {
                try {
                    node.writeZeroes(r.offset(), r.length(), flags);
                } catch (BlockException e) {
                    if (e.reason() != BlockException.Reason.UNSUPPORTED) {
                        throw e;
                    }
                    writeZeroBuffers(r.offset(), r.length(), flags & BlockNode.FUA);
                }
            }
        }
        sendOk(r);
    }

    /** For nodes served without the core's wrapper that cannot write zeroes themselves. */
    private void writeZeroBuffers(long offset, long length, int flags) throws BlockException {
        ByteBuffer zero = ByteBuffer.allocate((int) Math.min(ZERO_CHUNK, Math.min(length, maxTransfer())));
        while (length > 0) {
            int n = (int) Math.min(zero.capacity(), length);
            node.write(offset, zero.clear().limit(n), flags);
            offset += n;
            length -= n;
        }
    }

    private void blockStatus(Request r) throws NbdError, BlockException, IOException {
        checkFlags(r, CMD_FLAG_REQ_ONE);
        if (!baseAllocation && !allocationDepth && dirtyBitmaps.isEmpty()) {
            throw new NbdError(EINVAL, "no metadata context was negotiated");
        }
        if (r.length() == 0) {
            throw new NbdError(EINVAL, "block status of an empty range");
        }
        checkRange(r, EINVAL);
        List<ByteBuffer> out = new ArrayList<>();
        boolean bitmaps = !dirtyBitmaps.isEmpty();
        if (baseAllocation) {
            chunk(out, r, BASE_ALLOCATION_ID, extents(r, false), !allocationDepth && !bitmaps);
        }
        if (allocationDepth) {
            chunk(out, r, ALLOCATION_DEPTH_ID, extents(r, true), !bitmaps);
        }
        List<ExportedBitmap> offered = server.bitmaps(export.name());
        for (int k = 0; k < dirtyBitmaps.size(); k++) {
            int i = dirtyBitmaps.get(k);
            chunk(out, r, FIRST_BITMAP_ID + i, offered.get(i).extents(r.offset(), r.length(),
                    r.has(CMD_FLAG_REQ_ONE), MAX_EXTENTS), k == dirtyBitmaps.size() - 1);
        }
        send(out.toArray(ByteBuffer[]::new));
    }

    private static void chunk(List<ByteBuffer> out, Request r, int contextId, List<long[]> extents, boolean last) {
        out.add(chunkHeader(last ? REPLY_FLAG_DONE : 0, REPLY_TYPE_BLOCK_STATUS, r.cookie(), 4 + 8L * extents.size())
                .flip());
        ByteBuffer body = ByteBuffer.allocate(4 + 8 * extents.size());
        body.putInt(contextId);
        for (long[] x : extents) {
            body.putInt((int) x[0]).putInt((int) x[1]);
        }
        out.add(body.flip());
    }

    /** {length, value} extents of one context; neighbours with the same value are merged. */
    private List<long[]> extents(Request r, boolean depth) throws BlockException {
        long end = r.offset() + r.length();
        List<long[]> extents = new ArrayList<>();
        long pos = r.offset();
        int calls = 0;
        while (pos < end && extents.size() < MAX_EXTENTS && calls++ < 4 * MAX_EXTENTS) {
            Status s = chainStatus(pos, end - pos);
            long value = depth ? s.depth()
                    : ((s.flags() & BlockStatus.DATA) != 0 ? 0 : STATE_HOLE)
                            | ((s.flags() & BlockStatus.ZERO) != 0 ? STATE_ZERO : 0);
            long[] last = extents.isEmpty() ? null : extents.get(extents.size() - 1);
            if (last != null && last[1] == value) {
                last[0] += s.length();
            } else {
                extents.add(new long[] {s.length(), value});
            }
            pos += s.length();
            if (r.has(CMD_FLAG_REQ_ONE)) {
                break;
            }
        }
        return extents;
    }

    /** Block status of the whole chain below the export: length, DATA/ZERO flags, allocation depth. */
    private record Status(long length, int flags, int depth) {
    }

    /**
     * Where this layer does not decide the content, asks its backing file, as qemu-nbd's
     * block_status_above does: base:allocation must describe what a read returns, and
     * qemu:allocation-depth says which layer (1 = the top, 0 = none) holds the data.
     */
    private Status chainStatus(long offset, long length) throws BlockException {
        BlockNode n = node;
        if (n instanceof ServedNode served) { // qemu-nbd's options in front of the image: look through
            offset += served.offset();
            n = served.inner();
        }
        long len = length;
        for (int depth = 1; ; depth++) {
            BlockStatus s = n.blockStatus(offset, len);
            len = Math.min(Math.max(s.length(), 1), len);
            if (s.isAllocated()) {
                return new Status(len, s.flags(), depth);
            }
            Image backing = n instanceof Image img ? img.backing() : null;
            if (backing == null || depth >= 64) {
                return new Status(len, BlockStatus.ZERO, 0); // unallocated everywhere: reads as zeroes
            }
            long backingSize = backing.size();
            if (offset >= backingSize) {
                return new Status(len, BlockStatus.ZERO, 0); // past the end of the backing file
            }
            len = Math.min(len, backingSize - offset);
            n = backing;
        }
    }

    private static int errnoOf(BlockException e) {
        return switch (e.reason()) {
            case READ_ONLY, PERMISSION, LOCKED -> EPERM;
            case NO_SPACE -> ENOSPC;
            case INVALID_ARGUMENT, OUT_OF_RANGE -> EINVAL;
            case UNSUPPORTED -> ENOTSUP;
            case CLOSED -> ESHUTDOWN;
            default -> EIO;
        };
    }

    private static ByteBuffer chunkHeader(int flags, int type, long cookie, long length) {
        ByteBuffer b = ByteBuffer.allocate(20 + (type == REPLY_TYPE_OFFSET_DATA ? 8
                : type == REPLY_TYPE_OFFSET_HOLE ? 12 : 0));
        b.putInt(STRUCTURED_REPLY_MAGIC).putShort((short) flags).putShort((short) type).putLong(cookie)
                .putInt((int) length);
        return b;
    }

    private void sendOk(Request r) throws IOException {
        ByteBuffer h = ByteBuffer.allocate(16);
        h.putInt(SIMPLE_REPLY_MAGIC).putInt(0).putLong(r.cookie()).flip();
        send(h);
    }

    private void sendError(Request r, NbdError e) throws IOException {
        if (!structured) {
            ByteBuffer h = ByteBuffer.allocate(16);
            h.putInt(SIMPLE_REPLY_MAGIC).putInt(e.errno).putLong(r.cookie()).flip();
            send(h);
            return;
        }
        byte[] msg = String.valueOf(e.getMessage()).getBytes(StandardCharsets.UTF_8);
        int n = Math.min(msg.length, MAX_STRING);
        ByteBuffer c = chunkHeader(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, r.cookie(), 6 + n);
        ByteBuffer body = ByteBuffer.allocate(6 + n);
        body.putInt(e.errno).putShort((short) n).put(msg, 0, n).flip();
        send(c.flip(), body);
    }

    private void send(ByteBuffer... bufs) throws IOException {
        sendLock.lock();
        try {
            writeFully(bufs);
        } finally {
            sendLock.unlock();
        }
    }

    // ---- channel helpers -------------------------------------------------------------------

    private ByteBuffer read(int n) throws IOException {
        return wire.readFully(n);
    }

    private void readFully(ByteBuffer b) throws IOException {
        wire.readFully(b);
    }

    private void writeFully(ByteBuffer... bufs) throws IOException {
        wire.write(bufs);
    }
}
