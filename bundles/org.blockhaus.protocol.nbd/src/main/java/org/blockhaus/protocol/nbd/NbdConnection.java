package org.blockhaus.protocol.nbd;

import org.blockhaus.nbd.common.Wire;
import static org.blockhaus.nbd.common.Nbd.*;

import java.io.EOFException;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.locks.ReentrantLock;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;

/**
 * One client connection to an NBD server: the fixed newstyle handshake (NBD_OPT_STRUCTURED_REPLY,
 * NBD_OPT_SET_META_CONTEXT base:allocation, NBD_OPT_GO with NBD_INFO_BLOCK_SIZE, falling back to
 * NBD_OPT_EXPORT_NAME) and then the transmission phase with several requests in flight: callers
 * send requests under a lock and wait; one reader thread matches replies to requests by cookie
 * (the spec's "handle").
 *
 * <p>Every violation of the protocol by the server ends the connection and fails every request
 * in flight with a {@link BlockException} of reason IO; the connection cannot be used after that.
 */
final class NbdConnection implements AutoCloseable {
    /** Requests in flight on one connection; more wait for a slot. */
    static final int MAX_IN_FLIGHT = 64;
    /** Option replies larger than this are a broken or hostile server. */
    private static final int MAX_OPTION_REPLY = 64 * 1024;
    /** Longest block status chunk we read (its extents beyond the first are skipped). */
    private static final long MAX_STATUS_CHUNK = 4 + 8L * (1 << 20);

    /** Where the server is: TCP host and port, or a unix socket path. */
    record Address(String host, int port, String path) {
        boolean unix() {
            return path != null;
        }

        @Override
        public String toString() {
            if (unix()) {
                return path;
            }
            return (host.contains(":") ? "[" + host + "]" : host) + ":" + port;
        }
    }

    /** TLS for NBD_OPT_STARTTLS: runs the TLS handshake (host name checks included). */
    interface Tls {
        Wire handshake(SocketChannel ch) throws IOException;
    }

    /** What the handshake agreed on. */
    record Export(long size, int flags, boolean structured, int baseAllocationId, int minBlock, int preferredBlock,
            int maxBlock) {
        boolean has(int flag) {
            return (flags & flag) != 0;
        }
    }

    private final SocketChannel channel;
    private final Wire wire;
    private final Address address;
    private final Export export;
    private final ReentrantLock sendLock = new ReentrantLock();
    private final ByteBuffer requestHeader = ByteBuffer.allocate(REQUEST_SIZE);
    private final Map<Long, Pending> pending = new ConcurrentHashMap<>();
    private final AtomicLong nextCookie = new AtomicLong(1);
    private final Semaphore window = new Semaphore(MAX_IN_FLIGHT);
    private final Thread reader;
    private volatile BlockException failure;
    /** How long one request may wait for its reply before the connection is given up (0 = forever). */
    private final Duration requestTimeout;
    private Thread requestWatchdog;

    private NbdConnection(SocketChannel channel, Wire wire, Address address, Export export,
            Duration requestTimeout) {
        this.wire = wire;
        this.requestTimeout = requestTimeout;
        this.channel = channel;
        this.address = address;
        this.export = export;
        this.reader = Thread.ofVirtual().name("nbd-reader " + address).unstarted(this::readReplies);
    }

    Export export() {
        return export;
    }

    Address address() {
        return address;
    }

    // ---- handshake -------------------------------------------------------------------------

    /**
     * Connects and negotiates {@code exportName}. The whole of connect and handshake must finish
     * within {@code timeout}; a server that stalls is cut off then.
     */
    static NbdConnection open(Address address, String exportName, Duration timeout, Duration requestTimeout, Tls tls)
            throws BlockException {
        return open(address, exportName, timeout, requestTimeout, tls, null);
    }

