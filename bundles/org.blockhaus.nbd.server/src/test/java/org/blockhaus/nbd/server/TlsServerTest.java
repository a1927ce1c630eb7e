package org.blockhaus.nbd.server;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.blockhaus.testkit.Peers;
import org.blockhaus.testkit.TlsDirs;
import java.net.InetSocketAddress;
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
import org.blockhaus.core.BlockCore;
import org.blockhaus.protocol.nbd.NbdDriver;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The server with TLS (X.509, FORCEDTLS): nbdinfo, qemu-io and our own client connect with
 * certificates made by certtool in QEMU's directory layout; plain clients are told TLS is needed.
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class TlsServerTest {
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

    private NbdServer.Running serve(MemoryNode node, Path creds, boolean verifyPeer) throws Exception {
        running = NbdServer.standalone().start(List.of(new NbdServer.Export("disk", node, false, null)),
                new InetSocketAddress("127.0.0.1", 0), NbdServer.Settings.DEFAULT
                        .withTls(NbdServer.tlsFromDirectory(creds), verifyPeer));
        return running;
    }

    private static BlockCore core() {
        BlockCore core = BlockCore.standalone();
        core.addDriver(new NbdDriver());
        return core;
    }

    /** Without peer verification the JDK negotiates TLS 1.3 with GnuTLS; with it, TLS 1.2 (see Session). */
    @Test
    void nbdinfoConnectsOverTls() throws Exception {
        Path creds = TlsDirs.x509(dir.resolve("tls"), "Test CA");
        NbdServer.Running r = serve(new MemoryNode(3 * MIB), creds, false);
        int port = ((InetSocketAddress) r.address()).getPort();
        String json = Peers.check(Peers.require("nbdinfo", "libnbd-bin"), "--json",
                "nbds://127.0.0.1:" + port + "/disk?tls-certificates=" + creds).out();
        assertTrue(json.contains("\"TLS\": true"), json);
        assertTrue(json.contains("\"export-size\": " + 3 * MIB), json);
    }

    @Test
    void qemuIoWritesOverTlsWithItsClientCertificate() throws Exception {
        Path creds = TlsDirs.x509(dir.resolve("tls"), "Test CA");
        MemoryNode node = new MemoryNode(4 * MIB);
        NbdServer.Running r = serve(node, creds, true);
        int port = ((InetSocketAddress) r.address()).getPort();
        String qemuIo = Peers.require("qemu-io", "qemu-utils");
        String object = "tls-creds-x509,id=tls0,endpoint=client,dir=" + creds;
        String opts = "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=" + port
                + ",export=disk,tls-creds=tls0";
        Peers.check(qemuIo, "--object", object, "--image-opts", "-c", "write -P 0x12 64k 1M", "-c", "flush", opts);
        byte[] got = new byte[MIB];
        node.read(64 * 1024, ByteBuffer.wrap(got));
        byte[] expected = new byte[MIB];
        Arrays.fill(expected, (byte) 0x12);
        assertArrayEquals(expected, got);
        Peers.Result read = Peers.check(qemuIo, "--object", object, "--image-opts", "-r", "-c",
                "read -P 0x12 64k 1M", opts);
        assertFalse(read.out().contains("Pattern verification failed"), read.out());
    }

    @Test
    void ourClientTalksTlsToOurServer() throws Exception {
        Path creds = TlsDirs.x509(dir.resolve("tls"), "Test CA");
        MemoryNode node = new MemoryNode(4 * MIB);
        NbdServer.Running r = serve(node, creds, true);
        try (Image i = core().open(r.uri("disk").replace("nbd://", "nbds://") + "?tls-certificates=" + creds,
                Options.of("driver", "nbd"), OpenMode.READ_WRITE)) {
            byte[] data = new byte[2 * MIB + 3];
            Arrays.fill(data, (byte) 0x4d);
            i.write(1, ByteBuffer.wrap(data), 0);
            ByteBuffer back = ByteBuffer.allocate(data.length);
            i.read(1, back);
            assertArrayEquals(data, back.array());
            assertTrue(i.blockStatus(3 * MIB + 65536, 4096).isZero());
        }
    }

    @Test
    void plainClientsAreToldTlsIsRequired() throws Exception {
        Path creds = TlsDirs.x509(dir.resolve("tls"), "Test CA");
        NbdServer.Running r = serve(new MemoryNode(MIB), creds, false);
        BlockException e = assertThrows(BlockException.class,
                () -> core().open(r.uri("disk"), Options.of("driver", "nbd"), OpenMode.READ_ONLY).close());
        assertTrue(e.getMessage().contains("TLS negotiation required"), e.getMessage());
        Peers.Result q = Peers.run(Peers.require("qemu-img", "qemu-utils"), "info", r.uri("disk"));
        assertNotEquals(0, q.exit(), q.out());
        assertTrue(q.out().contains("TLS"), q.out());
    }

    @Test
    void clientWithoutACertificateIsRefusedWhenPeersAreVerified() throws Exception {
        Path creds = TlsDirs.x509(dir.resolve("tls"), "Test CA");
        Path caOnly = Files.createDirectories(dir.resolve("ca-only"));
        Files.copy(creds.resolve("ca-cert.pem"), caOnly.resolve("ca-cert.pem"));
        NbdServer.Running r = serve(new MemoryNode(MIB), creds, true);
        int port = ((InetSocketAddress) r.address()).getPort();
        BlockException e = assertThrows(BlockException.class, () -> core().open(
                "nbds://127.0.0.1:" + port + "/disk?tls-certificates=" + caOnly, Options.of("driver", "nbd"),
                OpenMode.READ_ONLY).close());
        assertEquals(BlockException.Reason.IO, e.reason());
        // and the server still serves clients that do have one
        try (Image i = core().open("nbds://127.0.0.1:" + port + "/disk?tls-certificates=" + creds,
                Options.of("driver", "nbd"), OpenMode.READ_ONLY)) {
            assertEquals(MIB, i.size());
        }
    }

    /**
     * verify-peer on both TLS versions: qemu-io, a GnuTLS client with an RSA client key (what
     * certtool makes), forced to TLS 1.3 and then to TLS 1.2 with QEMU's priority property.
     */
    @Test
    void clientCertificatesAreVerifiedOverTls13AndTls12() throws Exception {
        Path creds = TlsDirs.x509(dir.resolve("tls"), "Test CA");
        MemoryNode node = new MemoryNode(4 * MIB);
        running = NbdServer.standalone().start(List.of(new NbdServer.Export("disk", node, false, null)),
                new InetSocketAddress("127.0.0.1", 0), NbdServer.Settings.DEFAULT
                        .withTls(NbdServer.x509FromDirectory(creds, true)));
        int port = ((InetSocketAddress) running.address()).getPort();
        String qemuIo = Peers.require("qemu-io", "qemu-utils");
        String opts = "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=" + port
                + ",export=disk,tls-creds=tls0";
        int pattern = 0x21;
        for (String version : List.of("+VERS-TLS1.3", "+VERS-TLS1.2")) {
            String object = "tls-creds-x509,id=tls0,endpoint=client,dir=" + creds
                    + ",priority=NORMAL:-VERS-ALL:" + version;
            Peers.check(qemuIo, "--object", object, "--image-opts", "-c", "write -P " + pattern + " 0 64k", opts);
            Peers.Result read = Peers.check(qemuIo, "--object", object, "--image-opts", "-r", "-c",
                    "read -P " + pattern + " 0 64k", opts);
            assertFalse(read.out().contains("Pattern verification failed"), version + ": " + read.out());
            pattern++;
        }
        // no client certificate: refused on TLS 1.3 as well, and the server goes on serving
        Path caOnly = Files.createDirectories(dir.resolve("ca-only"));
        Files.copy(creds.resolve("ca-cert.pem"), caOnly.resolve("ca-cert.pem"));
        Peers.Result refused = Peers.run(qemuIo, "--object", "tls-creds-x509,id=tls0,endpoint=client,dir=" + caOnly
                + ",priority=NORMAL:-VERS-ALL:+VERS-TLS1.3", "--image-opts", "-r", "-c", "read 0 4k", opts);
        assertNotEquals(0, refused.exit(), refused.out());
        // a client certificate from another CA: refused
        Path other = TlsDirs.x509(dir.resolve("other"), "Test CA");
        Files.copy(creds.resolve("ca-cert.pem"), other.resolve("ca-cert.pem"),
                java.nio.file.StandardCopyOption.REPLACE_EXISTING);
        Peers.Result foreign = Peers.run(qemuIo, "--object", "tls-creds-x509,id=tls0,endpoint=client,dir=" + other,
                "--image-opts", "-r", "-c", "read 0 4k", opts);
        assertNotEquals(0, foreign.exit(), foreign.out());
        String json = Peers.check(Peers.require("nbdinfo", "libnbd-bin"), "--json",
                "nbds://127.0.0.1:" + port + "/disk?tls-certificates=" + creds).out();
        assertTrue(json.contains("\"TLS\": true"), json);
    }
}
