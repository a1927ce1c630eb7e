package org.blockhaus.nbd.server;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.api.spi.UserObject;
import org.blockhaus.core.BlockCore;
import org.blockhaus.protocol.nbd.NbdDriver;
import org.blockhaus.testkit.Peers;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The server with TLS-PSK (QEMU's tls-creds-psk, endpoint=server): qemu-img, qemu-io and nbdinfo
 * (GnuTLS clients) connect with a user's key from psktool's keys.psk; a wrong key or an unknown
 * user is refused without hurting other clients; {@code blk nbd --object tls-creds-psk} works as
 * qemu-nbd's and fails as it does.
 */
@Timeout(value = 180, unit = TimeUnit.SECONDS)
class PskServerTest {
    private static final int MIB = 1 << 20;

    @TempDir
    Path dir;
    private NbdServer.Running running;

    @AfterEach
    void stop() {
        if (running != null) {
            running.close();
        }
    }

    static Path keys(Path d, String... users) throws Exception {
        String psktool = Peers.require("psktool", "gnutls-bin");
        Files.createDirectories(d);
        for (String u : users) {
            Peers.check(psktool, "-u", u, "-p", d.resolve("keys.psk").toString());
        }
        return d;
    }

    private Path serve(MemoryNode node, Path keyDir) throws Exception {
        Path sock = dir.resolve("s.sock");
        running = NbdServer.standalone().start(List.of(new NbdServer.Export("disk", node, false, null)),
                UnixDomainSocketAddress.of(sock), NbdServer.Settings.DEFAULT.withTls(
                        NbdServer.pskFromDirectory(keyDir)));
        return sock;
    }

    private static String qemuObject(Path keyDir, String user) {
        return "tls-creds-psk,id=tls0,endpoint=client,dir=" + keyDir + ",username=" + user;
    }

    private static String imageOpts(Path sock) {
        return "driver=nbd,server.type=unix,server.path=" + sock + ",export=disk,tls-creds=tls0";
    }

    private static String nbdinfoUri(String user, Path sock, Path keyFile) {
        return "nbds+unix://" + user + "@/disk?socket=" + sock + "&tls-psk-file=" + keyFile;
    }

    @Test
    void qemuIoWritesAndQemuImgConvertsOverPsk() throws Exception {
        Path k = keys(dir.resolve("k"), "alice", "bob");
        MemoryNode node = new MemoryNode(4 * MIB);
        Path sock = serve(node, k);
        String qemuIo = Peers.require("qemu-io", "qemu-utils");
        Peers.check(qemuIo, "--object", qemuObject(k, "bob"), "--image-opts", "-c", "write -P 0x21 64k 1M", "-c",
                "flush", imageOpts(sock));
        byte[] got = new byte[MIB];
        node.read(64 * 1024, ByteBuffer.wrap(got));
        byte[] expected = new byte[MIB];
        Arrays.fill(expected, (byte) 0x21);
        assertArrayEquals(expected, got);
        Path out = dir.resolve("out.raw");
        String qemuImg = Peers.require("qemu-img", "qemu-utils");
        Peers.check(qemuImg, "convert", "--object", qemuObject(k, "alice"), "--image-opts", imageOpts(sock), "-O",
                "raw", out.toString());
        byte[] all = Files.readAllBytes(out);
        assertEquals(4 * MIB, all.length);
        assertArrayEquals(expected, Arrays.copyOfRange(all, 64 * 1024, 64 * 1024 + MIB));
        String info = Peers.check(qemuImg, "info", "--object", qemuObject(k, "alice"), "--image-opts",
                imageOpts(sock)).out();
        assertTrue(info.contains("virtual size: 4 MiB (4194304 bytes)"), info);
    }

    @Test
    void nbdinfoConnectsWithLibnbdsPskUri() throws Exception {
        Path k = keys(dir.resolve("k"), "alice");
        Path sock = serve(new MemoryNode(3 * MIB), k);
        String json = Peers.check(Peers.require("nbdinfo", "libnbd-bin"), "--json",
                nbdinfoUri("alice", sock, k.resolve("keys.psk"))).out();
        assertTrue(json.contains("\"TLS\": true"), json);
        assertTrue(json.contains("\"export-size\": " + 3 * MIB), json);
    }

    @Test
    void wrongKeyAndUnknownUserAreRefusedAndOthersKeepWorking() throws Exception {
        Path k = keys(dir.resolve("k"), "alice");
        Path other = keys(dir.resolve("other"), "alice", "mallory"); // alice's key differs here
        Path sock = serve(new MemoryNode(2 * MIB), k);
        String nbdinfo = Peers.require("nbdinfo", "libnbd-bin");
        long t0 = System.nanoTime();
        Peers.Result wrongKey = Peers.run(nbdinfo, nbdinfoUri("alice", sock, other.resolve("keys.psk")));
        assertNotEquals(0, wrongKey.exit(), wrongKey.out());
        assertTrue(wrongKey.out().contains("TLS"), wrongKey.out());
        Peers.Result unknown = Peers.run(nbdinfo, nbdinfoUri("mallory", sock, other.resolve("keys.psk")));
        assertNotEquals(0, unknown.exit(), unknown.out());
        assertTrue(System.nanoTime() - t0 < TimeUnit.SECONDS.toNanos(20), "refusals must not wait for timeouts");
        Peers.Result qemu = Peers.run(Peers.require("qemu-img", "qemu-utils"), "info", "--object",
                qemuObject(other, "mallory"), "--image-opts", imageOpts(sock));
        assertEquals(1, qemu.exit(), qemu.out());
        assertTrue(qemu.out().contains("TLS"), qemu.out());
        // and our own client, with the right key, still gets in
        BlockCore core = BlockCore.standalone();
        core.addDriver(new NbdDriver());
        core.addObject(new UserObject("tls-creds-psk", "tls0", Options.of("dir", k.toString(), "username",
                "alice")));
        try (Image i = core.open("json:{\"driver\":\"nbd\",\"server\":{\"type\":\"unix\",\"path\":\"" + sock
                + "\"},\"export\":\"disk\",\"tls-creds\":\"tls0\"}", Options.empty(), OpenMode.READ_WRITE)) {
            byte[] data = new byte[MIB + 5];
            Arrays.fill(data, (byte) 0x6b);
            i.write(3, ByteBuffer.wrap(data), 0);
            ByteBuffer back = ByteBuffer.allocate(data.length);
            i.read(3, back);
            assertArrayEquals(data, back.array());
        }
    }

    @Test
    void aKeyFileThatIsGoneIsRefusedAtStart() throws Exception {
        Path empty = Files.createDirectories(dir.resolve("empty"));
        BlockException e = assertThrows(BlockException.class, () -> NbdServer.pskFromDirectory(empty));
        assertEquals("Unable to access credentials " + empty.resolve("keys.psk") + ": No such file or directory",
                e.getMessage());
    }

    @Test
    void blkNbdServesWithTlsCredsPskAsQemuNbdDoes() throws Exception {
        Path k = keys(dir.resolve("k"), "alice");
        Path img = dir.resolve("d.qcow2");
        String qemuImg = Peers.require("qemu-img", "qemu-utils");
        Peers.check(qemuImg, "create", "-q", "-f", "qcow2", img.toString(), "8M");
        Peers.check(Peers.require("qemu-io", "qemu-utils"), "-f", "qcow2", "-c", "write -P 0x44 1M 64k",
                img.toString());
        Path sock = dir.resolve("b.sock");
        try (CommandRun r = CommandRun.start("-t", "-k", sock.toString(), "-x", "disk", "--object",
                "tls-creds-psk,id=tls0,endpoint=server,dir=" + k, "--tls-creds=tls0", img.toString())
                .listeningOn(sock)) {
            Peers.Result read = Peers.check(Peers.require("qemu-io", "qemu-utils"), "--object",
                    qemuObject(k, "alice"), "--image-opts", "-r", "-c", "read -P 0x44 1M 64k", imageOpts(sock));
            assertTrue(read.out().contains("read 65536/65536 bytes"), read.out());
            Peers.Result plain = Peers.run(qemuImg, "info", "nbd+unix:///disk?socket=" + sock);
            assertEquals(1, plain.exit(), plain.out());
            assertTrue(plain.out().contains("TLS negotiation required"), plain.out());
        }
    }

    @Test
    void blkNbdRefusesBadPskObjectsWithQemuNbdsWords() throws Exception {
        Path k = keys(dir.resolve("k"), "alice");
        Path empty = Files.createDirectories(dir.resolve("empty"));
        Path img = dir.resolve("d.raw");
        Files.write(img, new byte[65536]);
        String qemuNbd = Peers.require("qemu-nbd", "qemu-utils");
        List<List<String>> cases = List.of(
                List.of("--object", "tls-creds-psk,id=tls0,endpoint=server,dir=" + empty, "--tls-creds=tls0"),
                List.of("--object", "tls-creds-psk,id=tls0,endpoint=server,dir=" + k + ",username=alice",
                        "--tls-creds=tls0"),
                List.of("--object", "tls-creds-psk,id=tls0,endpoint=client,dir=" + k + ",username=alice",
                        "--tls-creds=tls0"),
                List.of("--object", "tls-creds-psk,id=tls0,endpoint=server,dir=" + k, "--tls-creds=tls1"),
                List.of("--object", "secret,id=tls0,data=x", "--tls-creds=tls0"));
        int n = 0;
        for (List<String> c : cases) {
            Path sock = dir.resolve("c" + n++ + ".sock");
            List<String> args = new java.util.ArrayList<>(List.of("-k", sock.toString()));
            args.addAll(c);
            args.add(img.toString());
            List<String> real = new java.util.ArrayList<>(List.of(qemuNbd));
            real.addAll(args);
            Peers.Result q = Peers.run(real.toArray(String[]::new));
            CommandRun ours = CommandRun.finish(args.toArray(String[]::new));
            assertEquals(1, q.exit(), q.out());
            assertEquals(1, ours.code(), ours.err());
            assertEquals(q.out(), ours.err(), "same words as qemu-nbd for " + c);
        }
    }

    /** qemu-io restricted to one TLS version by QEMU's priority property: both must work. */
    @Test
    void pskWorksOverTls13AndTls12() throws Exception {
        Path k = keys(dir.resolve("k"), "alice");
        MemoryNode node = new MemoryNode(2 * MIB);
        Path sock = serve(node, k);
        String qemuIo = Peers.require("qemu-io", "qemu-utils");
        int pattern = 0x31;
        for (String version : List.of("TLS1.3", "TLS1.2")) {
            String object = qemuObject(k, "alice") + ",priority=NORMAL:-VERS-ALL:+VERS-" + version;
            Peers.check(qemuIo, "--object", object, "--image-opts", "-c", "write -P " + pattern + " 0 64k",
                    imageOpts(sock));
            Peers.Result read = Peers.check(qemuIo, "--object", object, "--image-opts", "-r", "-c",
                    "read -P " + pattern + " 0 64k", imageOpts(sock));
            assertTrue(read.out().contains("read 65536/65536 bytes"), version + ": " + read.out());
            assertTrue(!read.out().contains("Pattern verification failed"), version + ": " + read.out());
            pattern++;
        }
        // a wrong key over TLS 1.3 is refused too
        Path other = keys(dir.resolve("other"), "alice");
        Peers.Result wrong = Peers.run(qemuIo, "--object", qemuObject(other, "alice")
                + ",priority=NORMAL:-VERS-ALL:+VERS-TLS1.3", "--image-opts", "-r", "-c", "read 0 4k", imageOpts(sock));
        assertNotEquals(0, wrong.exit(), wrong.out());
    }
}
