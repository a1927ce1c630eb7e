package org.blockhaus.nbd.server;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.EOFException;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.core.BlockCore;
import org.blockhaus.protocol.nbd.NbdDriver;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * A hostile client speaks raw bytes to the server. Every bad request gets an NBD error (or, for
 * violations the spec lets a server punish, a disconnect); nothing crashes, nothing is read or
 * written out of bounds, and after each test a well-behaved client still gets served.
 */
@Timeout(value = 30, unit = TimeUnit.SECONDS)
class HostileClientTest {
    static final long IHAVEOPT = 0x49484156454F5054L;
    static final int SIZE = 1 << 20;
    static final int EPERM = 1;
    static final int EINVAL = 22;
    static final int ENOSPC = 28;
    static final int EOVERFLOW = 75;

    private final MemoryNode node = new MemoryNode(SIZE);
    private final MemoryNode roNode = new MemoryNode(SIZE);
    private NbdServer.Running server;

    @BeforeEach
    void start() throws Exception {
        server = NbdServer.standalone().start(List.of(new NbdServer.Export("w", node, false, null),
                new NbdServer.Export("r", roNode, true, null)), new InetSocketAddress("127.0.0.1", 0),
                NbdServer.Settings.DEFAULT.withHandshakeTimeout(Duration.ofMillis(700)));
    }

    @AfterEach
    void othersStillServed() throws Exception {
        try {
            BlockCore core = BlockCore.standalone();
            core.addDriver(new NbdDriver());
            try (Image i = core.open(server.uri("w"), Options.of("driver", "nbd"), OpenMode.READ_WRITE)) {
                byte[] d = "still alive".getBytes(StandardCharsets.UTF_8);
                i.write(SIZE - d.length, ByteBuffer.wrap(d), 0);
                ByteBuffer b = ByteBuffer.allocate(d.length);
                i.read(SIZE - d.length, b);
                assertArrayEquals(d, b.array());
            }
        } finally {
            server.close();
        }
    }

    /** A client that speaks the protocol byte by byte, as the test tells it. */
    static final class Raw implements AutoCloseable {
        final SocketChannel ch;

        Raw(SocketAddress a) throws IOException {
            ch = SocketChannel.open(a);
        }

        void send(ByteBuffer b) throws IOException {
            b.flip();
            while (b.hasRemaining()) {
                ch.write(b);
            }
        }

        ByteBuffer read(int n) throws IOException {
            ByteBuffer b = ByteBuffer.allocate(n);
            while (b.hasRemaining()) {
                if (ch.read(b) < 0) {
                    throw new EOFException();
                }
            }
            return b.flip();
        }

        void hello() throws IOException {
            ByteBuffer h = read(18);
            assertEquals(0x4e42444d41474943L, h.getLong());
            assertEquals(IHAVEOPT, h.getLong());
            send(ByteBuffer.allocate(4).putInt(3)); // fixed newstyle, no zeroes
        }

        void option(int opt, byte[] data) throws IOException {
            send(ByteBuffer.allocate(16 + data.length).putLong(IHAVEOPT).putInt(opt).putInt(data.length).put(data));
        }

        record OptReply(int opt, int type, byte[] data) {
        }

        OptReply optReply() throws IOException {
            ByteBuffer h = read(20);
            assertEquals(0x3e889045565a9L, h.getLong());
            int opt = h.getInt();
            int type = h.getInt();
            return new OptReply(opt, type, read(h.getInt()).array());
        }

        static byte[] nameAndInfos(String name) {
            byte[] n = name.getBytes(StandardCharsets.UTF_8);
            return ByteBuffer.allocate(4 + n.length + 2).putInt(n.length).put(n).putShort((short) 0).array();
        }

        /** Handshake up to transmission; structured replies and base:allocation if asked. */
        void go(String export, boolean structured, boolean meta) throws IOException {
            hello();
            if (structured) {
                option(8, new byte[0]);
                assertEquals(1, optReply().type());
            }
            if (meta) {
                byte[] n = export.getBytes(StandardCharsets.UTF_8);
                byte[] q = "base:allocation".getBytes(StandardCharsets.UTF_8);
                option(10, ByteBuffer.allocate(12 + n.length + q.length).putInt(n.length).put(n).putInt(1)
                        .putInt(q.length).put(q).array());
                assertEquals(4, optReply().type());
                assertEquals(1, optReply().type());
            }
            option(7, nameAndInfos(export));
            while (true) {
                OptReply r = optReply();
                if (r.type() == 1) {
                    return;
                }
                assertEquals(3, r.type(), "NBD_REP_INFO");
            }
        }

