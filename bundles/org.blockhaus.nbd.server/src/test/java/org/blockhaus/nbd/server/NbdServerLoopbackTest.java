package org.blockhaus.nbd.server;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.net.InetSocketAddress;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.BlockStatus;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.core.BlockCore;
import org.blockhaus.protocol.nbd.NbdDriver;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/** Our server and our client talking to each other: every request type, many at once, many clients. */
@Timeout(value = 60, unit = TimeUnit.SECONDS)
class NbdServerLoopbackTest {
    private static final int MIB = 1 << 20;

    @TempDir
    Path dir;
    private final NbdServer server = NbdServer.standalone();
    private final BlockCore core = BlockCore.standalone();
    private final List<AutoCloseable> closeLater = new ArrayList<>();

    NbdServerLoopbackTest() {
        core.addDriver(new NbdDriver());
    }

    @AfterEach
    void tearDown() throws Exception {
        for (AutoCloseable c : closeLater.reversed()) {
            try {
                c.close();
            } catch (Exception ignored) {
                // the test's own assertions matter more
            }
        }
    }

    private NbdServer.Running serve(BlockNode node, String name, boolean readOnly) throws BlockException {
        NbdServer.Running r = server.start(node, name, new InetSocketAddress("127.0.0.1", 0), readOnly);
        closeLater.add(r);
        return r;
    }

    private Image open(String uri, boolean writable) throws BlockException {
        Image i = core.open(uri, Options.of("driver", "nbd"), writable ? OpenMode.READ_WRITE : OpenMode.READ_ONLY);
        closeLater.add(i);
        return i;
    }

    private static byte[] filled(int n, int v) {
        byte[] b = new byte[n];
        Arrays.fill(b, (byte) v);
        return b;
    }

    private static byte[] read(BlockNode n, long off, int len) throws BlockException {
        ByteBuffer b = ByteBuffer.allocate(len);
        n.read(off, b);
        return b.array();
    }

    @Test
    void servesReadsWritesZeroesTrimAndFlush() throws Exception {
        MemoryNode node = new MemoryNode(16 * MIB);
        NbdServer.Running r = serve(node, "disk", false);
        Image i = open(r.uri("disk"), true);
        assertEquals(16 * MIB, i.size());
        i.write(3, ByteBuffer.wrap(filled(200_000, 0x61)), 0);
        i.write(5 * MIB, ByteBuffer.wrap(filled(3 * MIB, 0x62)), BlockNode.FUA); // larger than one request
        assertArrayEquals(filled(200_000, 0x61), read(i, 3, 200_000));
        assertArrayEquals(filled(200_000, 0x61), read(node, 3, 200_000));
        assertArrayEquals(filled(3 * MIB, 0x62), read(node, 5 * MIB, 3 * MIB));
        i.writeZeroes(5 * MIB + 10, 100, 0);
        assertArrayEquals(new byte[100], read(node, 5 * MIB + 10, 100));
        int before = node.chunkCount();
        i.discard(6 * MIB, MIB);
        assertTrue(node.chunkCount() < before, "trim reached the node");
        int flushes = node.flushes;
        i.flush();
        assertTrue(node.flushes > flushes);
    }

    @Test
    void sparseReadsAndBlockStatusShowHoles() throws Exception {
        MemoryNode node = new MemoryNode(8 * MIB);
        node.write(2 * MIB, ByteBuffer.wrap(filled(MemoryNode.CHUNK, 0x33)), 0);
        NbdServer.Running r = serve(node, "", true);
        Image i = open(r.uri(""), false);
        BlockStatus s = i.blockStatus(0, 8 * MIB);
        assertFalse(s.isData());
        assertTrue(s.isZero());
        assertEquals(2 * MIB, s.length());
        BlockStatus d = i.blockStatus(2 * MIB, 6 * MIB);
        assertTrue(d.isData());
        assertEquals(MemoryNode.CHUNK, d.length());
        // a 4 MiB read spanning hole, data, hole comes back as holes and one data chunk
        byte[] all = read(i, MIB, 4 * MIB);
        byte[] expected = new byte[4 * MIB];
        Arrays.fill(expected, MIB, MIB + MemoryNode.CHUNK, (byte) 0x33);
        assertArrayEquals(expected, all);
    }

    @Test
    void readOnlyExportRefusesWriters() throws Exception {
        NbdServer.Running r = serve(new MemoryNode(MIB), "ro", true);
        BlockException e = assertThrows(BlockException.class, () -> open(r.uri("ro"), true));
        assertEquals(BlockException.Reason.READ_ONLY, e.reason());
        assertEquals(MIB, open(r.uri("ro"), false).size());
    }

    @Test
    void unknownExportIsNotAvailable() throws Exception {
        NbdServer.Running r = serve(new MemoryNode(MIB), "a", false);
        BlockException e = assertThrows(BlockException.class, () -> open(r.uri("b"), false));
        assertEquals(BlockException.Reason.NOT_FOUND, e.reason());
        assertTrue(e.getMessage().contains("Requested export not available"), e.getMessage());
        assertTrue(e.getMessage().contains("export 'b' not present"), e.getMessage());
    }

