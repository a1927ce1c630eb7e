package org.blockhaus.protocol.nbd;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.blockhaus.testkit.Peers;
import org.blockhaus.testkit.TlsDirs;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * NBD over TLS (X.509) against qemu-nbd with tls-creds-x509: certificates made by certtool in
 * QEMU's directory layout, server verification, client certificates, and the failures a user
 * must be able to tell apart.
 */
class TlsInteropTest {
    @TempDir
    Path dir;
    private final Peers peers = new Peers();
    private final BlockCore core = BlockCore.standalone();
    private final List<Image> open = new ArrayList<>();

    TlsInteropTest() {
        core.addDriver(new NbdDriver());
    }

    @AfterEach
    void tearDown() {
        try {
            for (Image i : open) {
                try {
                    i.close();
                } catch (BlockException ignored) {
                    // assertions decide
                }
            }
        } finally {
            peers.close();
        }
    }

    private int qemuNbdTls(Path creds, boolean verifyPeer, Path img) throws Exception {
        int port = Peers.freePort();
        peers.qemuNbd(dir, "--object", "tls-creds-x509,id=tls0,endpoint=server,dir=" + creds + ",verify-peer="
                + (verifyPeer ? "on" : "off"), "--tls-creds=tls0", "-f", "raw", "--bind=127.0.0.1",
                "--port=" + port, "-x", "disk", img.toString());
        return port;
    }

    private Path image() throws Exception {
        Path img = dir.resolve("disk.raw");
        Peers.check(Peers.require("qemu-img", "qemu-utils"), "create", "-q", "-f", "raw", img.toString(), "4M");
        Peers.check(Peers.require("qemu-io", "qemu-utils"), "-f", "raw", "-c", "write -P 0x7e 1M 128k",
                img.toString());
        return img;
    }

    private Image openNbd(String filename, Options extra, boolean writable) throws BlockException {
        Image i = core.open(filename, Options.of("driver", "nbd").merge(extra),
                writable ? OpenMode.READ_WRITE : OpenMode.READ_ONLY);
        open.add(i);
        return i;
    }

    private static byte[] read(Image i, long off, int len) throws BlockException {
        ByteBuffer b = ByteBuffer.allocate(len);
        i.read(off, b);
        return b.array();
    }

    @Test
    void readsAndWritesQemuNbdOverTls() throws Exception {
        Path creds = TlsDirs.x509(dir.resolve("tls"), "Test CA");
        Path img = image();
        int port = qemuNbdTls(creds, false, img);
        Image i = openNbd("nbds://127.0.0.1:" + port + "/disk?tls-certificates=" + creds, Options.empty(), true);
        byte[] expected = new byte[128 * 1024];
        Arrays.fill(expected, (byte) 0x7e);
        assertArrayEquals(expected, read(i, 1 << 20, expected.length));
        byte[] data = new byte[3 << 20];
        Arrays.fill(data, (byte) 0x31);
        i.write(17, ByteBuffer.wrap(data), 0);
        assertArrayEquals(data, read(i, 17, data.length));
        i.flush();
        assertEquals(0x31, Files.readAllBytes(img)[17 + 5000]);
        assertTrue(i.blockStatus(7 << 19, 4096).isZero(), "block status works over TLS too");
    }

    @Test
    void presentsTheClientCertificateToAVerifyingServer() throws Exception {
        Path creds = TlsDirs.x509(dir.resolve("tls"), "Test CA");
        int port = qemuNbdTls(creds, true, image());
        Image i = openNbd(null, Options.of("server.type", "inet", "server.host", "127.0.0.1", "server.port",
                String.valueOf(port), "export", "disk", "x-tls-creds-dir", creds.toString()), false);
        assertEquals(4 << 20, i.size());
    }

    @Test
    void serverRequiringTlsTellsAPlainClientWhatIsMissing() throws Exception {
        Path creds = TlsDirs.x509(dir.resolve("tls"), "Test CA");
        int port = qemuNbdTls(creds, false, image());
        BlockException e = assertThrows(BlockException.class,
                () -> openNbd("nbd://127.0.0.1:" + port + "/disk", Options.empty(), false));
        assertTrue(e.getMessage().contains("TLS negotiation required"), e.getMessage());
        assertTrue(e.getMessage().contains("tls-creds"), e.getMessage());
    }

    @Test
    void serverSignedByAnotherCaIsRejected() throws Exception {
        Path creds = TlsDirs.x509(dir.resolve("tls"), "Test CA");
        Path other = TlsDirs.x509(dir.resolve("other"), "Other CA");
        int port = qemuNbdTls(creds, false, image());
        BlockException e = assertThrows(BlockException.class,
                () -> openNbd("nbds://127.0.0.1:" + port + "/disk?tls-certificates=" + other, Options.empty(), false));
        assertEquals(BlockException.Reason.IO, e.reason());
        assertTrue(e.getMessage().contains("NBD handshake with '127.0.0.1:" + port + "' failed"), e.getMessage());
    }

    @Test
    void serverWithAnotherNameIsRejected() throws Exception {
        Path creds = TlsDirs.x509(dir.resolve("tls"), "Test CA");
        int port = qemuNbdTls(creds, false, image());
        BlockException e = assertThrows(BlockException.class,
                () -> openNbd("nbds://127.0.0.1:" + port + "/disk?tls-certificates=" + creds,
                        Options.of("tls-hostname", "wrong.example"), false));
        assertTrue(e.getMessage().contains("failed"), e.getMessage());
    }

    @Test
    void nbdsWithoutCredentialsSaysWhatToGive() throws Exception {
        BlockException e = assertThrows(BlockException.class,
                () -> openNbd("nbds://127.0.0.1:1/disk", Options.empty(), false));
        assertTrue(e.getMessage().contains("tls-creds=<id"), e.getMessage());
        assertTrue(e.getMessage().contains("?tls-certificates=<dir>"), e.getMessage());
    }
}