        void request(int flags, int type, long cookie, long offset, long length, byte[] payload) throws IOException {
            ByteBuffer b = ByteBuffer.allocate(28 + (payload == null ? 0 : payload.length));
            b.putInt(0x25609513).putShort((short) flags).putShort((short) type).putLong(cookie).putLong(offset)
                    .putInt((int) length);
            if (payload != null) {
                b.put(payload);
            }
            send(b);
        }

        record Reply(long cookie, int error) {
        }

        /** The next reply (simple, or one structured chunk): its cookie and error. */
        Reply reply() throws IOException {
            int magic = read(4).getInt();
            if (magic == 0x67446698) {
                ByteBuffer b = read(12);
                int err = b.getInt();
                return new Reply(b.getLong(), err);
            }
            assertEquals(0x668e33ef, magic);
            ByteBuffer h = read(16);
            h.getShort();
            int type = h.getShort() & 0xffff;
            long cookie = h.getLong();
            int len = h.getInt();
            assertTrue(len >= 0 && len < 65536, "reply payload length " + len);
            ByteBuffer p = read(len);
            return new Reply(cookie, (type & 0x8000) != 0 ? p.getInt() : 0);
        }

        /** The error of the next reply (simple or a structured chunk), after checking its cookie. */
        int error(long cookie) throws IOException {
            int magic = read(4).getInt();
            if (magic == 0x67446698) {
                ByteBuffer b = read(12);
                int err = b.getInt();
                assertEquals(cookie, b.getLong());
                return err;
            }
            assertEquals(0x668e33ef, magic);
            ByteBuffer h = read(16);
            h.getShort();
            int type = h.getShort() & 0xffff;
            assertEquals(cookie, h.getLong());
            int len = h.getInt();
            assertTrue(len >= 0 && len < 65536, "reply payload length " + len);
            ByteBuffer p = read(len);
            if ((type & 0x8000) != 0) {
                return p.getInt();
            }
            return 0;
        }

        /** True when the server hangs up within the time limit. */
        boolean disconnected(Duration within) throws Exception {
            ch.configureBlocking(true);
            Thread t = Thread.ofVirtual().start(() -> {
                try {
                    Thread.sleep(within);
                    ch.close();
                } catch (Exception ignored) {
                    // test thread decides
                }
            });
            try {
                ByteBuffer b = ByteBuffer.allocate(65536);
                while (true) {
                    int n = ch.read(b.clear());
                    if (n < 0) {
                        return true;
                    }
                }
            } catch (IOException e) {
                return !e.getClass().getSimpleName().equals("AsynchronousCloseException");
            } finally {
                t.interrupt();
            }
        }

        @Override
        public void close() throws IOException {
            ch.close();
        }
    }

    private Raw raw() throws IOException {
        return new Raw(server.address());
    }

    @Test
    void readPastTheEndIsEinval() throws Exception {
        try (Raw c = raw()) {
            c.go("w", true, false);
            c.request(0, 0, 1, SIZE - 512, 1024, null);
            assertEquals(EINVAL, c.error(1));
            c.request(0, 0, 2, SIZE, 0, null);
            assertEquals(0, c.error(2), "a zero-length read at the end is fine");
        }
    }

    @Test
    void offsetThatOverflows64BitsIsEinval() throws Exception {
        try (Raw c = raw()) {
            c.go("w", false, false);
            c.request(0, 0, 7, -512L, 4096, null);
            assertEquals(EINVAL, c.error(7));
            c.request(0, 4, 8, Long.MAX_VALUE, 0xffff_ffffL, null);
            assertEquals(EINVAL, c.error(8), "trim past the end");
        }
    }

    @Test
    void hugeReadIsRefusedWithoutAllocating() throws Exception {
        try (Raw c = raw()) {
            c.go("w", true, false);
            for (int i = 0; i < 64; i++) {
                c.request(0, 0, 100 + i, 0, 0xffff_ffffL, null);
            }
            java.util.Set<Long> seen = new java.util.HashSet<>();
            for (int i = 0; i < 64; i++) {
                Raw.Reply r = c.reply();
                assertEquals(EOVERFLOW, r.error());
                seen.add(r.cookie());
            }
            assertEquals(64, seen.size(), "replies may come in any order, one per request");
        }
    }

