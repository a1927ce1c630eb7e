package org.blockhaus.protocol.nbd;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.blockhaus.testkit.Peers;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.BlockStatus;
import org.blockhaus.api.Capabilities.Feature;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Our client against real servers on loopback: qemu-nbd (raw and qcow2, TCP and unix socket,
 * read-only) and nbdkit (memory and file plugins). qemu-io and qemu-img check what we wrote.
 */
class NbdClientInteropTest {
    private static final int MIB = 1 << 20;

    @TempDir
    Path dir;
    private final Peers peers = new Peers();
    private BlockCore core;
    private final List<Image> open = new ArrayList<>();

    @BeforeEach
    void setUp() {
        core = BlockCore.standalone();
        core.addDriver(new NbdDriver());
    }

    @AfterEach
    void tearDown() throws Exception {
        try {
            for (Image i : open) {
                try {
                    i.close();
                } catch (BlockException ignored) {
                    // the test's own assertion is what matters
                }
            }
        } finally {
            peers.close();
        }
    }

    private Image openNbd(String filename, boolean writable) throws BlockException {
        Image i = core.open(filename, Options.of("driver", "nbd"), writable ? OpenMode.READ_WRITE : OpenMode.READ_ONLY);
        open.add(i);
        return i;
    }

    private Path image(String fmt, String size, String... qemuIoCommands) throws Exception {
        Path img = dir.resolve("disk." + fmt);
        Peers.check(Peers.require("qemu-img", "qemu-utils"), "create", "-q", "-f", fmt, img.toString(), size);
        for (String c : qemuIoCommands) {
            Peers.check(Peers.require("qemu-io", "qemu-utils"), "-f", fmt, "-c", c, img.toString());
        }
        return img;
    }

    private static byte[] read(BlockNode n, long offset, int len) throws BlockException {
        ByteBuffer b = ByteBuffer.allocate(len);
        n.read(offset, b);
        assertFalse(b.hasRemaining());
        return b.array();
    }

    private static byte[] filled(int len, int value) {
        byte[] b = new byte[len];
        Arrays.fill(b, (byte) value);
        return b;
    }

    @Test
    void readsRawExportServedByQemuNbdOverTcp() throws Exception {
        Path img = image("raw", "4M", "write -P 0xab 0 64k", "write -P 0xcd 1M 512");
        int port = Peers.freePort();
        peers.qemuNbd(dir, "-f", "raw", "--bind=127.0.0.1", "--port=" + port, "-x", "disk", img.toString());
        Image i = openNbd("nbd://127.0.0.1:" + port + "/disk", false);
        assertEquals(4 * MIB, i.size());
        assertEquals(4 * MIB, openNbd("nbd://localhost:" + port + "/disk", false).size(), "by host name");
        assertArrayEquals(filled(64 * 1024, 0xab), read(i, 0, 64 * 1024));
        assertArrayEquals(filled(512, 0xcd), read(i, MIB, 512));
        assertArrayEquals(new byte[4096], read(i, 2 * MIB, 4096));
        // unaligned read across the pattern edge
        byte[] edge = read(i, 64 * 1024 - 3, 7);
        assertArrayEquals(new byte[] {(byte) 0xab, (byte) 0xab, (byte) 0xab, 0, 0, 0, 0}, edge);
        assertEquals(Feature.WRITE, Feature.WRITE);
        assertFalse(i.capabilities().can(Feature.WRITE), "opened read-only");
    }

