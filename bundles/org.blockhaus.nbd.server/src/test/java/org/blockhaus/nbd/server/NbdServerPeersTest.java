package org.blockhaus.nbd.server;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.blockhaus.testkit.Peers;
import java.net.InetSocketAddress;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.concurrent.TimeUnit;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Real NBD clients against our server: qemu-img (info, convert, compare), qemu-io (writes and
 * pattern reads), nbdinfo (--map, --json, --list) and nbdcopy, over TCP and unix sockets.
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class NbdServerPeersTest {
    private static final int MIB = 1 << 20;

    @TempDir
    Path dir;
    private final NbdServer server = NbdServer.standalone();
    private final List<NbdServer.Running> running = new ArrayList<>();

    @AfterEach
    void tearDown() {
        running.forEach(NbdServer.Running::close);
    }

    private NbdServer.Running tcp(BlockNode node, String name, boolean ro) throws BlockException {
        NbdServer.Running r = server.start(node, name, new InetSocketAddress("127.0.0.1", 0), ro);
        running.add(r);
        return r;
    }

    private NbdServer.Running unix(BlockNode node, String name, boolean ro) throws BlockException {
        NbdServer.Running r = server.start(node, name, UnixDomainSocketAddress.of(dir.resolve(name + ".sock")), ro);
        running.add(r);
        return r;
    }

    private static String qemuImg() {
        return Peers.require("qemu-img", "qemu-utils");
    }

    private static String qemuIo() {
        return Peers.require("qemu-io", "qemu-utils");
    }

    private static String nbdinfo() {
        return Peers.require("nbdinfo", "libnbd-bin");
    }

    /** A node with random data in a few places and holes elsewhere, plus the same bytes as a file. */
    private record Fixture(MemoryNode node, Path raw) {
    }

    private Fixture fixture(long size) throws Exception {
        MemoryNode node = new MemoryNode(size);
        byte[] whole = new byte[(int) size];
        Random rnd = new Random(42);
        for (long off : new long[] {0, 3 * MIB + 4096, 7 * MIB}) {
            byte[] d = new byte[300_000];
            rnd.nextBytes(d);
            node.write(off, ByteBuffer.wrap(d), 0);
            System.arraycopy(d, 0, whole, (int) off, d.length);
        }
        Path raw = dir.resolve("reference.raw");
        Files.write(raw, whole);
        return new Fixture(node, raw);
    }

    private static byte[] content(BlockNode n) throws BlockException {
        ByteBuffer b = ByteBuffer.allocate((int) n.size());
        n.read(0, b);
        return b.array();
    }

    @Test
    void qemuImgInfoSeesTheExportSize() throws Exception {
        NbdServer.Running r = tcp(new MemoryNode(10 * MIB), "disk", true);
        Peers.Result res = Peers.check(qemuImg(), "info", "--output=json", r.uri("disk"));
        assertTrue(res.out().contains("\"virtual-size\": " + 10 * MIB), res.out());
        assertTrue(res.out().contains("\"format\": \"raw\""), res.out());
    }

    @Test
    void qemuImgConvertAndCompareMatchTheServedBytes() throws Exception {
        Fixture f = fixture(8 * MIB);
        NbdServer.Running r = tcp(f.node(), "disk", true);
        Path out = dir.resolve("out.raw");
        Peers.check(qemuImg(), "convert", "-f", "raw", "-O", "raw", r.uri("disk"), out.toString());
        assertArrayEquals(Files.readAllBytes(f.raw()), Files.readAllBytes(out));
        Peers.Result same = Peers.run(qemuImg(), "compare", "-f", "raw", "-F", "raw", f.raw().toString(),
                r.uri("disk"));
        assertEquals(0, same.exit(), same.out());
        f.node().write(5 * MIB, ByteBuffer.wrap(new byte[] {1}), 0);
        Peers.Result differ = Peers.run(qemuImg(), "compare", "-f", "raw", "-F", "raw", f.raw().toString(),
                r.uri("disk"));
        assertEquals(1, differ.exit(), differ.out());
        assertTrue(differ.out().contains("Content mismatch at offset " + 5 * MIB), differ.out());
    }

    @Test
    void qemuIoWritesOverUnixSocketAndReadsItsPatternsBack() throws Exception {
        MemoryNode node = new MemoryNode(4 * MIB);
        NbdServer.Running r = unix(node, "e", false);
        String uri = r.uri("e");
        Peers.check(qemuIo(), "-f", "raw", "-c", "write -P 0xab 0 64k", "-c", "write -P 0xcd 1000000 3333",
                "-c", "write -z 2M 1M", "-c", "discard 3M 128k", "-c", "flush", uri);
        byte[] data = content(node);
        for (int i = 0; i < 65536; i++) {
            assertEquals((byte) 0xab, data[i]);
        }
        for (int i = 1_000_000; i < 1_003_333; i++) {
            assertEquals((byte) 0xcd, data[i]);
        }
        Peers.Result res = Peers.check(qemuIo(), "-r", "-f", "raw", "-c", "read -P 0xab 0 64k", "-c",
                "read -P 0xcd 1000000 3333", "-c", "read -P 0 2M 1M", uri);
        assertFalse(res.out().contains("Pattern verification failed"), res.out());
        assertTrue(node.flushes > 0, "flush reached the node");
    }

    @Test
    void qemuIoCannotWriteToAReadOnlyExport() throws Exception {
        MemoryNode node = new MemoryNode(MIB);
        NbdServer.Running r = unix(node, "ro", true);
        Peers.Result res = Peers.run(qemuIo(), "-f", "raw", "-c", "write -P 1 0 4k", r.uri("ro"));
        assertNotEquals(0, res.exit(), res.out());
        assertTrue(res.out().contains("Could not open image: Permission denied"), res.out());
        Peers.Result ro = Peers.check(qemuIo(), "-r", "-f", "raw", "-c", "read -P 0 0 4k", r.uri("ro"));
        assertFalse(ro.out().contains("Pattern verification failed"), ro.out());
        assertEquals(0, node.chunkCount(), "nothing was written");
    }

    @Test
    void nbdinfoMapShowsHolesAndData() throws Exception {
        MemoryNode node = new MemoryNode(4 * MIB);
        node.write(MIB, ByteBuffer.wrap(new byte[MemoryNode.CHUNK]), 0);
        NbdServer.Running r = tcp(node, "m", true);
        String map = Peers.check(nbdinfo(), "--map", r.uri("m")).out();
        List<String> lines = map.lines().map(String::trim).map(l -> l.replaceAll("\\s+", " ")).toList();
        assertEquals(List.of("0 1048576 3 hole,zero", "1048576 65536 0 data", "1114112 3080192 3 hole,zero"), lines,
                map);
    }

    @Test
    void nbdinfoListsExportsAndTheBaseAllocationContext() throws Exception {
        MemoryNode a = new MemoryNode(MIB);
        NbdServer.Running r = server.start(List.of(new NbdServer.Export("first", a, false, "the first"),
                new NbdServer.Export("second", new MemoryNode(2 * MIB), true, null)),
                new InetSocketAddress("127.0.0.1", 0), NbdServer.Settings.DEFAULT);
        running.add(r);
        String json = Peers.check(nbdinfo(), "--json", r.uri("first")).out();
        assertTrue(json.contains("\"structured\": true"), json);
        assertTrue(json.contains("\"base:allocation\""), json);
        assertTrue(json.contains("\"export-size\": " + MIB), json);
        assertTrue(json.contains("\"can_fua\": true"), json);
        assertTrue(json.contains("\"can_cache\": true"), json);
        assertTrue(json.contains("\"description\": \"the first\""), json);
        String list = Peers.check(nbdinfo(), "--list", r.uri("")).out();
        assertTrue(list.contains("export=\"first\"") && list.contains("export=\"second\""), list);
        assertTrue(list.contains("is_read_only: true"), list);
    }

    @Test
    void nbdcopyCopiesInAndOut() throws Exception {
        String nbdcopy = Peers.require("nbdcopy", "libnbd-bin");
        Fixture f = fixture(8 * MIB);
        MemoryNode target = new MemoryNode(8 * MIB);
        NbdServer.Running src = unix(f.node(), "src", true);
        NbdServer.Running dst = unix(target, "dst", false);
        Path out = dir.resolve("copy.raw");
        Peers.check(nbdcopy, src.uri("src"), out.toString());
        assertArrayEquals(Files.readAllBytes(f.raw()), Files.readAllBytes(out));
        Peers.check(nbdcopy, f.raw().toString(), dst.uri("dst"));
        assertArrayEquals(Files.readAllBytes(f.raw()), content(target));
    }

    @Test
    void qemuImgConvertWritesIntoTheServer() throws Exception {
        Fixture f = fixture(8 * MIB);
        MemoryNode target = new MemoryNode(8 * MIB);
        NbdServer.Running r = tcp(target, "t", false);
        Peers.check(qemuImg(), "convert", "-n", "-f", "raw", "-O", "raw", f.raw().toString(), r.uri("t"));
        assertArrayEquals(Files.readAllBytes(f.raw()), content(target));
        byte[] zeros = new byte[8 * MIB];
        assertFalse(Arrays.equals(zeros, content(target)));
    }
}