    @Test
    void servesSeveralNamedExportsOverAUnixSocket() throws Exception {
        Path sock = dir.resolve("s.sock");
        MemoryNode a = new MemoryNode(MIB);
        MemoryNode b = new MemoryNode(2 * MIB);
        NbdServer.Running r = server.start(List.of(new NbdServer.Export("a", a, false, null),
                new NbdServer.Export("b", b, true, "second")), UnixDomainSocketAddress.of(sock),
                NbdServer.Settings.DEFAULT);
        closeLater.add(r);
        assertEquals(MIB, open("nbd+unix:///a?socket=" + sock, true).size());
        assertEquals(2 * MIB, open("nbd:unix:" + sock + ":exportname=b", false).size());
        r.close();
        assertFalse(Files.exists(sock), "the socket file is removed on close");
    }

    @Test
    void manyClientsWithManyRequestsInFlight() throws Exception {
        MemoryNode node = new MemoryNode(64 * MIB);
        NbdServer.Running r = serve(node, "disk", false);
        List<Image> clients = new ArrayList<>();
        for (int c = 0; c < 4; c++) {
            clients.add(open(r.uri("disk"), true));
        }
        try (ExecutorService ex = Executors.newVirtualThreadPerTaskExecutor()) {
            List<Future<?>> fs = new ArrayList<>();
            for (int t = 0; t < 128; t++) {
                final int n = t;
                fs.add(ex.submit(() -> {
                    Image i = clients.get(n % clients.size());
                    byte[] data = filled(100_000 + n, n + 1);
                    long off = (long) n * 500_000;
                    i.write(off, ByteBuffer.wrap(data), 0);
                    assertArrayEquals(data, read(i, off, data.length));
                    return null;
                }));
            }
            for (Future<?> f : fs) {
                f.get();
            }
        }
        assertEquals(4, r.clients());
    }

    @Test
    void multiConnIsOfferedOnlyWhereItIsSafe() throws Exception {
        NbdServer.Running ro = serve(new MemoryNode(MIB), "ro", true);
        Image many = core.open(ro.uri("ro"), Options.of("driver", "nbd", "x-multi-conn", "4"), OpenMode.READ_ONLY);
        closeLater.add(many);
        assertEquals(4, many.driverNode().info().get("connections"));
        assertEquals(4, ro.clients());
        NbdServer.Running rw = serve(new MemoryNode(MIB), "rw", false);
        Image one = core.open(rw.uri("rw"), Options.of("driver", "nbd", "x-multi-conn", "4"), OpenMode.READ_WRITE);
        closeLater.add(one);
        assertEquals(1, one.driverNode().info().get("connections"), "no NBD_FLAG_CAN_MULTI_CONN on a writable export");
    }

    @Test
    void closingTheServerEndsClientsQuickly() throws Exception {
        NbdServer.Running r = serve(new MemoryNode(MIB), "disk", false);
        Image i = open(r.uri("disk"), false);
        read(i, 0, 512);
        long t0 = System.nanoTime();
        r.close();
        assertFalse(r.isRunning());
        assertThrows(BlockException.class, () -> read(i, 0, 512));
        assertTrue(System.nanoTime() - t0 < TimeUnit.SECONDS.toNanos(5));
        assertThrows(BlockException.class, () -> open(r.uri("disk"), false));
    }

    @Test
    void nonPersistentServerStopsAfterItsLastClient() throws Exception {
        NbdServer.Running r = server.start(List.of(new NbdServer.Export("d", new MemoryNode(MIB), false, null)),
                new InetSocketAddress("127.0.0.1", 0), NbdServer.Settings.DEFAULT.withPersistent(false));
        closeLater.add(r);
        Image i = open(r.uri("d"), false);
        read(i, 0, 4096);
        assertTrue(r.isRunning());
        i.close();
        assertTrue(r.awaitStop(Duration.ofSeconds(5)));
    }

    @Test
    void clientsBeyondTheLimitWaitForAFreeSlot() throws Exception {
        NbdServer.Running r = server.start(List.of(new NbdServer.Export("d", new MemoryNode(MIB), false, null)),
                new InetSocketAddress("127.0.0.1", 0), NbdServer.Settings.DEFAULT.withMaxClients(1));
        closeLater.add(r);
        Image first = open(r.uri("d"), false);
        try (ExecutorService ex = Executors.newVirtualThreadPerTaskExecutor()) {
            Future<Image> second = ex.submit(() -> open(r.uri("d"), false));
            Thread.sleep(300);
            assertFalse(second.isDone(), "the second client waits while the first is connected");
            first.close();
            assertEquals(MIB, second.get(10, TimeUnit.SECONDS).size());
        }
    }
}