    @Test
    void writesQcow2ExportOverUnixSocketAndQemuReadsIt() throws Exception {
        Path img = image("qcow2", "8M", "write -P 0x11 0 1M");
        Path sock = dir.resolve("q.sock");
        peers.qemuNbd(dir, "-f", "qcow2", "--socket=" + sock, "-x", "disk", img.toString());
        Image i = openNbd("nbd+unix:///disk?socket=" + sock, true);
        assertTrue(i.driverNode().capabilities().isNative(Feature.WRITE_ZEROES));
        assertTrue(i.driverNode().capabilities().isNative(Feature.FLUSH));
        i.write(128 * 1024 + 3, ByteBuffer.wrap(filled(100_000, 0x5a)), 0);
        i.write(3 * MIB, ByteBuffer.wrap(filled(2 * MIB, 0x77)), BlockNode.FUA);
        i.writeZeroes(512 * 1024, 64 * 1024, 0);
        i.discard(4 * MIB, 64 * 1024);
        i.flush();
        assertArrayEquals(filled(100_000, 0x5a), read(i, 128 * 1024 + 3, 100_000));
        i.close();
        open.remove(i);
        peers.close();
        String qemuIo = Peers.require("qemu-io", "qemu-utils");
        for (String c : List.of("read -P 0x11 0 131075", "read -P 0x5a 131075 100000", "read -P 0 524288 65536",
                "read -P 0x77 3M 2M")) {
            Peers.Result r = Peers.check(qemuIo, "-f", "qcow2", "-c", c, img.toString());
            assertFalse(r.out().contains("Pattern verification failed"), c + ": " + r.out());
        }
        Peers.check(Peers.require("qemu-img", "qemu-utils"), "check", img.toString());
    }

    @Test
    void legacyAndJsonFilenameFormsOpenTheSameExport() throws Exception {
        Path img = image("raw", "1M", "write -P 0x42 0 4k");
        Path sock = dir.resolve("l.sock");
        int port = Peers.freePort();
        peers.qemuNbd(dir, "-f", "raw", "--socket=" + sock, "-x", "e1", img.toString());
        peers.qemuNbd(dir, "-f", "raw", "--bind=127.0.0.1", "--port=" + port, "-x", "e2", img.toString());
        for (String f : List.of("nbd:unix:" + sock + ":exportname=e1", "nbd:127.0.0.1:" + port + ":exportname=e2",
                "json:{\"driver\":\"nbd\",\"server\":{\"type\":\"unix\",\"path\":\"" + sock + "\"},\"export\":\"e1\"}",
                "json:{\"driver\":\"nbd\",\"server\":{\"type\":\"inet\",\"host\":\"127.0.0.1\",\"port\":\"" + port
                        + "\"},\"export\":\"e2\"}")) {
            Image i = openNbd(f, false);
            assertEquals(MIB, i.size(), f);
            assertArrayEquals(filled(4096, 0x42), read(i, 0, 4096), f);
        }
        Image dotted = core.open(null, Options.of("driver", "nbd", "server.type", "inet", "server.host", "127.0.0.1",
                "server.port", String.valueOf(port), "export", "e2"), OpenMode.READ_ONLY);
        open.add(dotted);
        assertEquals(MIB, dotted.size());
    }

    /** The name qemu-img info shows for {@code filename} (its "image:" line), or its error. */
    private static String qemuImageLine(String... infoArgs) throws Exception {
        List<String> cmd = new ArrayList<>(List.of(Peers.require("qemu-img", "qemu-utils"), "info"));
        cmd.addAll(List.of(infoArgs));
        String out = Peers.check(cmd.toArray(String[]::new)).out();
        return out.lines().filter(l -> l.startsWith("image: ")).findFirst().orElseThrow().substring(7);
    }

