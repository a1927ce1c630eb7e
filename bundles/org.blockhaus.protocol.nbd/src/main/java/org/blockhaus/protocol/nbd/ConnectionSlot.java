package org.blockhaus.protocol.nbd;

import java.time.Duration;
import java.util.concurrent.TimeUnit;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;

/**
 * One connection of a node, and QEMU's reconnect-delay for it: when the connection breaks, a
 * background thread connects again (backing off from 100 ms to 4 s between attempts, for as long
 * as the node is open), and requests wait up to reconnect-delay seconds from the moment of the
 * break for it; a request that was in flight is sent again on the new connection. Once the delay
 * has passed, requests fail at once until a reconnect succeeds. With reconnect-delay 0 a broken
 * connection stays broken, as in QEMU.
 */
final class ConnectionSlot {
    /** Opens a fresh connection to the same export (handshake included). */
    interface Connector {
        NbdConnection connect() throws BlockException;
    }

    private static final long FIRST_BACKOFF_MS = 100;
    private static final long MAX_BACKOFF_MS = 4000;

    private final Connector connector;
    private final Duration reconnectDelay;
    private final NbdConnection.Export expected;
    private volatile NbdConnection connection; // written under this
    private long brokenSince; // nanoTime of the break, valid while reconnecting
    private BlockException breakage; // why the connection broke, while reconnecting
    private volatile Thread reconnector; // written under this
    private boolean closed; // guarded by this

    ConnectionSlot(NbdConnection first, Connector connector, Duration reconnectDelay) {
        this.connection = first;
        this.connector = connector;
        this.reconnectDelay = reconnectDelay;
        this.expected = first.export();
    }

    /** The connection to send on, waiting for a reconnect while reconnect-delay allows. */
    NbdConnection current() throws BlockException {
        NbdConnection c = connection;
        if (reconnector == null && !c.isBroken()) {
            return c; // the common case takes no lock: requests from many threads share the slot
        }
        return currentSlowly();
    }

    private synchronized NbdConnection currentSlowly() throws BlockException {
        if (reconnector == null && connection.isBroken() && !reconnectDelay.isZero() && !closed) {
            startReconnect(connection.failure());
        }
        if (reconnector != null) {
            awaitReconnect();
        }
        return connection;
    }

    /**
     * Called when a request on {@code used} failed. Returns normally when the request should be
     * sent again (on a new connection); rethrows {@code error} otherwise: the server answered with
     * an error, reconnect-delay is 0, or the delay ran out.
     */
    synchronized void retryOrThrow(NbdConnection used, BlockException error) throws BlockException {
        if (reconnectDelay.isZero() || closed || !used.isBroken()) {
            throw error;
        }
        if (connection == used && reconnector == null) {
            startReconnect(error);
        }
        awaitReconnect();
    }

    private void startReconnect(BlockException why) {
        brokenSince = System.nanoTime();
        breakage = why;
        reconnector = Thread.ofVirtual().name("nbd-reconnect " + connection.address()).start(this::reconnectLoop);
    }

    private void awaitReconnect() throws BlockException {
        long deadline = brokenSince + reconnectDelay.toNanos();
        while (reconnector != null && !closed) {
            long left = deadline - System.nanoTime();
            if (left <= 0) {
                throw new BlockException(breakage.reason() == Reason.CLOSED ? Reason.IO : breakage.reason(),
                        breakage.getMessage() + " (not reconnected within reconnect-delay="
                                + reconnectDelay.toSeconds() + " s; still trying in the background)", breakage);
            }
            try {
                TimeUnit.NANOSECONDS.timedWait(this, left);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new BlockException(Reason.IO, "Interrupted while waiting for the NBD reconnect", e);
            }
        }
        if (closed) {
            throw new BlockException(Reason.CLOSED, "NBD node is closed");
        }
    }

    private void reconnectLoop() {
        long backoff = FIRST_BACKOFF_MS;
        while (true) {
            synchronized (this) {
                if (closed) {
                    return;
                }
            }
            NbdConnection fresh = null;
            try {
                fresh = connector.connect();
                if (!sameExport(fresh.export(), expected)) {
                    BlockException changed = new BlockException(Reason.IO, "NBD server '" + fresh.address()
                            + "' offers the export differently after reconnecting (size or flags changed)");
                    fresh.close();
                    fresh = null;
                    synchronized (this) {
                        breakage = changed;
                    }
                }
            } catch (BlockException e) {
                synchronized (this) {
                    breakage = new BlockException(e.reason(), e.getMessage(), e);
                }
            }
            synchronized (this) {
                if (fresh != null) {
                    if (closed) {
                        fresh.close();
                        return;
                    }
                    NbdConnection old = connection;
                    connection = fresh;
                    reconnector = null;
                    notifyAll();
                    old.close();
                    return;
                }
            }
            try {
                Thread.sleep(backoff);
            } catch (InterruptedException e) {
                return;
            }
            backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
        }
    }

    /** Connections of one node must agree on everything but their context ids. */
    static boolean sameExport(NbdConnection.Export a, NbdConnection.Export b) {
        return a.size() == b.size() && a.flags() == b.flags() && a.structured() == b.structured()
                && (a.baseAllocationId() >= 0) == (b.baseAllocationId() >= 0) && a.minBlock() == b.minBlock()
                && a.maxBlock() == b.maxBlock();
    }

    void close() {
        Thread r;
        NbdConnection c;
        synchronized (this) {
            closed = true;
            r = reconnector;
            c = connection;
            notifyAll();
        }
        if (r != null) {
            r.interrupt();
        }
        c.close();
    }
}
