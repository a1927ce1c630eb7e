package org.blockhaus.nbd.common;

import java.io.EOFException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.util.concurrent.locks.ReentrantLock;
import javax.net.ssl.SSLEngine;
import javax.net.ssl.SSLEngineResult;
import javax.net.ssl.SSLEngineResult.HandshakeStatus;
import javax.net.ssl.SSLException;

/**
 * TLS over a blocking socket with an {@link SSLEngine}: the reader thread unwraps, senders wrap,
 * each under its own lock (SSLEngine allows one wrap and one unwrap at a time, concurrently).
 */
public final class TlsWire implements Wire {
    private final SocketChannel ch;
    private final SSLEngine engine;
    private final ReentrantLock readLock = new ReentrantLock();
    private final ReentrantLock writeLock = new ReentrantLock();
    private ByteBuffer netIn;
    private ByteBuffer appIn;
    private ByteBuffer netOut;

    private TlsWire(SocketChannel ch, SSLEngine engine) {
        this.ch = ch;
        this.engine = engine;
        int packet = engine.getSession().getPacketBufferSize();
        netIn = ByteBuffer.allocate(packet).flip();
        appIn = ByteBuffer.allocate(engine.getSession().getApplicationBufferSize()).flip();
        netOut = ByteBuffer.allocate(packet);
    }

    /** Runs the TLS handshake on {@code ch} and returns the wire for everything after it. */
    public static TlsWire handshake(SocketChannel ch, SSLEngine engine) throws IOException {
        TlsWire w = new TlsWire(ch, engine);
        engine.beginHandshake();
        while (true) {
            HandshakeStatus hs = engine.getHandshakeStatus();
            switch (hs) {
                case NEED_WRAP -> w.wrap(new ByteBuffer[0]);
                case NEED_UNWRAP, NEED_UNWRAP_AGAIN -> {
                    if (w.unwrapOnce() < 0) {
                        throw new EOFException("connection closed during the TLS handshake");
                    }
                }
                case NEED_TASK -> w.runTasks();
                default -> {
                    return w;
                }
            }
        }
    }

    private void runTasks() {
        Runnable t;
        while ((t = engine.getDelegatedTask()) != null) {
            t.run();
        }
    }

    @Override
    public int read(ByteBuffer dst) throws IOException {
        readLock.lock();
        try {
            while (!appIn.hasRemaining()) {
                if (unwrapOnce() < 0) {
                    return -1;
                }
            }
            int n = Math.min(dst.remaining(), appIn.remaining());
            dst.put(appIn.slice(appIn.position(), n));
            appIn.position(appIn.position() + n);
            return n;
        } finally {
            readLock.unlock();
        }
    }

    /** One unwrap step (reading from the socket when needed); -1 at end of stream. */
    private int unwrapOnce() throws IOException {
        appIn.compact();
        try {
            while (true) {
                SSLEngineResult r = engine.unwrap(netIn, appIn);
                switch (r.getStatus()) {
                    case OK -> {
                        afterUnwrap(r.getHandshakeStatus());
                        return r.bytesProduced();
                    }
                    case BUFFER_UNDERFLOW -> {
                        if (netIn.limit() == netIn.capacity() && netIn.position() == 0) {
                            netIn = grow(netIn, engine.getSession().getPacketBufferSize());
                        }
                        netIn.compact();
                        int n = ch.read(netIn);
                        netIn.flip();
                        if (n < 0) {
                            return -1;
                        }
                    }
                    case BUFFER_OVERFLOW -> appIn = grow(appIn, engine.getSession().getApplicationBufferSize());
                    case CLOSED -> {
                        return -1;
                    }
                }
            }
        } finally {
            appIn.flip();
        }
    }

    /** TLS 1.3 sends post-handshake messages (key updates) that need an answer. */
    private void afterUnwrap(HandshakeStatus hs) throws IOException {
        if (hs == HandshakeStatus.NEED_TASK) {
            runTasks();
            hs = engine.getHandshakeStatus();
        }
        if (hs == HandshakeStatus.NEED_WRAP) {
            wrap(new ByteBuffer[0]);
        }
    }

    private static ByteBuffer grow(ByteBuffer b, int atLeast) {
        ByteBuffer n = ByteBuffer.allocate(Math.max(atLeast, b.capacity() * 2));
        n.put(b.flip());
        return n;
    }

    @Override
    public void write(ByteBuffer... srcs) throws IOException {
        wrap(srcs);
    }

    private void wrap(ByteBuffer[] srcs) throws IOException {
        writeLock.lock();
        try {
            while (true) {
                netOut.clear();
                SSLEngineResult r = engine.wrap(srcs, netOut);
                if (r.getStatus() == SSLEngineResult.Status.BUFFER_OVERFLOW) {
                    netOut = ByteBuffer.allocate(netOut.capacity() * 2);
                    continue;
                }
                if (r.getStatus() == SSLEngineResult.Status.CLOSED) {
                    throw new SSLException("TLS session closed");
                }
                netOut.flip();
                while (netOut.hasRemaining()) {
                    ch.write(netOut);
                }
                if (r.getHandshakeStatus() == HandshakeStatus.NEED_TASK) {
                    runTasks();
                }
                if (!hasRemaining(srcs)) {
                    return;
                }
            }
        } finally {
            writeLock.unlock();
        }
    }

    private static boolean hasRemaining(ByteBuffer[] srcs) {
        for (ByteBuffer b : srcs) {
            if (b.hasRemaining()) {
                return true;
            }
        }
        return false;
    }
}