    @Test
    void everyFilenameFormIsShownAsQemuImgShowsIt() throws Exception {
        Path img = image("raw", "1M");
        Path sock = dir.resolve("n.sock");
        int port = Peers.freePort();
        peers.qemuNbd(dir, "-f", "raw", "--socket=" + sock, "-x", "e1", img.toString());
        peers.qemuNbd(dir, "-f", "raw", "--bind=127.0.0.1", "--port=" + port, "-x", "e2", img.toString());
        List<String> forms = List.of("nbd://127.0.0.1:" + port + "/e2", "nbd+tcp://127.0.0.1:" + port + "/e2",
                "nbd://localhost:" + port + "/e2", "nbd+unix:///e1?socket=" + sock,
                "nbd:127.0.0.1:" + port + ":exportname=e2", "nbd:unix:" + sock + ":exportname=e1",
                "json:{\"driver\":\"nbd\",\"server\":{\"type\":\"unix\",\"path\":\"" + sock
                        + "\"},\"export\":\"e1\"}",
                "json:{\"driver\":\"nbd\",\"server\":{\"type\":\"inet\",\"host\":\"127.0.0.1\",\"port\":\""
                        + port + "\"},\"export\":\"e2\"}",
                "json:{\"driver\":\"nbd\",\"host\":\"127.0.0.1\",\"port\":\"" + port + "\",\"export\":\"e2\"}",
                "json:{\"driver\":\"nbd\",\"path\":\"" + sock + "\",\"export\":\"e1\"}");
        for (String f : forms) {
            assertEquals(qemuImageLine(f), openNbd(f, false).filename(), f);
        }
        String dotted = "driver=nbd,server.type=unix,server.path=" + sock + ",export=e1,reconnect-delay=3";
        Image i = core.open(null, Options.parseKeyValue(dotted, "file"), OpenMode.READ_ONLY);
        open.add(i);
        assertEquals(qemuImageLine("--image-opts", dotted), i.filename());
    }

    /** qemu-img map --output=json entries as [start, length, data, zero]. */
    private static List<long[]> qemuMapEntries(String json) {
        List<long[]> out = new ArrayList<>();
        Matcher m = Pattern.compile("\"start\": (\\d+), \"length\": (\\d+),[^}]*\"zero\": (true|false), \"data\": "
                + "(true|false)").matcher(json);
        while (m.find()) {
            out.add(new long[] {Long.parseLong(m.group(1)), Long.parseLong(m.group(2)),
                m.group(4).equals("true") ? 1 : 0, m.group(3).equals("true") ? 1 : 0});
        }
        return out;
    }

    /** Our block status over the whole node, adjacent answers with the same flags merged. */
    private static List<long[]> ourMap(Image i) throws BlockException {
        List<long[]> out = new ArrayList<>();
        for (long off = 0; off < i.size(); ) {
            BlockStatus st = i.blockStatus(off, i.size() - off);
            long[] last = out.isEmpty() ? null : out.getLast();
            long data = st.isData() ? 1 : 0;
            long zero = st.isZero() ? 1 : 0;
            if (last != null && last[2] == data && last[3] == zero) {
                last[1] += st.length();
            } else {
                out.add(new long[] {off, st.length(), data, zero});
            }
            off += st.length();
        }
        return out;
    }

    @Test
    void allocationDepthThroughXDirtyBitmapMapsAsQemuImgMapsIt() throws Exception {
        Path base = dir.resolve("base.qcow2");
        String qemuImg = Peers.require("qemu-img", "qemu-utils");
        String qemuIo = Peers.require("qemu-io", "qemu-utils");
        Peers.check(qemuImg, "create", "-q", "-f", "qcow2", base.toString(), "4M");
        Peers.check(qemuIo, "-f", "qcow2", "-c", "write -P 1 0 64k", "-c", "write -P 2 2M 128k", base.toString());
        Path top = dir.resolve("top.qcow2");
        Peers.check(qemuImg, "create", "-q", "-f", "qcow2", "-b", base.toString(), "-F", "qcow2", top.toString());
        Peers.check(qemuIo, "-f", "qcow2", "-c", "write -P 3 512k 64k", "-c", "write -z 3M 64k", top.toString());
        Path sock = dir.resolve("a.sock");
        peers.qemuNbd(dir, "-r", "-A", "-f", "qcow2", "--socket=" + sock, "-x", "disk", top.toString());
        String opts = "driver=nbd,server.type=unix,server.path=" + sock + ",export=disk,x-dirty-bitmap=qemu:allocation-depth";
        List<long[]> expected = qemuMapEntries(Peers.check(qemuImg, "map", "--output=json", "--image-opts", opts).out());
        assertTrue(expected.size() >= 5, "qemu-img map saw the three depths: " + expected.size());
        Image i = core.open(null, Options.parseKeyValue(opts, "file"), OpenMode.READ_ONLY);
        open.add(i);
        List<long[]> ours = ourMap(i);
        assertEquals(expected.size(), ours.size(), "extents");
        for (int k = 0; k < ours.size(); k++) {
            assertArrayEquals(expected.get(k), ours.get(k), "extent " + k);
        }
        // without -A the context is not there: a clear error, as the option asks for it by name
        Path plain = dir.resolve("p.sock");
        peers.qemuNbd(dir, "-r", "-f", "qcow2", "--socket=" + plain, "-x", "disk", top.toString());
        BlockException e = assertThrows(BlockException.class, () -> core.open(null, Options.parseKeyValue(
                opts.replace(sock.toString(), plain.toString()), "file"), OpenMode.READ_ONLY));
        assertTrue(e.getMessage().contains("requested x-dirty-bitmap qemu:allocation-depth not found"),
                e.getMessage());
    }

