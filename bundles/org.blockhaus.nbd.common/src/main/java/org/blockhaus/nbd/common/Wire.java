package org.blockhaus.nbd.common;

import java.io.EOFException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;

/**
 * The byte stream under the NBD protocol: the plain socket, or TLS over it after NBD_OPT_STARTTLS.
 * One thread may read while another writes.
 */
public interface Wire {
    /** Reads some bytes; -1 at end of stream. */
    int read(ByteBuffer dst) throws IOException;

    /** Writes all of {@code srcs}. */
    void write(ByteBuffer... srcs) throws IOException;

    default void readFully(ByteBuffer b) throws IOException {
        while (b.hasRemaining()) {
            if (read(b) < 0) {
                throw new EOFException("connection closed by peer");
            }
        }
    }

    default ByteBuffer readFully(int n) throws IOException {
        ByteBuffer b = ByteBuffer.allocate(n);
        readFully(b);
        return b.flip();
    }

    /** The plain socket. */
    record Plain(SocketChannel channel) implements Wire {
        @Override
        public int read(ByteBuffer dst) throws IOException {
            return channel.read(dst);
        }

        @Override
        public void write(ByteBuffer... srcs) throws IOException {
            long total = 0;
            for (ByteBuffer b : srcs) {
                total += b.remaining();
            }
            while (total > 0) {
                total -= channel.write(srcs);
            }
        }
    }
}
