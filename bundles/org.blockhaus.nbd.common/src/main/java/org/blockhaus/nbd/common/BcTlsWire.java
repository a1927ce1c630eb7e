package org.blockhaus.nbd.common;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.util.concurrent.locks.ReentrantLock;
import org.bouncycastle.tls.TlsProtocol;

/**
 * TLS on Bouncy Castle's stack in blocking mode, over a blocking socket. BC's protocol allows
 * one reader and one writer at a time, concurrently, as {@link Wire} promises.
 */
final class BcTlsWire implements Wire {
    /** BC writes records of at most 16 KiB; larger chunks only cost a bigger copy buffer. */
    private static final int CHUNK = 64 * 1024;
    private final TlsProtocol protocol;
    private final ReentrantLock readLock = new ReentrantLock();
    private final ReentrantLock writeLock = new ReentrantLock();
    private final byte[] readBuffer = new byte[CHUNK];
    private final byte[] writeBuffer = new byte[CHUNK];

    BcTlsWire(TlsProtocol protocol) {
        this.protocol = protocol;
    }

    @Override
    public int read(ByteBuffer dst) throws IOException {
        if (!dst.hasRemaining()) {
            return 0;
        }
        readLock.lock();
        try {
            if (dst.hasArray()) {
                int n = protocol.readApplicationData(dst.array(), dst.arrayOffset() + dst.position(), dst.remaining());
                if (n > 0) {
                    dst.position(dst.position() + n);
                }
                return n;
            }
            int n = protocol.readApplicationData(readBuffer, 0, Math.min(readBuffer.length, dst.remaining()));
            if (n > 0) {
                dst.put(readBuffer, 0, n);
            }
            return n;
        } finally {
            readLock.unlock();
        }
    }

    @Override
    public void write(ByteBuffer... srcs) throws IOException {
        writeLock.lock();
        try {
            for (ByteBuffer b : srcs) {
                if (b.hasArray()) {
                    protocol.writeApplicationData(b.array(), b.arrayOffset() + b.position(), b.remaining());
                    b.position(b.limit());
                    continue;
                }
                while (b.hasRemaining()) {
                    int n = Math.min(writeBuffer.length, b.remaining());
                    b.get(writeBuffer, 0, n);
                    protocol.writeApplicationData(writeBuffer, 0, n);
                }
            }
        } finally {
            writeLock.unlock();
        }
    }

    /** The socket as a stream, without the channel-wide lock of Channels.newInputStream. */
    static InputStream input(SocketChannel ch) {
        return new InputStream() {
            @Override
            public int read() throws IOException {
                byte[] one = new byte[1];
                int n = read(one, 0, 1);
                return n < 0 ? -1 : one[0] & 0xff;
            }

            @Override
            public int read(byte[] b, int off, int len) throws IOException {
                if (len == 0) {
                    return 0;
                }
                int n;
                do {
                    n = ch.read(ByteBuffer.wrap(b, off, len));
                } while (n == 0);
                return n;
            }
        };
    }

    static OutputStream output(SocketChannel ch) {
        return new OutputStream() {
            @Override
            public void write(int b) throws IOException {
                write(new byte[] {(byte) b}, 0, 1);
            }

            @Override
            public void write(byte[] b, int off, int len) throws IOException {
                ByteBuffer buf = ByteBuffer.wrap(b, off, len);
                while (buf.hasRemaining()) {
                    ch.write(buf);
                }
            }
        };
    }
}