    @Test
    void readOnlyExportRefusesReadWriteOpen() throws Exception {
        Path img = image("raw", "1M");
        Path sock = dir.resolve("ro.sock");
        peers.qemuNbd(dir, "-r", "-f", "raw", "--socket=" + sock, "-x", "disk", img.toString());
        BlockException e = assertThrows(BlockException.class,
                () -> openNbd("nbd+unix:///disk?socket=" + sock, true));
        assertEquals(BlockException.Reason.READ_ONLY, e.reason());
        assertTrue(e.getMessage().contains("read-only"), e.getMessage());
        Image i = openNbd("nbd+unix:///disk?socket=" + sock, false);
        assertFalse(i.capabilities().can(Feature.WRITE));
        assertThrows(BlockException.class, () -> i.write(0, ByteBuffer.allocate(512), 0));
    }

    @Test
    void unknownExportIsReportedAsNotAvailable() throws Exception {
        Path img = image("raw", "1M");
        Path sock = dir.resolve("u.sock");
        peers.qemuNbd(dir, "-f", "raw", "--socket=" + sock, "-x", "disk", img.toString());
        BlockException e = assertThrows(BlockException.class,
                () -> openNbd("nbd+unix:///nope?socket=" + sock, false));
        assertEquals(BlockException.Reason.NOT_FOUND, e.reason());
        assertTrue(e.getMessage().contains("Requested export not available"), e.getMessage());
    }

    @Test
    void refusedConnectionFailsFastWithTheAddress() throws Exception {
        int port = Peers.freePort();
        long t0 = System.nanoTime();
        BlockException e = assertThrows(BlockException.class, () -> openNbd("nbd://127.0.0.1:" + port + "/x", false));
        assertTrue(e.getMessage().contains("Failed to connect to '127.0.0.1:" + port + "'"), e.getMessage());
        assertTrue(System.nanoTime() - t0 < 5_000_000_000L);
        BlockException u = assertThrows(BlockException.class,
                () -> openNbd("nbd+unix:///x?socket=" + dir.resolve("missing.sock"), false));
        assertTrue(u.getMessage().contains("Failed to connect"), u.getMessage());
    }

    /** qemu-img map --output=json of a raw file: [start, length, data] per line. */
    private static List<long[]> qemuMap(Path img) throws Exception {
        String json = Peers.check(Peers.require("qemu-img", "qemu-utils"), "map", "--output=json", "-f", "raw",
                img.toString()).out();
        Matcher m = Pattern.compile("\"start\": (\\d+), \"length\": (\\d+), \"depth\": \\d+, (?:\"present\": \\w+, )?"
                + "\"zero\": (\\w+), \"data\": (\\w+)").matcher(json);
        List<long[]> out = new ArrayList<>();
        while (m.find()) {
            out.add(new long[] {Long.parseLong(m.group(1)), Long.parseLong(m.group(2)),
                    m.group(4).equals("true") ? 1 : 0});
        }
        assertFalse(out.isEmpty(), json);
        return out;
    }