    /**
     * As above; {@code statusContext} names the meta context block status comes from instead of
     * base:allocation (QEMU's x-dirty-bitmap), whose flags are then read as base:allocation's.
     */
    static NbdConnection open(Address address, String exportName, Duration timeout, Duration requestTimeout, Tls tls,
            String statusContext) throws BlockException {
        SocketChannel ch;
        SocketAddress target;
        if (address.unix()) {
            target = UnixDomainSocketAddress.of(address.path());
        } else {
            InetSocketAddress inet = new InetSocketAddress(address.host(), address.port());
            if (inet.isUnresolved()) {
                throw new BlockException(Reason.NOT_FOUND, "Failed to connect to '" + address + "': unknown host '"
                        + address.host() + "'");
            }
            target = inet;
        }
        try {
            // the default family is dual-stack, so IPv4 and IPv6 addresses both work
            ch = address.unix() ? SocketChannel.open(StandardProtocolFamily.UNIX) : SocketChannel.open();
        } catch (IOException e) {
            throw BlockException.io("Failed to create a socket for '" + address + "'", e);
        }
        Watchdog watchdog = new Watchdog(ch, timeout);
        boolean ok = false;
        try {
            try {
                ch.connect(target);
            } catch (IOException e) {
                if (watchdog.fired()) {
                    throw new BlockException(Reason.IO, "Failed to connect to '" + address + "': timed out after "
                            + timeout.toMillis() + " ms");
                }
                throw new BlockException(Reason.IO, "Failed to connect to '" + address + "': " + describe(e), e);
            }
            Export ex;
            Handshake hs = new Handshake(ch, tls, statusContext);
            try {
                ex = hs.negotiate(exportName);
            } catch (IOException e) {
                if (watchdog.fired()) {
                    throw new BlockException(Reason.IO, "NBD handshake with '" + address + "' timed out after "
                            + timeout.toMillis() + " ms");
                }
                String why = e instanceof EOFException ? "the server closed the connection"
                        : "Connection reset".equals(e.getMessage()) ? "the server closed the connection (reset)"
                        : describe(e);
                throw new BlockException(Reason.IO, "NBD handshake with '" + address + "' failed: " + why, e);
            }
            if (!watchdog.disarm()) {
                throw new BlockException(Reason.IO, "NBD handshake with '" + address + "' timed out after "
                        + timeout.toMillis() + " ms");
            }
            NbdConnection c = new NbdConnection(ch, hs.wire, address, ex, requestTimeout);
            c.reader.start();
            if (!requestTimeout.isZero()) {
                c.requestWatchdog = Thread.ofVirtual().name("nbd-request-watchdog " + address)
                        .start(c::watchRequests);
            }
            ok = true;
            return c;
        } finally {
            watchdog.disarm();
            if (!ok) {
                closeQuietly(ch);
            }
        }
    }

    private static String describe(IOException e) {
        return e.getMessage() != null ? e.getMessage() : e.getClass().getSimpleName();
    }

    /** Closes a channel when a deadline passes, which makes blocked reads and connects fail. */
    private static final class Watchdog {
        private final Thread thread;
        private volatile boolean fired;
        private boolean disarmed;

        Watchdog(SocketChannel ch, Duration timeout) {
            thread = Thread.ofVirtual().name("nbd-handshake-watchdog").start(() -> {
                try {
                    Thread.sleep(timeout);
                } catch (InterruptedException e) {
                    return;
                }
                synchronized (this) {
                    if (disarmed) {
                        return;
                    }
                    fired = true;
                }
                closeQuietly(ch);
            });
        }

        boolean fired() {
            return fired;
        }

        /** Stops the watchdog; false if it fired already. */
        synchronized boolean disarm() {
            disarmed = true;
            thread.interrupt();
            return !fired;
        }
    }

    /** The option haggling, in the order QEMU's client uses. */
    private static final class Handshake {
        private final SocketChannel ch;
        private final Tls tls;
        private Wire wire;
        private boolean noZeroes;

        /** The one meta context asked for: base:allocation, or x-dirty-bitmap's. */
        private final String context;
        /** True when the user named the context (x-dirty-bitmap): not getting it is an error. */
        private final boolean contextRequired;

        Handshake(SocketChannel ch, Tls tls, String statusContext) {
            this.ch = ch;
            this.tls = tls;
            this.context = statusContext == null ? CONTEXT_BASE_ALLOCATION : statusContext;
            this.contextRequired = statusContext != null;
            this.wire = new Wire.Plain(ch);
        }

