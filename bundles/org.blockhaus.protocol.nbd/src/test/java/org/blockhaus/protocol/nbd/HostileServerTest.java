package org.blockhaus.protocol.nbd;

import static org.blockhaus.nbd.common.Nbd.*;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.TimeUnit;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * A fake server in the test misbehaves in one way per test; the client must end each case with
 * a clear BlockException, quickly, and never hang.
 */
@Timeout(value = 20, unit = TimeUnit.SECONDS)
class HostileServerTest {
    private static final long SIZE = 64 << 20;

    interface Script {
        void run(SocketChannel ch) throws Exception;
    }

    private ServerSocketChannel listener;
    private Thread serverThread;
    private final BlockCore core = BlockCore.standalone();

    HostileServerTest() {
        core.addDriver(new NbdDriver());
    }

    @AfterEach
    void stop() throws Exception {
        if (listener != null) {
            listener.close();
        }
        if (serverThread != null) {
            serverThread.interrupt();
            serverThread.join(5000);
        }
    }

    private int serve(Script script) throws IOException {
        listener = ServerSocketChannel.open();
        listener.bind(new InetSocketAddress(InetAddress.getLoopbackAddress(), 0));
        serverThread = Thread.ofVirtual().start(() -> {
            try (SocketChannel ch = listener.accept()) {
                script.run(ch);
                Thread.sleep(30_000); // keep the connection open unless the script closed it
            } catch (Exception ignored) {
                // the fake server just stops
            }
        });
        return ((InetSocketAddress) listener.getLocalAddress()).getPort();
    }

    private Image open(int port) throws BlockException {
        return open(port, OpenMode.READ_WRITE);
    }

    private Image open(int port, OpenMode mode) throws BlockException {
        return core.open(null, Options.of("driver", "nbd", "server.type", "inet", "server.host", "127.0.0.1",
                "server.port", String.valueOf(port), "export", "e", "x-timeout", "2", "x-request-timeout", "2"),
                mode);
    }

    private BlockException openFails(Script s) throws IOException {
        int port = serve(s);
        long t0 = System.nanoTime();
        BlockException e = assertThrows(BlockException.class, () -> open(port).close());
        assertTrue(System.nanoTime() - t0 < TimeUnit.SECONDS.toNanos(5), "took too long");
        return e;
    }

    // ---- wire helpers for the fake server ----

    static void write(SocketChannel ch, ByteBuffer b) throws IOException {
        b.flip();
        while (b.hasRemaining()) {
            ch.write(b);
        }
    }

    static ByteBuffer read(SocketChannel ch, int n) throws IOException {
        ByteBuffer b = ByteBuffer.allocate(n);
        NbdConnection.readFully(ch, b);
        return b.flip();
    }

    static void hello(SocketChannel ch) throws IOException {
        write(ch, ByteBuffer.allocate(18).putLong(NBDMAGIC).putLong(IHAVEOPT)
                .putShort((short) (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)));
        read(ch, 4);
    }

    record Option(int opt, ByteBuffer data) {
    }

    static Option option(SocketChannel ch) throws IOException {
        ByteBuffer h = read(ch, 16);
        h.getLong();
        int opt = h.getInt();
        return new Option(opt, read(ch, h.getInt()));
    }

    static void optReply(SocketChannel ch, int opt, int type, byte[] data) throws IOException {
        write(ch, ByteBuffer.allocate(20 + data.length).putLong(OPTION_REPLY_MAGIC).putInt(opt).putInt(type)
                .putInt(data.length).put(data));
    }

    /** A correct handshake: structured replies, base:allocation as context 5, NBD_OPT_GO. */
    static void handshake(SocketChannel ch) throws IOException {
        hello(ch);
        while (true) {
            Option o = option(ch);
            switch (o.opt()) {
                case OPT_STRUCTURED_REPLY -> optReply(ch, o.opt(), REP_ACK, new byte[0]);
                case OPT_SET_META_CONTEXT -> {
                    byte[] n = CONTEXT_BASE_ALLOCATION.getBytes(StandardCharsets.UTF_8);
                    optReply(ch, o.opt(), REP_META_CONTEXT, ByteBuffer.allocate(4 + n.length).putInt(5).put(n).array());
                    optReply(ch, o.opt(), REP_ACK, new byte[0]);
                }
                case OPT_GO -> {
                    optReply(ch, o.opt(), REP_INFO, ByteBuffer.allocate(12).putShort((short) INFO_EXPORT).putLong(SIZE)
                            .putShort((short) (FLAG_HAS_FLAGS | FLAG_SEND_FLUSH)).array());
                    optReply(ch, o.opt(), REP_ACK, new byte[0]);
                    return;
                }
                default -> optReply(ch, o.opt(), REP_ERR_UNSUP, new byte[0]);
            }
        }
    }