    @Test
    void blockStatusOfSparseExportMatchesQemuImgMap() throws Exception {
        Path img = image("raw", "8M", "write -P 0x99 1M 64k", "write -P 0x98 5M 1M");
        int port = Peers.freePort();
        peers.qemuNbd(dir, "-r", "-f", "raw", "--bind=127.0.0.1", "--port=" + port, "-x", "disk", img.toString());
        Image i = openNbd("nbd://127.0.0.1:" + port + "/disk", false);
        assertTrue(i.driverNode().capabilities().isNative(Feature.BLOCK_STATUS));
        List<long[]> expected = qemuMap(img);
        for (long[] range : expected) {
            long end = range[0] + range[1];
            for (long pos = range[0]; pos < end; ) {
                BlockStatus s = i.blockStatus(pos, end - pos);
                assertEquals(range[2] == 1, s.isData(), "data flag at " + pos);
                if (range[2] == 0) {
                    assertTrue(s.isZero(), "hole reads as zero at " + pos);
                }
                pos += s.length();
            }
        }
    }

    /**
     * prefetch becomes NBD_CMD_CACHE only where the server offers it. nbdkit's nocache filter
     * advertises CACHE and has nbdkit emulate it as a read of the same range (cachemode=emulate), or
     * hides it (none); the log filter records the range arriving. Nothing else here touches
     * 0x10000+0x2000, so a request for exactly that range can only come from the prefetch.
     */
    @Test
    void prefetchSendsNbdCmdCacheOnlyWhereTheServerOffersIt() throws Exception {
        String nbdkit = Peers.require("nbdkit", "nbdkit");
        for (String mode : new String[] {"emulate", "none"}) {
            int port = Peers.freePort();
            Path pid = dir.resolve("c-" + mode + ".pid");
            Path log = dir.resolve("c-" + mode + ".log");
            peers.foreground(pid, nbdkit, "-f", "-P", pid.toString(), "-i", "127.0.0.1", "-p", String.valueOf(port),
                    "--filter=nocache", "--filter=log", "memory", "4M", "cachemode=" + mode, "logfile=" + log);
            Image i = openNbd("nbd://127.0.0.1:" + port, false);
            i.prefetch(65536, 8192);
            i.prefetch(0, 0);
            assertThrows(BlockException.class, () -> i.prefetch(4 * MIB - 512, 4096));
            i.read(0, ByteBuffer.allocate(512)); // answered after the cache request: that one is logged
            List<String> lines = Files.readAllLines(log);
            List<String> prefetched = lines.stream()
                    .filter(l -> l.contains(" offset=0x10000 count=0x2000")).toList();
            if (mode.equals("emulate")) {
                assertEquals(1, prefetched.size(), "one cache request for the range in " + lines);
            } else {
                assertEquals(List.of(), prefetched, "no NBD_CMD_CACHE to a server that does not offer it");
            }
        }
    }

    @Test
    void readsAndWritesNbdkitMemoryExportWithManyRequestsInFlight() throws Exception {
        String nbdkit = Peers.require("nbdkit", "nbdkit");
        int port = Peers.freePort();
        Path pid = dir.resolve("k.pid");
        peers.foreground(pid, nbdkit, "-f", "-P", pid.toString(), "-i", "127.0.0.1", "-p", String.valueOf(port),
                "memory", "64M");
        Image i = openNbd("nbd://127.0.0.1:" + port, true);
        assertEquals(64 * MIB, i.size());
        try (ExecutorService ex = Executors.newVirtualThreadPerTaskExecutor()) {
            List<Future<?>> fs = new ArrayList<>();
            for (int t = 0; t < 64; t++) {
                final int n = t;
                fs.add(ex.submit(() -> {
                    byte[] data = filled(256 * 1024 + n, n + 1);
                    long off = (long) n * MIB + n;
                    i.write(off, ByteBuffer.wrap(data), 0);
                    assertArrayEquals(data, read(i, off, data.length));
                    return null;
                }));
            }
            for (Future<?> f : fs) {
                f.get();
            }
        }
        // nbdkit's memory plugin is sparse: trimmed and zeroed ranges report as holes that read as zero
        i.writeZeroes(0, MIB, BlockNode.MAY_UNMAP);
        BlockStatus s = i.blockStatus(0, MIB);
        assertTrue(s.isZero(), s.toString());
        assertArrayEquals(new byte[4096], read(i, 4096, 4096));
        assertTrue(i.blockStatus(MIB + 1, 4096).isData());
    }