        Export negotiate(String exportName) throws IOException, BlockException {
            ByteBuffer hello = wire.readFully(16);
            long magic = hello.getLong();
            if (magic != NBDMAGIC) {
                throw protocol("Bad initial magic received: 0x%x", magic);
            }
            long second = hello.getLong();
            if (second == OLDSTYLE_MAGIC) {
                throw new BlockException(Reason.UNSUPPORTED, "The server uses the oldstyle NBD handshake, which is"
                        + " not supported; use a newstyle server");
            }
            if (second != IHAVEOPT) {
                throw protocol("Bad server magic received: 0x%x", second);
            }
            int handshakeFlags = Short.toUnsignedInt(wire.readFully(2).getShort());
            boolean fixed = (handshakeFlags & FLAG_FIXED_NEWSTYLE) != 0;
            noZeroes = (handshakeFlags & FLAG_NO_ZEROES) != 0;
            int clientFlags = (fixed ? FLAG_C_FIXED_NEWSTYLE : 0) | (noZeroes ? FLAG_C_NO_ZEROES : 0);
            wire.write(ByteBuffer.allocate(4).putInt(0, clientFlags));
            if (tls != null) {
                if (!fixed) {
                    throw new BlockException(Reason.UNSUPPORTED, "The server does not support fixed newstyle"
                            + " negotiation, so TLS cannot be used");
                }
                startTls();
            }
            if (!fixed) {
                // Without fixed newstyle, unknown options end the session: only EXPORT_NAME is safe.
                return exportName(exportName, false, -1);
            }
            boolean structured = structuredReply();
            int contextId = structured ? setMetaContext(exportName) : -1;
            if (contextRequired && contextId < 0) {
                throw new BlockException(Reason.NOT_FOUND, "requested x-dirty-bitmap " + context + " not found");
            }
            return go(exportName, structured, contextId);
        }

        /** NBD_OPT_STARTTLS, then the TLS handshake; everything after it runs over TLS. */
        private void startTls() throws IOException, BlockException {
            sendOption(OPT_STARTTLS, ByteBuffer.allocate(0));
            OptionReply r = readReply(OPT_STARTTLS);
            if (r.type != REP_ACK) {
                if ((r.type & REP_FLAG_ERROR) != 0) {
                    BlockException e = optionError(r, OPT_STARTTLS);
                    throw new BlockException(Reason.UNSUPPORTED, "The server does not support TLS: "
                            + e.getMessage());
                }
                throw protocol("Unexpected reply type %d to NBD_OPT_STARTTLS", r.type);
            }
            wire = tls.handshake(ch);
        }

        private boolean structuredReply() throws IOException, BlockException {
            sendOption(OPT_STRUCTURED_REPLY, ByteBuffer.allocate(0));
            OptionReply r = readReply(OPT_STRUCTURED_REPLY);
            return r.type == REP_ACK;
        }

        private int setMetaContext(String exportName) throws IOException, BlockException {
            byte[] name = exportName.getBytes(StandardCharsets.UTF_8);
            byte[] query = context.getBytes(StandardCharsets.UTF_8);
            ByteBuffer b = ByteBuffer.allocate(4 + name.length + 4 + 4 + query.length);
            b.putInt(name.length).put(name).putInt(1).putInt(query.length).put(query).flip();
            sendOption(OPT_SET_META_CONTEXT, b);
            int id = -1;
            while (true) {
                OptionReply r = readReply(OPT_SET_META_CONTEXT);
                if (r.type == REP_META_CONTEXT) {
                    if (r.data.remaining() < 4) {
                        throw protocol("NBD_REP_META_CONTEXT reply too short (%d bytes)", r.data.remaining());
                    }
                    int ctxId = r.data.getInt();
                    String ctxName = StandardCharsets.UTF_8.decode(r.data).toString();
                    if (!ctxName.equals(context)) {
                        throw protocol("Server replied with unexpected meta context '%s'", ctxName);
                    }
                    id = ctxId;
                } else if (r.type == REP_ACK) {
                    return id;
                } else if ((r.type & REP_FLAG_ERROR) != 0) {
                    return -1; // block status is optional; the server just does not offer it
                } else {
                    throw protocol("Unexpected reply type %d to NBD_OPT_SET_META_CONTEXT", r.type);
                }
            }
        }