    record Request(int flags, int type, long cookie, long offset, int length) {
    }

    static Request request(SocketChannel ch) throws IOException {
        ByteBuffer b = read(ch, 28);
        b.getInt();
        return new Request(b.getShort(), b.getShort(), b.getLong(), b.getLong(), b.getInt());
    }

    static ByteBuffer chunk(int flags, int type, long cookie, int length) {
        return ByteBuffer.allocate(20 + Math.max(0, length)).putInt(STRUCTURED_REPLY_MAGIC).putShort((short) flags)
                .putShort((short) type).putLong(cookie).putInt(length);
    }

    // ---- handshake ----

    @Test
    void badInitialMagicIsReported() throws Exception {
        BlockException e = openFails(ch -> write(ch, ByteBuffer.allocate(18).putLong(0x1234).putLong(IHAVEOPT)));
        assertTrue(e.getMessage().contains("Bad initial magic received: 0x1234"), e.getMessage());
    }

    @Test
    void oldstyleServerIsRefusedClearly() throws Exception {
        BlockException e = openFails(ch -> write(ch, ByteBuffer.allocate(152).putLong(NBDMAGIC)
                .putLong(OLDSTYLE_MAGIC)));
        assertEquals(BlockException.Reason.UNSUPPORTED, e.reason());
        assertTrue(e.getMessage().contains("oldstyle"), e.getMessage());
    }

    @Test
    void serverClosingMidHandshakeIsReported() throws Exception {
        BlockException e = openFails(ch -> {
            hello(ch);
            ch.close();
        });
        assertTrue(e.getMessage().contains("closed the connection"), e.getMessage());
    }

    @Test
    void stalledServerTimesOut() throws Exception {
        BlockException e = openFails(ch -> Thread.sleep(60_000));
        assertTrue(e.getMessage().contains("timed out"), e.getMessage());
    }

    @Test
    void oversizedOptionReplyIsRejectedWithoutAllocating() throws Exception {
        BlockException e = openFails(ch -> {
            hello(ch);
            Option o = option(ch);
            write(ch, ByteBuffer.allocate(20).putLong(OPTION_REPLY_MAGIC).putInt(o.opt()).putInt(REP_ACK)
                    .putInt(0x7fff_0000));
        });
        assertTrue(e.getMessage().contains("oversized"), e.getMessage());
    }

    @Test
    void badOptionReplyMagicIsReported() throws Exception {
        BlockException e = openFails(ch -> {
            hello(ch);
            option(ch);
            write(ch, ByteBuffer.allocate(20).putLong(0xdeadbeefL).position(20));
        });
        assertTrue(e.getMessage().contains("option reply magic"), e.getMessage());
    }

    @Test
    void refusalOfGoIsReportedInQemusWords() throws Exception {
        BlockException e = openFails(ch -> {
            hello(ch);
            while (true) {
                Option o = option(ch);
                if (o.opt() == OPT_GO) {
                    optReply(ch, o.opt(), REP_ERR_POLICY, "go away".getBytes(StandardCharsets.UTF_8));
                    return;
                }
                optReply(ch, o.opt(), REP_ERR_UNSUP, new byte[0]);
            }
        });
        assertEquals(BlockException.Reason.PERMISSION, e.reason());
        assertTrue(e.getMessage().contains("Denied by server for option 7 (go)"), e.getMessage());
        assertTrue(e.getMessage().contains("server reported: go away"), e.getMessage());
    }