    @Test
    void spreadsRequestsOverSeveralConnectionsWhenTheServerAllowsMultiConn() throws Exception {
        String nbdkit = Peers.require("nbdkit", "nbdkit");
        int port = Peers.freePort();
        Path pid = dir.resolve("km.pid");
        Path log = dir.resolve("log.txt");
        peers.foreground(pid, nbdkit, "-f", "-P", pid.toString(), "-i", "127.0.0.1", "-p", String.valueOf(port),
                "--filter=log", "memory", "16M", "logfile=" + log);
        Image i = core.open("nbd://127.0.0.1:" + port, Options.of("driver", "nbd", "x-multi-conn", "4"),
                OpenMode.READ_WRITE);
        open.add(i);
        assertEquals(4, i.driverNode().info().get("connections"));
        try (ExecutorService ex = Executors.newVirtualThreadPerTaskExecutor()) {
            List<Future<?>> fs = new ArrayList<>();
            for (int t = 0; t < 32; t++) {
                final int n = t;
                fs.add(ex.submit(() -> {
                    byte[] data = filled(100_000, n + 1);
                    i.write((long) n * 500_000, ByteBuffer.wrap(data), 0);
                    i.flush();
                    assertArrayEquals(data, read(i, (long) n * 500_000, data.length));
                    return null;
                }));
            }
            for (Future<?> f : fs) {
                f.get();
            }
        }
        i.close();
        open.remove(i);
        peers.close();
        // nbdkit's log filter names the connection of every request: writes went over all four
        long writers = Files.readAllLines(log).stream().filter(l -> l.contains(" Write id="))
                .map(l -> l.replaceAll(".* (connection=\\d+) .*", "$1")).distinct().count();
        assertEquals(4, writers, Files.readString(log).lines().limit(20).toList().toString());
    }

    @Test
    void readsFileServedByNbdkitFilePluginOverUnixSocket() throws Exception {
        String nbdkit = Peers.require("nbdkit", "nbdkit");
        Path img = image("raw", "2M", "write -P 0x3c 1M 4k");
        Path sock = dir.resolve("k.sock");
        Path pid = dir.resolve("kf.pid");
        peers.foreground(pid, nbdkit, "-f", "-P", pid.toString(), "-U", sock.toString(), "file",
                "file=" + img);
        Image i = openNbd("nbd:unix:" + sock, false);
        assertEquals(2 * MIB, i.size());
        assertArrayEquals(filled(4096, 0x3c), read(i, MIB, 4096));
    }

    @Test
    void readsAndWritesNbdServerExportWithSimpleReplies() throws Exception {
        String nbdServer = Peers.require("nbd-server", "nbd-server");
        Path img = image("raw", "4M", "write -P 0x21 0 1M");
        int port = Peers.freePort();
        Path conf = dir.resolve("nbd-server.conf");
        Files.writeString(conf, "[generic]\n    listenaddr = 127.0.0.1\n    port = " + port
                + "\n    allowlist = true\n[disk]\n    exportname = " + img + "\n    flush = true\n    fua = true\n"
                + "    trim = true\n");
        Path pid = dir.resolve("nbd-server.pid");
        peers.daemon(pid, nbdServer, "-C", conf.toString(), "-p", pid.toString());
        Image i = null;
        for (int attempt = 0; i == null; attempt++) {
            try {
                i = openNbd("nbd://127.0.0.1:" + port + "/disk", true);
            } catch (BlockException e) {
                if (attempt > 250) {
                    throw e;
                }
                Thread.sleep(20); // the daemon writes its pid file just before it listens
            }
        }
        assertEquals(4 * MIB, i.size());
        assertFalse(i.driverNode().capabilities().can(Feature.BLOCK_STATUS), "nbd-server has no structured replies");
        assertArrayEquals(filled(MIB, 0x21), read(i, 0, MIB));
        i.write(2 * MIB + 7, ByteBuffer.wrap(filled(70_000, 0x22)), BlockNode.FUA);
        i.writeZeroes(100, 200, 0);
        i.flush();
        byte[] onDisk = Files.readAllBytes(img);
        assertArrayEquals(filled(70_000, 0x22), Arrays.copyOfRange(onDisk, 2 * MIB + 7, 2 * MIB + 7 + 70_000));
        assertArrayEquals(new byte[200], Arrays.copyOfRange(onDisk, 100, 300));
        assertTrue(i.blockStatus(0, MIB).isData(), "without block status everything is data");
    }

