package org.blockhaus.nbd.server;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.net.UnixDomainSocketAddress;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockStatus;
import org.blockhaus.api.Image;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.Options;
import org.blockhaus.core.BlockCore;
import org.blockhaus.protocol.nbd.NbdDriver;
import org.blockhaus.testkit.Peers;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * qemu-nbd's {@code -B NAME}: persistent dirty bitmaps that qemu-img and qemu-io made dirty,
 * exported by {@code blk nbd -B} and by the real qemu-nbd side by side, read with nbdinfo
 * --map, qemu-img map over x-dirty-bitmap and our own client: the answers must be the same.
 */
@Timeout(value = 180, unit = TimeUnit.SECONDS)
class DirtyBitmapExportTest {
    @TempDir
    Path dir;
    private final Peers peers = new Peers();
    private final List<AutoCloseable> open = new ArrayList<>();

    @AfterEach
    void tearDown() throws Exception {
        try {
            for (AutoCloseable c : open.reversed()) {
                c.close();
            }
        } finally {
            peers.close();
        }
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

    private static String qemuNbd() {
        return Peers.require("qemu-nbd", "qemu-utils");
    }

    private static String uri(Path sock) {
        return "nbd+unix:///?socket=" + sock;
    }

    /**
     * An image with three bitmaps: b0 (enabled, 64 KiB), b1 (4 KiB granularity, disabled after
     * some writes) and b2 (added last, so only later writes dirty it), all dirtied by qemu-io.
     */
    private Path imageWithBitmaps(String name) throws Exception {
        Path img = dir.resolve(name);
        Peers.check(qemuImg(), "create", "-q", "-f", "qcow2", img.toString(), "8M");
        Peers.check(qemuImg(), "bitmap", "--add", img.toString(), "b0");
        Peers.check(qemuImg(), "bitmap", "--add", "-g", "4k", img.toString(), "b1");
        Peers.check(qemuIo(), "-f", "qcow2", "-c", "write 100k 10k", "-c", "write 1M 300k", "-c",
                "write -z 5M 4k", img.toString());
        Peers.check(qemuImg(), "bitmap", "--disable", img.toString(), "b1");
        Peers.check(qemuImg(), "bitmap", "--add", "-g", "128k", img.toString(), "b2");
        Peers.check(qemuIo(), "-f", "qcow2", "-c", "write 7M 1k", "-c", "discard 2M 64k", img.toString());
        return img;
    }

    private CommandRun ours(Path sock, String... args) throws Exception {
        List<String> a = new ArrayList<>(List.of("-t", "--shared=8", "--socket=" + sock));
        a.addAll(List.of(args));
        CommandRun r = CommandRun.start(a.toArray(String[]::new));
        open.add(r);
        return r.listeningOn(sock);
    }

    private static String map(Path sock, String context) throws Exception {
        return Peers.check(nbdinfo(), "--map=" + context, uri(sock)).out();
    }

    private static String qemuImgMap(Path sock, String context) throws Exception {
        return Peers.check(qemuImg(), "map", "--output=json", "--image-opts", "driver=nbd,server.type=unix,"
                + "server.path=" + sock + ",x-dirty-bitmap=" + context).out();
    }

    /** The "contexts" array of nbdinfo --json (what the server lists for the export). */
    private static String contexts(Path sock) throws Exception {
        String json = Peers.check(nbdinfo(), "--json", uri(sock)).out();
        Matcher m = Pattern.compile("\"contexts\": \\[([^]]*)]").matcher(json);
        assertTrue(m.find(), json);
        return m.group(1).replaceAll("\\s+", "");
    }

    @Test
    void bitmapsMadeDirtyByQemuReadTheSameAsFromQemuNbd() throws Exception {
        Path img = imageWithBitmaps("d.qcow2");
        Path q = dir.resolve("q.sock");
        Path b = dir.resolve("b.sock");
        peers.qemuNbd(dir, "-r", "-B", "b0", "-B", "b1", "-B", "b2", "--socket=" + q, img.toString());
        ours(b, "-r", "-B", "b0", "-B", "b1", "-B", "b2", img.toString());
        assertEquals(contexts(q), contexts(b), "contexts listed, in qemu-nbd's order");
        for (String bm : List.of("b0", "b1", "b2")) {
            String ctx = "qemu:dirty-bitmap:" + bm;
            String expected = map(q, ctx);
            assertTrue(expected.contains("dirty"), "qemu-nbd shows dirty ranges of " + bm + ": " + expected);
            assertEquals(expected, map(b, ctx), "nbdinfo --map=" + ctx);
            assertEquals(qemuImgMap(q, ctx), qemuImgMap(b, ctx), "qemu-img map over x-dirty-bitmap " + ctx);
        }
        // ranges that are not aligned to the granularity, and one extent at a time (REQ_ONE)
        List<long[]> theirs = ourClientMap(q, "qemu:dirty-bitmap:b1");
        List<long[]> mine = ourClientMap(b, "qemu:dirty-bitmap:b1");
        assertEquals(render(theirs), render(mine), "our client over x-dirty-bitmap, qemu-nbd vs blk nbd");
        assertEquals(render(qemuImgEntries(qemuImgMap(q, "qemu:dirty-bitmap:b1"))), render(theirs),
                "our client reads qemu-nbd's bitmap as qemu-img does");
    }

    @Test
    void writesThroughTheExportDirtyAnEnabledBitmapAsQemuNbdDoes() throws Exception {
        Path mine = imageWithBitmaps("mine.qcow2");
        Path theirs = dir.resolve("theirs.qcow2");
        Files.copy(mine, theirs);
        Path q = dir.resolve("q.sock");
        Path b = dir.resolve("b.sock");
        peers.qemuNbd(dir, "-B", "b0", "-B", "b1", "-f", "qcow2", "--socket=" + q, theirs.toString());
        CommandRun r = ours(b, "-B", "b0", "-B", "b1", "-f", "qcow2", mine.toString());
        for (Path s : List.of(q, b)) {
            Peers.check(qemuIo(), "-f", "raw", "-c", "write 3M 4k", "-c", "write -z 6M 130k", "-c",
                    "discard 4M 64k", uri(s));
        }
        for (String bm : List.of("b0", "b1")) {
            String ctx = "qemu:dirty-bitmap:" + bm;
            assertEquals(map(q, ctx), map(b, ctx), "live " + ctx + " after writes through the export");
        }
        assertTrue(map(b, "qemu:dirty-bitmap:b0").contains("3145728"), "the write at 3M is dirty in b0");
        peers.close();
        r.close();
        open.remove(r);
        // stored on close: the images' bitmaps now read the same through qemu-nbd
        Path q2 = dir.resolve("q2.sock");
        Path b2 = dir.resolve("b2.sock");
        try (Peers again = new Peers()) {
            again.qemuNbd(dir, "-r", "-B", "b0", "--socket=" + q2, theirs.toString());
            again.qemuNbd(dir, "-r", "-B", "b0", "--socket=" + b2, mine.toString());
            assertEquals(map(q2, "qemu:dirty-bitmap:b0"), map(b2, "qemu:dirty-bitmap:b0"));
        }
        Peers.check(qemuImg(), "check", mine.toString());
    }

    @Test
    void aBitmapOfTheBackingFileIsFoundAsQemuNbdFindsIt() throws Exception {
        Path base = imageWithBitmaps("base.qcow2");
        Path top = dir.resolve("top.qcow2");
        Peers.check(qemuImg(), "create", "-q", "-f", "qcow2", "-b", base.toString(), "-F", "qcow2", top.toString());
        Peers.check(qemuIo(), "-f", "qcow2", "-c", "write 0 64k", top.toString());
        Path q = dir.resolve("q.sock");
        Path b = dir.resolve("b.sock");
        peers.qemuNbd(dir, "-r", "-B", "b1", "--socket=" + q, top.toString());
        ours(b, "-r", "-B", "b1", top.toString());
        assertEquals(map(q, "qemu:dirty-bitmap:b1"), map(b, "qemu:dirty-bitmap:b1"));
    }

    /** Several exports (our extension): a -B belongs to the image after it. */
    @Test
    void withSeveralExportsEachBitmapBelongsToTheImageAfterIt() throws Exception {
        Path one = imageWithBitmaps("one.qcow2");
        Path two = imageWithBitmaps("two.qcow2");
        Path sock = dir.resolve("m.sock");
        ours(sock, "-r", "-x", "one", "-B", "b0", one.toString(), "-x", "two", "-B", "b1", "-B", "b2",
                two.toString());
        String oneUri = "nbd+unix:///one?socket=" + sock;
        String twoUri = "nbd+unix:///two?socket=" + sock;
        String oneJson = Peers.check(nbdinfo(), "--json", oneUri).out();
        String twoJson = Peers.check(nbdinfo(), "--json", twoUri).out();
        assertTrue(oneJson.contains("qemu:dirty-bitmap:b0") && !oneJson.contains("qemu:dirty-bitmap:b1"), oneJson);
        assertTrue(twoJson.contains("qemu:dirty-bitmap:b1") && twoJson.contains("qemu:dirty-bitmap:b2")
                && !twoJson.contains("qemu:dirty-bitmap:b0"), twoJson);
        Peers.Result missing = Peers.run(nbdinfo(), "--map=qemu:dirty-bitmap:b0", twoUri);
        assertTrue(missing.exit() != 0, missing.out());
        Path q = dir.resolve("q.sock");
        peers.qemuNbd(dir, "-r", "-B", "b2", "--socket=" + q, two.toString());
        assertEquals(map(q, "qemu:dirty-bitmap:b2"), Peers.check(nbdinfo(), "--map=qemu:dirty-bitmap:b2", twoUri)
                .out());
    }

    /** Bad -B: the same words and exit code as qemu-nbd, and nothing left listening. */
    @Test
    void unknownInconsistentAndUnsupportedBitmapsFailAsInQemuNbd() throws Exception {
        Path img = imageWithBitmaps("d.qcow2");
        Path inconsistent = dir.resolve("inc.qcow2");
        Files.copy(img, inconsistent);
        // qemu-io killed while it has the image open read-write leaves the bitmaps "in-use"
        Peers.run(qemuIo(), "-f", "qcow2", "-c", "write 0 4k", "-c", "sigraise 9", inconsistent.toString());
        assertTrue(Peers.check(qemuImg(), "info", inconsistent.toString()).out().contains("in-use"));
        Path raw = dir.resolve("r.raw");
        Peers.check(qemuImg(), "create", "-q", "-f", "raw", raw.toString(), "1M");
        List<List<String>> cases = List.of(
                List.of("-B", "nope", img.toString()),
                List.of("-B", "b0", "--bitmap=nope", img.toString()),
                List.of("-r", "-B", "b0", inconsistent.toString()),
                List.of("-B", "b1", inconsistent.toString()),
                List.of("-f", "raw", "-B", "b0", raw.toString()),
                List.of("-B", "b0", raw.toString()),
                List.of("-r", "-o", "65536", "-f", "qcow2", "-B", "b0", img.toString()));
        for (List<String> c : cases) {
            Path sock = dir.resolve("s.sock");
            List<String> args = new ArrayList<>(List.of("--socket=" + sock));
            args.addAll(c);
            List<String> real = new ArrayList<>(List.of(qemuNbd()));
            real.addAll(args);
            Peers.Result expected = Peers.run(real.toArray(String[]::new));
            assertTrue(expected.exit() != 0 && expected.out().contains("Bitmap '"), expected.out());
            Files.deleteIfExists(sock);
            CommandRun r = CommandRun.finish(args.toArray(String[]::new));
            assertEquals(expected.exit(), r.code(), c + ": " + r.err());
            assertEquals(expected.out(), r.err(), c.toString());
            assertFalse(Files.exists(sock), "no socket left for " + c);
        }
    }

    /** The Java API: Export's bitmaps, checked at start. */
    @Test
    void nbdServerApiServesBitmapsAndRefusesUnknownOnes() throws Exception {
        Path img = imageWithBitmaps("d.qcow2");
        BlockCore core = CommandRun.core();
        Image image = core.open(img.toString(), Options.empty(), OpenMode.READ_ONLY);
        open.add(image);
        NbdServer server = NbdServer.standalone();
        Path sock = dir.resolve("api.sock");
        BlockException e = assertThrows(BlockException.class, () -> server.start(List.of(new NbdServer.Export("",
                image, true, null, false, List.of("b0", "missing"))), UnixDomainSocketAddress.of(sock),
                NbdServer.Settings.DEFAULT));
        assertEquals("Bitmap 'missing' is not found", e.getMessage());
        assertFalse(Files.exists(sock));
        NbdServer.Running running = server.start(List.of(new NbdServer.Export("", image, true, null, false,
                List.of("b2"))), UnixDomainSocketAddress.of(sock), NbdServer.Settings.DEFAULT);
        open.add(running);
        Path q = dir.resolve("q.sock");
        peers.qemuNbd(dir, "-r", "-B", "b2", "--socket=" + q, img.toString());
        assertEquals(map(q, "qemu:dirty-bitmap:b2"), map(sock, "qemu:dirty-bitmap:b2"));
        assertEquals("\"base:allocation\",\"qemu:dirty-bitmap:b2\"", contexts(sock));
        running.close();
        image.close();
        open.remove(running);
        open.remove(image);
        peers.close();
        // a writable image exported read-only: an enabled bitmap could change under the clients
        Image writable = core.open(img.toString(), Options.empty(), OpenMode.READ_WRITE);
        open.add(writable);
        BlockException enabled = assertThrows(BlockException.class, () -> server.start(List.of(
                new NbdServer.Export("", writable, true, null, false, List.of("b0"))),
                UnixDomainSocketAddress.of(sock), NbdServer.Settings.DEFAULT));
        assertEquals("Enabled bitmap 'b0' incompatible with readonly export", enabled.getMessage());
        // b1 is disabled: nothing changes it while exported
        open.add(server.start(List.of(new NbdServer.Export("", writable, true, null, false, List.of("b1"))),
                UnixDomainSocketAddress.of(sock), NbdServer.Settings.DEFAULT));
        assertTrue(map(sock, "qemu:dirty-bitmap:b1").contains("dirty"));
    }

    /** Our client's block status over x-dirty-bitmap: {start, length, data, zero}, neighbours merged. */
    private List<long[]> ourClientMap(Path sock, String context) throws Exception {
        BlockCore core = BlockCore.standalone();
        core.addDriver(new NbdDriver());
        try (Image i = core.open(null, Options.parseKeyValue("driver=nbd,server.type=unix,server.path=" + sock
                + ",x-dirty-bitmap=" + context, "file"), OpenMode.READ_ONLY)) {
            List<long[]> out = new ArrayList<>();
            long size = i.size();
            long step = 3 * 4096 + 512; // not aligned to any granularity
            for (long off = 0; off < size; ) {
                BlockStatus st = i.blockStatus(off, Math.min(step, size - off));
                long data = st.isData() ? 1 : 0;
                long zero = st.isZero() ? 1 : 0;
                long[] last = out.isEmpty() ? null : out.getLast();
                if (last != null && last[2] == data && last[3] == zero) {
                    last[1] += st.length();
                } else {
                    out.add(new long[] {off, st.length(), data, zero});
                }
                off += st.length();
            }
            return out;
        }
    }

    private static List<long[]> qemuImgEntries(String json) {
        List<long[]> out = new ArrayList<>();
        Matcher m = Pattern.compile("\"start\": (\\d+), \"length\": (\\d+),[^}]*\"zero\": (true|false), \"data\": "
                + "(true|false)").matcher(json);
        while (m.find()) {
            out.add(new long[] {Long.parseLong(m.group(1)), Long.parseLong(m.group(2)),
                m.group(4).equals("true") ? 1 : 0, m.group(3).equals("true") ? 1 : 0});
        }
        return out;
    }

    private static String render(List<long[]> extents) {
        StringBuilder sb = new StringBuilder();
        for (long[] x : extents) {
            sb.append(java.util.Arrays.toString(x)).append('\n');
        }
        return sb.toString();
    }
}