    @Test
    void writePastTheEndIsEnospcAndTheStreamStaysInStep() throws Exception {
        try (Raw c = raw()) {
            c.go("w", false, false);
            c.request(0, 1, 1, SIZE - 10, 20, new byte[20]);
            assertEquals(ENOSPC, c.error(1));
            c.request(0, 1, 2, 0, 4, new byte[] {1, 2, 3, 4});
            assertEquals(0, c.error(2));
        }
        ByteBuffer b = ByteBuffer.allocate(4);
        node.read(0, b);
        assertArrayEquals(new byte[] {1, 2, 3, 4}, b.array());
        ByteBuffer tail = ByteBuffer.allocate(10);
        node.read(SIZE - 10, tail);
        assertArrayEquals(new byte[10], tail.array(), "nothing was written past the end");
    }

    @Test
    void oversizedWriteGetsAnErrorAndADisconnect() throws Exception {
        try (Raw c = raw()) {
            c.go("w", true, false);
            c.request(0, 1, 5, 0, 0x8000_0000L, null);
            assertEquals(EOVERFLOW, c.error(5));
            assertTrue(c.disconnected(Duration.ofSeconds(5)));
        }
    }

    @Test
    void cacheReadsAheadAndChecksItsRangeLikeARead() throws Exception {
        try (Raw c = raw()) {
            c.go("r", true, false);
            long before;
            synchronized (roNode) {
                before = roNode.bytesRead;
            }
            c.request(0, 5 /* CACHE */, 1, 4096, SIZE - 4096, null);
            assertEquals(0, c.error(1));
            synchronized (roNode) {
                assertEquals(SIZE - 4096, roNode.bytesRead - before, "the range was read ahead");
            }
            c.request(0, 5, 2, SIZE - 512, 1024, null);
            assertEquals(EINVAL, c.error(2), "past the end");
            c.request(0, 5, 3, -512, 1024, null);
            assertEquals(EINVAL, c.error(3), "offset overflowing 64 bits");
            c.request(4 /* DF */, 5, 4, 0, 512, null);
            assertEquals(EINVAL, c.error(4), "CACHE takes no DF");
        }
    }

    @Test
    void unknownCommandsAndFlagsAreEinval() throws Exception {
        try (Raw c = raw()) {
            c.go("w", true, false);
            c.request(0, 42, 1, 0, 512, null);
            assertEquals(EINVAL, c.error(1));
            c.request(0x8000, 0, 2, 0, 512, null);
            assertEquals(EINVAL, c.error(2));
            c.request(8 /* REQ_ONE */, 3, 3, 0, 0, null);
            assertEquals(EINVAL, c.error(3), "flush takes no REQ_ONE");
        }
    }

    @Test
    void writesToAReadOnlyExportAreEperm() throws Exception {
        try (Raw c = raw()) {
            c.go("r", false, false);
            c.request(0, 1, 1, 0, 512, new byte[512]);
            assertEquals(EPERM, c.error(1));
            c.request(0, 6, 2, 0, 512, null);
            assertEquals(EPERM, c.error(2));
            c.request(0, 4, 3, 0, 512, null);
            assertEquals(EPERM, c.error(3));
        }
        assertEquals(0, roNode.chunkCount());
    }

    @Test
    void blockStatusNeedsANegotiatedContext() throws Exception {
        try (Raw c = raw()) {
            c.go("w", true, false);
            c.request(0, 7, 1, 0, 4096, null);
            assertEquals(EINVAL, c.error(1));
        }
        try (Raw c = raw()) {
            c.go("w", true, true);
            c.request(0, 7, 2, 0, 4096, null);
            assertEquals(0, c.error(2));
            c.request(0, 7, 3, SIZE, 4096, null);
            assertEquals(EINVAL, c.error(3));
        }
    }

    @Test
    void clientThatNeverReadsRepliesOnlyStallsItself() throws Exception {
        try (Raw c = raw()) {
            c.go("w", true, false);
            // 200 reads of 1 MiB without reading a reply: the server stops reading this client once
            // its window and byte budget are used; it neither buffers without bound nor stalls others
            Thread writer = Thread.ofVirtual().start(() -> {
                try {
                    for (int i = 0; i < 200; i++) {
                        c.request(0, 0, i, 0, SIZE, null);
                    }
                } catch (IOException ignored) {
                    // closed at the end of the test
                }
            });
            Thread.sleep(500);
            othersStillServedWhile();
            writer.interrupt();
        }
    }

