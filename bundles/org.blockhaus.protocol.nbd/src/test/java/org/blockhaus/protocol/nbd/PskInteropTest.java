package org.blockhaus.protocol.nbd;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.api.spi.UserObject;
import org.blockhaus.core.BlockCore;
import org.blockhaus.testkit.Peers;
import org.blockhaus.testkit.TlsDirs;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * NBD over TLS-PSK (QEMU's tls-creds-psk, psktool's keys.psk) against qemu-nbd and nbdkit, and
 * tls-creds=ID naming an --object, with the failures a user must be able to tell apart: wrong
 * key, unknown user, missing key file, unknown or wrong objects. None may hang.
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class PskInteropTest {
    @TempDir
    Path dir;
    private final Peers peers = new Peers();
    private final BlockCore core = BlockCore.standalone();
    private final List<Image> open = new ArrayList<>();

    PskInteropTest() {
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

    /** A keys.psk made by psktool (GnuTLS's tool, the format QEMU and nbdkit read) for {@code users}. */
    static Path keys(Path d, String... users) throws Exception {
        String psktool = Peers.require("psktool", "gnutls-bin");
        Files.createDirectories(d);
        for (String u : users) {
            Peers.check(psktool, "-u", u, "-p", d.resolve("keys.psk").toString());
        }
        return d;
    }

    private Path image() throws Exception {
        Path img = dir.resolve("disk.raw");
        Peers.check(Peers.require("qemu-img", "qemu-utils"), "create", "-q", "-f", "raw", img.toString(), "4M");
        Peers.check(Peers.require("qemu-io", "qemu-utils"), "-f", "raw", "-c", "write -P 0x5a 1M 128k",
                img.toString());
        return img;
    }

    private Path qemuNbdPsk(Path serverKeys, Path img) throws Exception {
        Path sock = dir.resolve("q.sock");
        peers.qemuNbd(dir, "--object", "tls-creds-psk,id=tls0,endpoint=server,dir=" + serverKeys,
                "--tls-creds=tls0", "-f", "raw", "--socket=" + sock, "-x", "disk", img.toString());
        return sock;
    }

    private void pskObject(String id, Path keyDir, String username) throws BlockException {
        Options props = Options.of("dir", keyDir.toString(), "endpoint", "client");
        core.addObject(new UserObject("tls-creds-psk", id, username == null ? props : props.with("username",
                username)));
    }

    private Image openWithCreds(Path sock, String credsId, boolean writable) throws BlockException {
        Image i = core.open("json:{\"driver\":\"nbd\",\"server\":{\"type\":\"unix\",\"path\":\"" + sock
                + "\"},\"export\":\"disk\",\"tls-creds\":\"" + credsId + "\"}", Options.empty(),
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
    void readsAndWritesQemuNbdOverPsk() throws Exception {
        Path k = keys(dir.resolve("k"), "alice");
        Path img = image();
        Path sock = qemuNbdPsk(k, img);
        pskObject("tls0", k, "alice");
        Image i = openWithCreds(sock, "tls0", true);
        byte[] expected = new byte[128 * 1024];
        Arrays.fill(expected, (byte) 0x5a);
        assertArrayEquals(expected, read(i, 1 << 20, expected.length));
        byte[] data = new byte[3 << 20]; // bigger than any TLS record, so records are split and joined
        Arrays.fill(data, (byte) 0x33);
        i.write(4097, ByteBuffer.wrap(data), 0);
        assertArrayEquals(data, read(i, 4097, data.length));
        i.flush();
        assertEquals(0x33, Files.readAllBytes(img)[4097 + 70000]);
        assertTrue(i.blockStatus(7 << 19, 4096).isZero(), "block status works over PSK too");
    }

    @Test
    void usesTheDefaultUserQemuLikeQemu() throws Exception {
        Path k = keys(dir.resolve("k"), "qemu");
        Path sock = qemuNbdPsk(k, image());
        pskObject("tls0", k, null);
        assertEquals(4 << 20, openWithCreds(sock, "tls0", false).size());
    }

    @Test
    void readsNbdkitWithTlsPskAndLibnbdsUriForm() throws Exception {
        String nbdkit = Peers.require("nbdkit", "nbdkit");
        Path k = keys(dir.resolve("k"), "bob");
        Path sock = dir.resolve("k.sock");
        Path pid = dir.resolve("k.pid");
        peers.daemon(pid, nbdkit, "-P", pid.toString(), "-U", sock.toString(), "--tls=require",
                "--tls-psk=" + k.resolve("keys.psk"), "memory", "8M");
        Image i = core.open("nbds+unix://bob@/?socket=" + sock + "&tls-psk-file=" + k.resolve("keys.psk"),
                Options.of("driver", "nbd"), OpenMode.READ_WRITE);
        open.add(i);
        assertEquals(8 << 20, i.size());
        byte[] data = new byte[65536];
        Arrays.fill(data, (byte) 0x77);
        i.write(1 << 20, ByteBuffer.wrap(data), 0);
        assertArrayEquals(data, read(i, 1 << 20, data.length));
    }

    @Test
    void wrongKeyEndsInAClearErrorNotAHang() throws Exception {
        Path server = keys(dir.resolve("server"), "alice");
        Path client = keys(dir.resolve("client"), "alice"); // same user, another random key
        Path sock = qemuNbdPsk(server, image());
        pskObject("tls0", client, "alice");
        BlockException e = assertThrows(BlockException.class, () -> openWithCreds(sock, "tls0", false));
        assertEquals(BlockException.Reason.IO, e.reason());
        assertTrue(e.getMessage().contains("NBD handshake with '" + sock + "' failed: TLS-PSK handshake"),
                e.getMessage());
        assertTrue(e.getMessage().contains("key of user 'alice'"), e.getMessage());
    }

    @Test
    void unknownUserIsRefusedByTheServer() throws Exception {
        Path server = keys(dir.resolve("server"), "alice");
        Path client = keys(dir.resolve("client"), "mallory");
        Path sock = qemuNbdPsk(server, image());
        pskObject("tls0", client, "mallory");
        BlockException e = assertThrows(BlockException.class, () -> openWithCreds(sock, "tls0", false));
        assertTrue(e.getMessage().contains("TLS-PSK handshake"), e.getMessage());
        assertTrue(e.getMessage().contains("mallory"), e.getMessage());
    }

    @Test
    void missingKeysPskIsNamedAsQemuNamesIt() throws Exception {
        Path empty = Files.createDirectories(dir.resolve("empty"));
        pskObject("tls0", empty, "alice");
        BlockException e = assertThrows(BlockException.class, () -> openWithCreds(dir.resolve("none.sock"),
                "tls0", false));
        assertTrue(e.getMessage().endsWith("Unable to access credentials " + empty.resolve("keys.psk")
                + ": No such file or directory"), e.getMessage());
    }

    @Test
    void userMissingFromTheKeyFileIsNamedAsQemuNamesIt() throws Exception {
        Path k = keys(dir.resolve("k"), "alice");
        pskObject("tls0", k, null);
        BlockException e = assertThrows(BlockException.class, () -> openWithCreds(dir.resolve("none.sock"),
                "tls0", false));
        Peers.Result real = Peers.run(Peers.require("qemu-img", "qemu-utils"), "info", "--object",
                "tls-creds-psk,id=tls0,endpoint=client,dir=" + k, "nbd+unix:///?socket=" + dir.resolve("none.sock"));
        String expected = "Username qemu not found in PSK file " + k.resolve("keys.psk");
        assertTrue(real.out().contains(expected), "qemu-img says: " + real.out());
        assertTrue(e.getMessage().endsWith(expected), e.getMessage());
    }

    @Test
    void unknownOrUnfitCredentialIdsGetQemusMessages() throws Exception {
        Path k = keys(dir.resolve("k"), "alice");
        Path sock = dir.resolve("none.sock");
        BlockException unknown = assertThrows(BlockException.class, () -> openWithCreds(sock, "nope", false));
        assertTrue(unknown.getMessage().endsWith("No TLS credentials with id 'nope'"), unknown.getMessage());
        core.addObject(new UserObject("tls-creds-psk", "srv", Options.of("dir", k.toString(), "endpoint",
                "server")));
        BlockException server = assertThrows(BlockException.class, () -> openWithCreds(sock, "srv", false));
        assertTrue(server.getMessage().endsWith("Expected TLS credentials for a client endpoint"),
                server.getMessage());
        BlockException dup = assertThrows(BlockException.class, () -> core.addObject(new UserObject(
                "tls-creds-psk", "srv", Options.of("dir", k.toString()))));
        assertEquals("attempt to add duplicate property 'srv' to object (type 'container')", dup.getMessage());
    }

    @Test
    void x509CredentialsByObjectIdToo() throws Exception {
        Path creds = TlsDirs.x509(dir.resolve("tls"), "Test CA");
        Path sock = dir.resolve("x.sock");
        peers.qemuNbd(dir, "--object", "tls-creds-x509,id=tls0,endpoint=server,dir=" + creds + ",verify-peer=on",
                "--tls-creds=tls0", "-f", "raw", "--socket=" + sock, "-x", "disk", image().toString());
        core.addObject(new UserObject("tls-creds-x509", "c0", Options.of("dir", creds.toString(), "endpoint",
                "client")));
        assertEquals(4 << 20, openWithCreds(sock, "c0", false).size());
    }

    /** qemu-nbd restricted to one TLS version by QEMU's priority property: both must work. */
    @Test
    void pskWorksOverTls13AndTls12() throws Exception {
        Path k = keys(dir.resolve("k"), "alice");
        Path img = image();
        pskObject("tls0", k, "alice");
        for (String version : List.of("TLS1.3", "TLS1.2")) {
            Path sock = dir.resolve(version + ".sock");
            peers.qemuNbd(dir, "--object", "tls-creds-psk,id=tls0,endpoint=server,dir=" + k
                    + ",priority=NORMAL:-VERS-ALL:+VERS-" + version, "--tls-creds=tls0", "-f", "raw", "--socket="
                    + sock, "-x", "disk", img.toString());
            Image i = openWithCreds(sock, "tls0", false);
            byte[] expected = new byte[4096];
            Arrays.fill(expected, (byte) 0x5a);
            assertArrayEquals(expected, read(i, 1 << 20, 4096), version);
        }
    }
}