    @Test
    void nbdkitErrorFilterFaultsBecomeClearErrors() throws Exception {
        String nbdkit = Peers.require("nbdkit", "nbdkit");
        int port = Peers.freePort();
        Path pid = dir.resolve("ke.pid");
        peers.foreground(pid, nbdkit, "-f", "-P", pid.toString(), "-i", "127.0.0.1", "-p", String.valueOf(port),
                "--filter=error", "memory", "4M", "error-pread=EIO", "error-pread-rate=100%",
                "error-trim=ENOSPC", "error-trim-rate=100%");
        Image i = openNbd("nbd://127.0.0.1:" + port, true);
        BlockException e = assertThrows(BlockException.class, () -> read(i, 0, 4096));
        assertEquals(BlockException.Reason.IO, e.reason());
        assertTrue(e.getMessage().contains("failed read at offset 0") && e.getMessage().contains("EIO"),
                e.getMessage());
        BlockException t = assertThrows(BlockException.class, () -> i.discard(0, MIB));
        assertEquals(BlockException.Reason.NO_SPACE, t.reason());
        i.write(0, ByteBuffer.wrap(filled(4096, 1)), 0); // the connection survives per-request errors
    }

    @Test
    void honoursTheServersBlockSizeConstraints() throws Exception {
        String nbdkit = Peers.require("nbdkit", "nbdkit");
        int port = Peers.freePort();
        Path pid = dir.resolve("kb.pid");
        peers.foreground(pid, nbdkit, "-f", "-P", pid.toString(), "-i", "127.0.0.1", "-p", String.valueOf(port),
                "--filter=blocksize-policy", "memory", "8M", "blocksize-minimum=512", "blocksize-preferred=4096",
                "blocksize-maximum=65536", "blocksize-error-policy=error");
        Image i = openNbd("nbd://127.0.0.1:" + port, true);
        assertEquals(512, i.limits().requestAlignment());
        assertEquals(65536, i.limits().maxTransfer());
        assertEquals(4096, i.limits().optimalTransfer());
        // unaligned and larger than the maximum: the core aligns (read-modify-write) and we split
        byte[] data = filled(300_001, 0x6b);
        i.write(5, ByteBuffer.wrap(data), 0);
        assertArrayEquals(data, read(i, 5, data.length));
        assertArrayEquals(new byte[5], read(i, 0, 5));
        i.writeZeroes(1000, 3000, 0);
        assertArrayEquals(new byte[3000], read(i, 1000, 3000));
    }

    @Test
    void serverThatDiesFailsRequestsInsteadOfHanging() throws Exception {
        Path img = image("raw", "1M");
        Path sock = dir.resolve("d.sock");
        peers.qemuNbd(dir, "-f", "raw", "--socket=" + sock, "-x", "disk", img.toString());
        Image i = openNbd("nbd+unix:///disk?socket=" + sock, false);
        read(i, 0, 512);
        peers.close();
        long t0 = System.nanoTime();
        BlockException e = assertThrows(BlockException.class, () -> read(i, 0, 512));
        assertEquals(BlockException.Reason.IO, e.reason());
        assertTrue(System.nanoTime() - t0 < 5_000_000_000L);
    }
}