    @Test
    void invalidBlockSizeInformationIsRejected() throws Exception {
        BlockException e = openFails(ch -> {
            hello(ch);
            while (true) {
                Option o = option(ch);
                if (o.opt() == OPT_GO) {
                    optReply(ch, o.opt(), REP_INFO, ByteBuffer.allocate(12).putShort((short) INFO_EXPORT)
                            .putLong(SIZE).putShort((short) 1).array());
                    optReply(ch, o.opt(), REP_INFO, ByteBuffer.allocate(14).putShort((short) INFO_BLOCK_SIZE)
                            .putInt(3).putInt(4096).putInt(1 << 20).array());
                    optReply(ch, o.opt(), REP_ACK, new byte[0]);
                    return;
                }
                optReply(ch, o.opt(), REP_ERR_UNSUP, new byte[0]);
            }
        });
        assertTrue(e.getMessage().contains("minimum block size 3"), e.getMessage());
    }

    @Test
    void olderServerWithoutOptGoIsOpenedWithExportNameAndSimpleReplies() throws Exception {
        int port = serve(ch -> {
            hello(ch);
            while (true) {
                Option o = option(ch);
                if (o.opt() == OPT_EXPORT_NAME) {
                    assertEquals("e", StandardCharsets.UTF_8.decode(o.data()).toString());
                    write(ch, ByteBuffer.allocate(10).putLong(SIZE).putShort((short) (FLAG_HAS_FLAGS | FLAG_READ_ONLY)));
                    break;
                }
                optReply(ch, o.opt(), REP_ERR_UNSUP, new byte[0]);
            }
            Request r = request(ch);
            byte[] data = new byte[r.length()];
            java.util.Arrays.fill(data, (byte) 9);
            write(ch, ByteBuffer.allocate(16 + data.length).putInt(SIMPLE_REPLY_MAGIC).putInt(0).putLong(r.cookie())
                    .put(data));
        });
        try (Image i = open(port, OpenMode.READ_ONLY)) {
            assertEquals(SIZE, i.size());
            ByteBuffer b = ByteBuffer.allocate(4096);
            i.read(8192, b);
            byte[] expected = new byte[4096];
            java.util.Arrays.fill(expected, (byte) 9);
            assertArrayEquals(expected, b.array());
            assertEquals(false, i.driverNode().capabilities().can(org.blockhaus.api.Capabilities.Feature.BLOCK_STATUS));
        }
    }

    @Test
    void exportNameRefusedByClosingIsReportedAsNotAvailable() throws Exception {
        BlockException e = openFails(ch -> {
            hello(ch);
            while (true) {
                Option o = option(ch);
                if (o.opt() == OPT_EXPORT_NAME) {
                    ch.close();
                    return;
                }
                optReply(ch, o.opt(), REP_ERR_UNSUP, new byte[0]);
            }
        });
        assertEquals(BlockException.Reason.NOT_FOUND, e.reason());
        assertTrue(e.getMessage().contains("Requested export not available"), e.getMessage());
    }

    // ---- transmission ----

    private BlockException readFails(Script afterHandshake) throws Exception {
        int port = serve(ch -> {
            handshake(ch);
            afterHandshake.run(ch);
        });
        try (Image i = open(port, OpenMode.READ_ONLY)) {
            long t0 = System.nanoTime();
            BlockException e = assertThrows(BlockException.class, () -> i.read(0, ByteBuffer.allocate(4096)));
            assertTrue(System.nanoTime() - t0 < TimeUnit.SECONDS.toNanos(5), "took too long");
            // the connection is dead or the error was per request; either way nothing hangs
            return e;
        }
    }

    @Test
    void replyWithWrongHandleEndsTheConnection() throws Exception {
        BlockException e = readFails(ch -> {
            Request r = request(ch);
            write(ch, chunk(REPLY_FLAG_DONE, REPLY_TYPE_NONE, r.cookie() + 1000, 0));
        });
        assertTrue(e.getMessage().contains("unknown request"), e.getMessage());
    }

    @Test
    void badReplyMagicEndsTheConnection() throws Exception {
        BlockException e = readFails(ch -> {
            request(ch);
            write(ch, ByteBuffer.allocate(20).putInt(0x11223344));
        });
        assertTrue(e.getMessage().contains("Bad reply magic 0x11223344"), e.getMessage());
    }

    @Test
    void oversizedDataChunkIsRejected() throws Exception {
        BlockException e = readFails(ch -> {
            Request r = request(ch);
            write(ch, ByteBuffer.allocate(28).putInt(STRUCTURED_REPLY_MAGIC).putShort((short) REPLY_FLAG_DONE)
                    .putShort((short) REPLY_TYPE_OFFSET_DATA).putLong(r.cookie()).putInt(0x7fff_fff0).putLong(0));
        });
        assertTrue(e.getMessage().contains("OFFSET_DATA"), e.getMessage());
    }