        private Export go(String exportName, boolean structured, int contextId) throws IOException, BlockException {
            byte[] name = exportName.getBytes(StandardCharsets.UTF_8);
            ByteBuffer b = ByteBuffer.allocate(4 + name.length + 2 + 2);
            b.putInt(name.length).put(name).putShort((short) 1).putShort((short) INFO_BLOCK_SIZE).flip();
            sendOption(OPT_GO, b);
            long size = -1;
            int flags = 0;
            boolean gotExport = false;
            int min = 0;
            int pref = 0;
            int max = 0;
            while (true) {
                OptionReply r = readReply(OPT_GO);
                if (r.type == REP_INFO) {
                    if (r.data.remaining() < 2) {
                        throw protocol("NBD_REP_INFO reply too short");
                    }
                    int info = Short.toUnsignedInt(r.data.getShort());
                    if (info == INFO_EXPORT) {
                        if (r.data.remaining() != 10) {
                            throw protocol("NBD_INFO_EXPORT has length %d, expected 12", r.data.remaining() + 2);
                        }
                        size = r.data.getLong();
                        flags = Short.toUnsignedInt(r.data.getShort());
                        gotExport = true;
                    } else if (info == INFO_BLOCK_SIZE) {
                        if (r.data.remaining() != 12) {
                            throw protocol("NBD_INFO_BLOCK_SIZE has length %d, expected 14", r.data.remaining() + 2);
                        }
                        min = r.data.getInt();
                        pref = r.data.getInt();
                        max = r.data.getInt();
                    } // other information is optional; ignore it
                } else if (r.type == REP_ACK) {
                    if (!gotExport) {
                        throw protocol("Server did not send NBD_INFO_EXPORT before NBD_REP_ACK to NBD_OPT_GO");
                    }
                    return finish(size, flags, structured, contextId, min, pref, max);
                } else if (r.type == REP_ERR_UNSUP) {
                    // A server older than NBD_OPT_GO: use the classic option, which cannot report errors.
                    return exportName(exportName, structured, contextId);
                } else if ((r.type & REP_FLAG_ERROR) != 0) {
                    throw optionError(r, OPT_GO);
                } else {
                    throw protocol("Unexpected reply type %d to NBD_OPT_GO", r.type);
                }
            }
        }

        private Export exportName(String exportName, boolean structured, int contextId)
                throws IOException, BlockException {
            byte[] name = exportName.getBytes(StandardCharsets.UTF_8);
            sendOption(OPT_EXPORT_NAME, ByteBuffer.wrap(name));
            ByteBuffer b;
            try {
                b = wire.readFully(noZeroes ? 10 : 10 + 124);
            } catch (IOException e) {
                if (!(e instanceof EOFException) && !"Connection reset".equals(e.getMessage())) {
                    throw e;
                }
                throw new BlockException(Reason.NOT_FOUND, "Requested export not available (the server closed"
                        + " the connection after NBD_OPT_EXPORT_NAME '" + exportName + "')");
            }
            long size = b.getLong();
            int flags = Short.toUnsignedInt(b.getShort());
            return finish(size, flags, structured, contextId, 0, 0, 0);
        }

        private Export finish(long size, int flags, boolean structured, int contextId, int min, int pref, int max)
                throws BlockException {
            if (size < 0) {
                throw protocol("Export size %s is too large", Long.toUnsignedString(size));
            }
            if (min == 0) {
                min = 1;
                pref = 4096;
                max = MAX_PAYLOAD;
            } else {
                if (Integer.bitCount(min) != 1 || min > 65536) {
                    throw protocol("Server minimum block size %d is not a power of two up to 64 KiB", min);
                }
                if (Integer.bitCount(pref) != 1 || pref < min) {
                    throw protocol("Server preferred block size %d is invalid", pref);
                }
                if (max != -1 && (Integer.compareUnsigned(max, min) < 0 || max % min != 0)) {
                    throw protocol("Server maximum block size %s is invalid", Integer.toUnsignedString(max));
                }
            }
            // We never send more than the spec's 32 MiB even if the server would take more.
            int cap = (max == -1 || Integer.compareUnsigned(max, MAX_PAYLOAD) > 0) ? MAX_PAYLOAD : max;
            cap = Math.max(min, cap & -min);
            return new Export(size, flags, structured, contextId, min, pref, cap);
        }

        private void sendOption(int option, ByteBuffer data) throws IOException {
            ByteBuffer h = ByteBuffer.allocate(16);
            h.putLong(IHAVEOPT).putInt(option).putInt(data.remaining()).flip();
            wire.write(h, data);
        }

        private record OptionReply(int type, ByteBuffer data) {
        }