    private void othersStillServedWhile() throws Exception {
        BlockCore core = BlockCore.standalone();
        core.addDriver(new NbdDriver());
        try (Image i = core.open(server.uri("r"), Options.of("driver", "nbd"), OpenMode.READ_ONLY)) {
            i.read(0, ByteBuffer.allocate(4096));
        }
    }

    @Test
    void badRequestMagicDisconnects() throws Exception {
        try (Raw c = raw()) {
            c.go("w", false, false);
            c.send(ByteBuffer.allocate(28).putInt(0x12345678).position(28));
            assertTrue(c.disconnected(Duration.ofSeconds(5)));
        }
    }

    @Test
    void abruptDisconnectInTheMiddleOfAWriteLeavesNothingBehind() throws Exception {
        try (Raw c = raw()) {
            c.go("w", false, false);
            ByteBuffer b = ByteBuffer.allocate(28 + 1000).putInt(0x25609513).putShort((short) 0).putShort((short) 1)
                    .putLong(1).putLong(0).putInt(65536);
            b.position(28 + 1000);
            c.send(b);
        }
        Thread.sleep(100);
        assertEquals(0, node.chunkCount(), "a partial write is never applied");
    }

    @Test
    void tricklingHandshakeIsCutOff() throws Exception {
        try (Raw c = raw()) {
            c.read(18);
            long t0 = System.nanoTime();
            boolean cut = false;
            try {
                for (int i = 0; i < 40; i++) {
                    c.send(ByteBuffer.allocate(1).put((byte) 0));
                    Thread.sleep(100);
                }
            } catch (IOException e) {
                cut = true;
            }
            assertTrue(cut || c.disconnected(Duration.ofSeconds(2)), "the server dropped the slow client");
            assertTrue(System.nanoTime() - t0 < TimeUnit.SECONDS.toNanos(4));
        }
    }

    @Test
    void endlessOptionHagglingIsCutOff() throws Exception {
        try (Raw c = raw()) {
            c.hello();
            int answered = 0;
            try {
                for (int i = 0; i < 1000; i++) {
                    c.option(99, new byte[0]);
                    assertEquals(0x80000001, c.optReply().type(), "NBD_REP_ERR_UNSUP");
                    answered++;
                }
            } catch (IOException e) {
                // dropped
            }
            assertTrue(answered < 1000, "the server gave up on the client after " + answered + " options");
        }
    }

    @Test
    void oversizedOptionIsCutOff() throws Exception {
        try (Raw c = raw()) {
            c.hello();
            c.send(ByteBuffer.allocate(16).putLong(IHAVEOPT).putInt(7).putInt(0x4000_0000));
            assertTrue(c.disconnected(Duration.ofSeconds(5)));
        }
    }

    @Test
    void optionErrorsUseTheSpecsReplies() throws Exception {
        try (Raw c = raw()) {
            c.hello();
            c.option(7, Raw.nameAndInfos("nope"));
            Raw.OptReply r = c.optReply();
            assertEquals(0x80000006, r.type(), "NBD_REP_ERR_UNKNOWN");
            assertTrue(new String(r.data(), StandardCharsets.UTF_8).contains("nope"));
            c.option(5, new byte[0]);
            assertEquals(0x80000001, c.optReply().type(), "STARTTLS: NBD_REP_ERR_UNSUP");
            c.option(10, ByteBuffer.allocate(8).putInt(0).putInt(0).array());
            assertEquals(0x80000003, c.optReply().type(), "SET_META_CONTEXT before structured replies");
            c.option(7, new byte[] {0, 0, 0, 9});
            assertEquals(0x80000003, c.optReply().type(), "name longer than the option");
            c.option(3, new byte[0]);
            Raw.OptReply list1 = c.optReply();
            Raw.OptReply list2 = c.optReply();
            assertEquals(2, list1.type());
            assertEquals(2, list2.type());
            assertEquals(1, c.optReply().type());
            c.option(2, new byte[0]);
            assertEquals(1, c.optReply().type(), "NBD_OPT_ABORT is acknowledged");
            assertTrue(c.disconnected(Duration.ofSeconds(5)));
        }
    }

    @Test
    void exportNameForAnUnknownExportDisconnects() throws Exception {
        try (Raw c = raw()) {
            c.hello();
            c.option(1, "nope".getBytes(StandardCharsets.UTF_8));
            assertTrue(c.disconnected(Duration.ofSeconds(5)));
        }
        try (Raw c = raw()) {
            c.hello();
            c.option(1, "w".getBytes(StandardCharsets.UTF_8));
            ByteBuffer b = c.read(10);
            assertEquals(SIZE, b.getLong());
        }
    }
}
