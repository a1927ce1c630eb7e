package org.blockhaus.protocol.nbd;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import org.blockhaus.api.BlockException;
import org.blockhaus.api.Options;
import org.junit.jupiter.api.Test;

/** Every filename form QEMU's nbd driver accepts turns into the same dotted options. */
class NbdFilenameTest {
    private final NbdDriver driver = new NbdDriver();

    private Options parse(String f) throws BlockException {
        return driver.parseFilename(f);
    }

    @Test
    void parsesTcpUriWithPortAndExport() throws Exception {
        assertEquals(Options.of("server.type", "inet", "server.host", "127.0.0.1", "server.port", "10810",
                "export", "disk"), parse("nbd://127.0.0.1:10810/disk"));
    }

    @Test
    void tcpUriDefaultsToPort10809AndEmptyExport() throws Exception {
        Options o = parse("nbd://localhost");
        assertEquals("10809", o.get("server.port"));
        assertEquals(null, o.get("export"));
        assertEquals("localhost", parse("nbd+tcp://localhost/").get("server.host"));
    }

    @Test
    void parsesIpv6Uri() throws Exception {
        Options o = parse("nbd://[::1]:7000/e");
        assertEquals("::1", o.get("server.host"));
        assertEquals("7000", o.get("server.port"));
    }

    @Test
    void parsesUnixUri() throws Exception {
        assertEquals(Options.of("server.type", "unix", "server.path", "/tmp/x y.sock", "export", "e"),
                parse("nbd+unix:///e?socket=/tmp/x%20y.sock"));
    }

    @Test
    void exportNameKeepsSlashesAndDecodesPercent() throws Exception {
        assertEquals("a/b c", parse("nbd://h/a/b%20c").get("export"));
    }

    @Test
    void rejectsUnixUriWithoutSocketOrWithHost() {
        assertThrows(BlockException.class, () -> parse("nbd+unix:///e"));
        assertThrows(BlockException.class, () -> parse("nbd+unix://host/e?socket=/s"));
        assertThrows(BlockException.class, () -> parse("nbd+unix:///e?socket=/s&foo=1"));
    }

    @Test
    void rejectsQueryOnTcpUri() {
        assertThrows(BlockException.class, () -> parse("nbd://h/e?socket=/s"));
    }

    @Test
    void tlsSchemesAskForTlsAndTakeLibnbdsCertificateParameter() throws Exception {
        assertEquals(Options.of("server.type", "inet", "server.host", "h", "server.port", "10809", "x-tls", "on",
                "export", "e"), parse("nbds://h/e"));
        Options o = parse("nbds+unix:///e?socket=/s&tls-certificates=/etc/pki/qemu");
        assertEquals("/s", o.get("server.path"));
        assertEquals("/etc/pki/qemu", o.get("x-tls-creds-dir"));
        assertThrows(BlockException.class, () -> parse("nbd://h/e?tls-certificates=/x"));
    }

    @Test
    void parsesLegacyHostPortForm() throws Exception {
        assertEquals(Options.of("server.type", "inet", "server.host", "example.org", "server.port", "10811"),
                parse("nbd:example.org:10811"));
        assertEquals(Options.of("server.type", "inet", "server.host", "127.0.0.1", "server.port", "10809",
                "export", "my:disk"), parse("nbd:127.0.0.1:10809:exportname=my:disk"));
        assertEquals("::1", parse("nbd:[::1]:10809").get("server.host"));
    }

    @Test
    void parsesLegacyUnixForm() throws Exception {
        assertEquals(Options.of("server.type", "unix", "server.path", "/run/n.sock", "export", "e"),
                parse("nbd:unix:/run/n.sock:exportname=e"));
        assertEquals(Options.of("server.type", "unix", "server.path", "/run/n.sock"), parse("nbd:unix:/run/n.sock"));
    }

    @Test
    void rejectsBadPorts() {
        assertThrows(BlockException.class, () -> parse("nbd:h:99999"));
        assertThrows(BlockException.class, () -> parse("nbd:h:port"));
    }

    @Test
    void addressComesFromServerOptionsOrLegacyKeys() throws Exception {
        assertEquals(new NbdConnection.Address("h", 1234, null),
                NbdDriver.address(Options.of("server.type", "inet", "server.host", "h", "server.port", "1234")));
        assertEquals(new NbdConnection.Address(null, 0, "/s"), NbdDriver.address(Options.of("path", "/s")));
        assertEquals(new NbdConnection.Address("h", 10809, null), NbdDriver.address(Options.of("host", "h")));
        assertThrows(BlockException.class, () -> NbdDriver.address(Options.of("server.type", "vsock")));
        assertThrows(BlockException.class, () -> NbdDriver.address(Options.empty()));
    }

    @Test
    void descriptorListsQemusSchemesAndLegacyPrefix() {
        assertEquals(java.util.List.of("nbd", "nbd+tcp", "nbd+unix", "nbds", "nbds+tcp", "nbds+unix", "nbd:"),
                driver.descriptor().protocols());
    }
}