        private OptionReply readReply(int option) throws IOException, BlockException {
            ByteBuffer h = wire.readFully(20);
            long magic = h.getLong();
            if (magic != OPTION_REPLY_MAGIC) {
                throw protocol("Unexpected option reply magic 0x%x", magic);
            }
            int opt = h.getInt();
            if (opt != option) {
                throw protocol("Reply to option %d (%s) arrived for option %d (%s)", opt, optionName(opt), option,
                        optionName(option));
            }
            int type = h.getInt();
            int length = h.getInt();
            if (length < 0 || length > MAX_OPTION_REPLY) {
                throw protocol("Server sent an oversized reply of %s bytes to option %d (%s)",
                        Integer.toUnsignedString(length), option, optionName(option));
            }
            return new OptionReply(type, wire.readFully(length));
        }

        private static BlockException optionError(OptionReply r, int opt) {
            String name = optionName(opt);
            String msg = switch (r.type) {
                case REP_ERR_POLICY -> "Denied by server for option " + opt + " (" + name + ")";
                case REP_ERR_INVALID -> "Invalid parameters for option " + opt + " (" + name + ")";
                case REP_ERR_PLATFORM -> "Server lacks support for option " + opt + " (" + name + ")";
                case REP_ERR_TLS_REQD -> "TLS negotiation required before option " + opt + " (" + name + ")."
                        + " Did you forget a valid tls-creds?";
                case REP_ERR_UNKNOWN -> "Requested export not available";
                case REP_ERR_SHUTDOWN -> "Server shutting down before option " + opt + " (" + name + ")";
                case REP_ERR_BLOCK_SIZE_REQD -> "Server requires INFO_BLOCK_SIZE for option " + opt + " (" + name
                        + ")";
                case REP_ERR_TOO_BIG -> "Server considers option " + opt + " (" + name + ") too big";
                default -> "Unknown error code 0x" + Integer.toHexString(r.type) + " when asking for option "
                        + opt + " (" + name + ")";
            };
            if (r.data.hasRemaining()) {
                msg += "\nserver reported: " + StandardCharsets.UTF_8.decode(r.data);
            }
            Reason reason = switch (r.type) {
                case REP_ERR_UNKNOWN -> Reason.NOT_FOUND;
                case REP_ERR_POLICY, REP_ERR_TLS_REQD -> Reason.PERMISSION;
                default -> Reason.IO;
            };
            return new BlockException(reason, msg);
        }
    }

    private static BlockException protocol(String format, Object... args) {
        return new BlockException(Reason.IO, "NBD protocol error: " + String.format(format, args));
    }

    // ---- transmission ----------------------------------------------------------------------

    /** One request in flight, filled in by the reader thread. */
    private static final class Pending {
        final int type;
        final long offset;
        final int length;
        final ByteBuffer dst; // reads: the caller's buffer, starting at its position
        final int dstBase;
        final long started = System.nanoTime();
        long covered;
        int error;
        String message;
        long statusLength = -1;
        int statusFlags;
        BlockException failed;
        boolean done;

        Pending(int type, long offset, int length, ByteBuffer dst) {
            this.type = type;
            this.offset = offset;
            this.length = length;
            this.dst = dst;
            this.dstBase = dst == null ? 0 : dst.position();
        }

        synchronized void complete(BlockException f) {
            if (!done) {
                failed = f;
                done = true;
                notifyAll();
            }
        }

        /**
         * Waits without giving up on interrupts (the reader may still be writing into dst);
         * false when {@code nanos} (0 = no limit) passed first.
         */
        synchronized boolean await(long nanos) {
            boolean interrupted = false;
            long deadline = System.nanoTime() + nanos;
            try {
                while (!done) {
                    try {
                        if (nanos == 0) {
                            wait();
                        } else {
                            long left = deadline - System.nanoTime();
                            if (left <= 0) {
                                return false;
                            }
                            TimeUnit.NANOSECONDS.timedWait(this, left);
                        }
                    } catch (InterruptedException e) {
                        interrupted = true;
                    }
                }
                return true;
            } finally {
                if (interrupted) {
                    Thread.currentThread().interrupt();
                }
            }
        }
    }

    /** Result of a block status request: one extent. */
    record Extent(long length, int flags) {
    }

    void read(long offset, ByteBuffer dst) throws BlockException {
        int len = dst.remaining();
        submit(CMD_READ, 0, offset, len, null, dst);
        dst.position(dst.position() + len);
    }