    @Test
    void dataChunkOutsideTheRequestIsRejected() throws Exception {
        BlockException e = readFails(ch -> {
            Request r = request(ch);
            ByteBuffer c = chunk(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, r.cookie(), 8 + 16);
            write(ch, c.putLong(r.offset() + r.length() - 8).put(new byte[16]));
        });
        assertTrue(e.getMessage().contains("outside the request"), e.getMessage());
    }

    @Test
    void serverDyingMidReplyFailsTheRead() throws Exception {
        BlockException e = readFails(ch -> {
            Request r = request(ch);
            ByteBuffer c = chunk(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, r.cookie(), 8 + r.length());
            c.limit(20 + 8 + 100);
            write(ch, c.position(20 + 8 + 100));
            ch.close();
        });
        assertEquals(BlockException.Reason.IO, e.reason());
        assertTrue(e.getMessage().contains("closed the connection"), e.getMessage());
    }

    @Test
    void shortReadIsAnErrorNotSilentZeroes() throws Exception {
        BlockException e = readFails(ch -> {
            Request r = request(ch);
            ByteBuffer c = chunk(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, r.cookie(), 8 + 512);
            write(ch, c.putLong(r.offset()).put(new byte[512]));
        });
        assertTrue(e.getMessage().contains("sent 512 of 4096 bytes"), e.getMessage());
    }

    @Test
    void oversizedErrorChunkIsRejected() throws Exception {
        BlockException e = readFails(ch -> {
            Request r = request(ch);
            write(ch, chunk(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, r.cookie(), -1).limit(20).position(20));
        });
        assertTrue(e.getMessage().contains("Error chunk with invalid length"), e.getMessage());
    }

    @Test
    void serverThatStopsAnsweringTimesOutTheRequest() throws Exception {
        BlockException e = readFails(ch -> request(ch));
        assertEquals(BlockException.Reason.IO, e.reason());
        assertTrue(e.getMessage().contains("did not answer a read request within 2 s"), e.getMessage());
    }

    @Test
    void serverThatStopsReadingCannotBlockAWriterForever() throws Exception {
        int port = serve(ch -> {
            handshake(ch);
            Thread.sleep(60_000); // never reads the write's payload
        });
        Image i = open(port);
        long t0 = System.nanoTime();
        BlockException e = assertThrows(BlockException.class, () -> i.write(0, ByteBuffer.allocate(32 << 20), 0));
        assertTrue(System.nanoTime() - t0 < TimeUnit.SECONDS.toNanos(6), "took too long");
        assertTrue(e.getMessage().contains("did not answer a write request within 2 s"), e.getMessage());
        t0 = System.nanoTime();
        assertThrows(BlockException.class, i::close); // the final flush fails: the connection is gone
        assertTrue(System.nanoTime() - t0 < TimeUnit.SECONDS.toNanos(6), "close took too long");
    }

    @Test
    void errorChunkFailsOnlyThatRequestWithTheServersMessage() throws Exception {
        int port = serve(ch -> {
            handshake(ch);
            Request r = request(ch);
            byte[] msg = "disk on fire".getBytes(StandardCharsets.UTF_8);
            ByteBuffer c = chunk(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, r.cookie(), 6 + msg.length);
            write(ch, c.putInt(EPERM).putShort((short) msg.length).put(msg));
            Request r2 = request(ch);
            ByteBuffer ok = chunk(0, REPLY_TYPE_OFFSET_HOLE, r2.cookie(), 12).putLong(r2.offset()).putInt(r2.length());
            write(ch, ok);
            write(ch, chunk(REPLY_FLAG_DONE, REPLY_TYPE_NONE, r2.cookie(), 0));
        });
        try (Image i = open(port, OpenMode.READ_ONLY)) {
            BlockException e = assertThrows(BlockException.class, () -> i.read(0, ByteBuffer.allocate(4096)));
            assertEquals(BlockException.Reason.PERMISSION, e.reason());
            assertTrue(e.getMessage().contains("disk on fire"), e.getMessage());
            ByteBuffer b = ByteBuffer.allocate(4096);
            java.util.Arrays.fill(b.array(), (byte) 7);
            i.read(4096, b);
            assertArrayEquals(new byte[4096], b.array());
        }
    }
}