    void write(long offset, ByteBuffer src, int flags) throws BlockException {
        submit(CMD_WRITE, flags, offset, src.remaining(), src, null);
    }

    void command(int type, int flags, long offset, int length) throws BlockException {
        submit(type, flags, offset, length, null, null);
    }

    Extent blockStatus(long offset, int length) throws BlockException {
        Pending p = submit(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, offset, length, null, null);
        return new Extent(p.statusLength, p.statusFlags);
    }

    private Pending submit(int type, int flags, long offset, int length, ByteBuffer payload, ByteBuffer dst)
            throws BlockException {
        checkAlive();
        window.acquireUninterruptibly();
        Pending p = new Pending(type, offset, length, dst);
        long cookie = nextCookie.getAndIncrement();
        try {
            pending.put(cookie, p);
            sendLock.lock();
            try {
                checkAlive();
                requestHeader.clear();
                requestHeader.putInt(REQUEST_MAGIC).putShort((short) flags).putShort((short) type).putLong(cookie)
                        .putLong(offset).putInt(length).flip();
                if (payload != null) {
                    ByteBuffer data = payload.duplicate();
                    wire.write(requestHeader, data);
                    payload.position(payload.limit());
                } else {
                    wire.write(requestHeader);
                }
            } catch (IOException e) {
                fail(failure != null ? failure : new BlockException(Reason.IO, "Failed to send NBD "
                        + commandName(type) + " request to '" + address + "': " + describe(e), e));
            } finally {
                sendLock.unlock();
            }
            p.await(0); // bounded: the request watchdog fails the connection when the server stalls
            if (p.failed != null && failure != null && dst != null) {
                joinReader(); // the caller gets its buffer back only once nobody writes into it
            }
        } finally {
            pending.remove(cookie);
            window.release();
        }
        if (p.failed != null) {
            throw new BlockException(p.failed.reason(), p.failed.getMessage(), p.failed);
        }
        if (p.error != 0) {
            String what = "NBD server '" + address + "' failed " + commandName(type) + " at offset " + offset
                    + ", length " + Integer.toUnsignedString(length) + " (" + errnoName(p.error) + ")";
            if (p.message != null && !p.message.isEmpty()) {
                what += ": " + p.message;
            }
            throw new BlockException(reasonOf(p.error), what);
        }
        return p;
    }

    /**
     * Fails the connection when a request waited longer than the request timeout, whether for
     * its reply or to be sent (a server that stops reading blocks our writes): every request on
     * a broken peer ends in bounded time.
     */
    private void watchRequests() {
        long limit = requestTimeout.toNanos();
        long period = Math.max(Math.min(limit / 4, TimeUnit.SECONDS.toNanos(1)), TimeUnit.MILLISECONDS.toNanos(10));
        while (failure == null) {
            try {
                TimeUnit.NANOSECONDS.sleep(period);
            } catch (InterruptedException e) {
                return;
            }
            long now = System.nanoTime();
            for (Pending p : pending.values()) {
                if (!p.done && now - p.started > limit) {
                    fail(new BlockException(Reason.IO, "NBD server '" + address + "' did not answer a "
                            + commandName(p.type) + " request within " + requestTimeout.toSeconds() + " s"));
                    return;
                }
            }
        }
    }

    /** True once the connection failed (server gone, protocol error, timeout) or was closed. */
    boolean isBroken() {
        return failure != null;
    }

    /** Why the connection is broken, or null. */
    BlockException failure() {
        return failure;
    }

    private void checkAlive() throws BlockException {
        BlockException f = failure;
        if (f != null) {
            throw new BlockException(f.reason(), f.getMessage(), f);
        }
    }

    /** The connection is unusable from now on: fail everything in flight. */
    private void fail(BlockException e) {
        synchronized (this) {
            if (failure == null) {
                failure = e;
            }
        }
        closeQuietly(channel);
        for (Pending p : List.copyOf(pending.values())) {
            p.complete(failure);
        }
    }

    private void readReplies() {
        ByteBuffer h = ByteBuffer.allocate(20);
        try {
            while (true) {
                h.clear().limit(4);
                wire.readFully(h);
                int magic = h.getInt(0);
                if (magic == SIMPLE_REPLY_MAGIC) {
                    h.limit(16);
                    wire.readFully(h);
                    simpleReply(h.getInt(4), h.getLong(8));
                } else if (magic == STRUCTURED_REPLY_MAGIC) {
                    if (!export.structured()) {
                        throw protocol("Server sent a structured reply that was not negotiated");
                    }
                    h.limit(20);
                    wire.readFully(h);
                    structuredChunk(Short.toUnsignedInt(h.getShort(4)), Short.toUnsignedInt(h.getShort(6)),
                            h.getLong(8), Integer.toUnsignedLong(h.getInt(16)));
                } else {
                    throw protocol("Bad reply magic 0x%08x from '%s'", magic, address);
                }
            }
        } catch (BlockException e) {
            fail(e);
        } catch (EOFException e) {
            fail(new BlockException(Reason.IO, "NBD server '" + address + "' closed the connection"));
        } catch (IOException e) {
            fail(new BlockException(Reason.IO, failure != null ? failure.getMessage()
                    : "Connection to NBD server '" + address + "' failed: " + describe(e), e));
        } catch (RuntimeException e) {
            fail(new BlockException(Reason.IO, "NBD client failed reading from '" + address + "': " + e, e));
        }
    }

    private Pending lookup(long cookie) throws BlockException {
        Pending p = pending.get(cookie);
        if (p == null || p.done) {
            throw protocol("Server sent a reply for an unknown request (cookie %d)", cookie);
        }
        return p;
    }

    private void simpleReply(int error, long cookie) throws IOException, BlockException {
        Pending p = lookup(cookie);
        if (error == 0 && p.type == CMD_READ) {
            if (export.structured()) {
                throw protocol("Server sent a simple reply with data to a read despite structured replies");
            }
            ByteBuffer into = p.dst.duplicate().position(p.dstBase).limit(p.dstBase + p.length);
            wire.readFully(into);
        }
        p.error = error;
        p.complete(null);
    }

    private void structuredChunk(int flags, int type, long cookie, long length) throws IOException, BlockException {
        Pending p = lookup(cookie);
        switch (type) {
            case REPLY_TYPE_NONE -> {
                if (length != 0) {
                    throw protocol("NBD_REPLY_TYPE_NONE chunk with payload length %d", length);
                }
                if ((flags & REPLY_FLAG_DONE) == 0) {
                    throw protocol("NBD_REPLY_TYPE_NONE chunk without NBD_REPLY_FLAG_DONE");
                }
            }
            case REPLY_TYPE_OFFSET_DATA -> {
                if (p.type != CMD_READ || length <= 8 || length - 8 > p.length) {
                    throw protocol("Unexpected NBD_REPLY_TYPE_OFFSET_DATA chunk (length %d) for %s of %d bytes",
                            length, commandName(p.type), Integer.toUnsignedLong(p.length));
                }
                long at = wire.readFully(8).getLong();
                int n = (int) (length - 8);
                int rel = checkChunkRange(p, at, n);
                wire.readFully(p.dst.duplicate().position(p.dstBase + rel).limit(p.dstBase + rel + n));
                p.covered += n;
            }
            case REPLY_TYPE_OFFSET_HOLE -> {
                if (p.type != CMD_READ || length != 12) {
                    throw protocol("Unexpected NBD_REPLY_TYPE_OFFSET_HOLE chunk (length %d)", length);
                }
                ByteBuffer b = wire.readFully(12);
                long at = b.getLong();
                int n = b.getInt();
                if (n == 0) {
                    throw protocol("NBD_REPLY_TYPE_OFFSET_HOLE chunk of zero length");
                }
                int rel = checkChunkRange(p, at, n);
                ByteBuffer zero = p.dst.duplicate().position(p.dstBase + rel).limit(p.dstBase + rel + n);
                while (zero.hasRemaining()) {
                    zero.put((byte) 0);
                }
                p.covered += Integer.toUnsignedLong(n);
            }
            case REPLY_TYPE_BLOCK_STATUS -> {
                if (p.type != CMD_BLOCK_STATUS || length < 12 || (length - 4) % 8 != 0 || length > MAX_STATUS_CHUNK) {
                    throw protocol("Unexpected NBD_REPLY_TYPE_BLOCK_STATUS chunk (length %d)", length);
                }
                ByteBuffer b = wire.readFully(12);
                int ctx = b.getInt();
                long extentLength = Integer.toUnsignedLong(b.getInt());
                int extentFlags = b.getInt();
                skip(length - 12);
                if (ctx == export.baseAllocationId() && p.statusLength < 0) {
                    if (extentLength == 0) {
                        throw protocol("Server sent a block status extent of length 0");
                    }
                    p.statusLength = extentLength;
                    p.statusFlags = extentFlags;
                }
            }
            default -> {
                if ((type & (1 << 15)) == 0) {
                    throw protocol("Unknown structured reply chunk type %d", type);
                }
                if (length < 6 || length > 6 + MAX_STRING + 8) {
                    throw protocol("Error chunk with invalid length %d", length);
                }
                ByteBuffer b = wire.readFully((int) length);
                int error = b.getInt();
                int msgLen = Short.toUnsignedInt(b.getShort());
                if (msgLen > b.remaining()) {
                    throw protocol("Error chunk message length %d exceeds the chunk", msgLen);
                }
                String msg = StandardCharsets.UTF_8.decode(b.slice(b.position(), msgLen)).toString();
                if (p.error == 0) {
                    p.error = error == 0 ? EIO : error;
                    p.message = msg;
                }
            }
        }
        if ((flags & REPLY_FLAG_DONE) != 0) {
            BlockException f = null;
            if (p.error == 0 && p.type == CMD_READ && p.covered != Integer.toUnsignedLong(p.length)) {
                f = new BlockException(Reason.IO, "NBD server '" + address + "' sent " + p.covered + " of "
                        + Integer.toUnsignedLong(p.length) + " bytes for a read at offset " + p.offset);
            } else if (p.error == 0 && p.type == CMD_BLOCK_STATUS && p.statusLength < 0) {
                f = new BlockException(Reason.IO, "NBD server '" + address + "' sent no block status"
                        + " for offset " + p.offset);
            }
            p.complete(f);
        }
    }

    /** Offset of a read chunk inside its request, checking it stays there. */
    private static int checkChunkRange(Pending p, long at, long n) throws BlockException {
        long rel = at - p.offset;
        if (at < p.offset || rel + n > Integer.toUnsignedLong(p.length) || p.covered + n > p.length) {
            throw protocol("Server sent a read chunk at offset %d (%d bytes) outside the request at %d (%d bytes)",
                    at, n, p.offset, Integer.toUnsignedLong(p.length));
        }
        return (int) rel;
    }

    private void skip(long n) throws IOException {
        ByteBuffer b = ByteBuffer.allocate((int) Math.min(n, 64 * 1024));
        while (n > 0) {
            b.clear().limit((int) Math.min(n, b.capacity()));
            wire.readFully(b);
            n -= b.capacity() == 0 ? 0 : b.limit();
        }
    }

    // ---- shutdown --------------------------------------------------------------------------

    /** Sends NBD_CMD_DISC (soft disconnect) when the connection is healthy, then closes it. */
    @Override
    public void close() {
        if (failure == null) {
            Watchdog bound = new Watchdog(channel, Duration.ofSeconds(5)); // a server that stopped reading
            sendLock.lock();
            try {
                requestHeader.clear();
                requestHeader.putInt(REQUEST_MAGIC).putShort((short) 0).putShort((short) CMD_DISC)
                        .putLong(nextCookie.getAndIncrement()).putLong(0).putInt(0).flip();
                wire.write(requestHeader);
                if (wire instanceof Wire.Plain) {
                    channel.shutdownOutput();
                }
            } catch (IOException ignored) {
                // the server is gone already; closing is all that is left
            } finally {
                sendLock.unlock();
                bound.disarm();
            }
        }
        if (requestWatchdog != null) {
            requestWatchdog.interrupt();
        }
        fail(new BlockException(Reason.CLOSED, "NBD connection to '" + address + "' is closed"));
        joinReader();
    }

    private void joinReader() {
        if (Thread.currentThread() == reader) {
            return;
        }
        try {
            reader.join(Duration.ofSeconds(5));
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    // ---- channel helpers -------------------------------------------------------------------

    /** For tests' fake servers. */
    static void readFully(SocketChannel ch, ByteBuffer b) throws IOException {
        new Wire.Plain(ch).readFully(b);
    }

    static void closeQuietly(SocketChannel ch) {
        try {
            ch.close();
        } catch (IOException ignored) {
            // nothing useful to do
        }
    }
}
