package org.blockhaus.testkit;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * Credential directories with the mistakes people make (missing, empty, broken PEM, bad
 * keys.psk lines, a file for a directory), made with certtool and psktool, and the
 * {@code --object} definitions that point at them, with good ones among them.
 */
public final class TlsDirs {
    private TlsDirs() {
    }

    /**
     * QEMU's tls-creds-x509 directory as its documentation makes one with certtool: a CA named
     * {@code caName}, a server certificate for 127.0.0.1/localhost and a client certificate, each
     * with its key ({@code ca-cert.pem}, {@code server-cert.pem}, {@code server-key.pem},
     * {@code client-cert.pem}, {@code client-key.pem}). Needs certtool (gnutls-bin).
     */
    public static Path x509(Path d, String caName) throws Exception {
        Files.createDirectories(d);
        Files.writeString(d.resolve("ca.info"), "cn = " + caName + "\nca\ncert_signing_key\nexpiration_days = 30\n");
        Files.writeString(d.resolve("server.info"), "cn = 127.0.0.1\nip_address = 127.0.0.1\ndns_name = localhost\n"
                + "tls_www_server\nencryption_key\nsigning_key\nexpiration_days = 30\n");
        Files.writeString(d.resolve("client.info"), "cn = client\ntls_www_client\nencryption_key\nsigning_key\n"
                + "expiration_days = 30\n");
        run(d, "certtool", "--generate-privkey", "--outfile", "ca-key.pem");
        run(d, "certtool", "--generate-self-signed", "--load-privkey", "ca-key.pem", "--template", "ca.info",
                "--outfile", "ca-cert.pem");
        for (String who : List.of("server", "client")) {
            run(d, "certtool", "--generate-privkey", "--outfile", who + "-key.pem");
            run(d, "certtool", "--generate-certificate", "--load-privkey", who + "-key.pem",
                    "--load-ca-certificate", "ca-cert.pem", "--load-ca-privkey", "ca-key.pem", "--template",
                    who + ".info", "--outfile", who + "-cert.pem");
        }
        return d;
    }

    /** Makes the directories under {@code base}; needs certtool and psktool (gnutls-bin). */
    public static List<String> make(Path base) throws Exception {
        Path good = Files.createDirectories(base.resolve("x509"));
        run(good, "certtool", "--generate-privkey", "--outfile", "ca-key.pem");
        Files.writeString(good.resolve("ca.info"), "cn=ca\nca\ncert_signing_key\n");
        run(good, "certtool", "--generate-self-signed", "--load-privkey", "ca-key.pem", "--template", "ca.info",
                "--outfile", "ca-cert.pem");
        run(good, "certtool", "--generate-privkey", "--outfile", "server-key.pem");
        Files.writeString(good.resolve("s.info"), "cn=localhost\ntls_www_server\nencryption_key\nsigning_key\n");
        run(good, "certtool", "--generate-certificate", "--load-privkey", "server-key.pem",
                "--load-ca-certificate", "ca-cert.pem", "--load-ca-privkey", "ca-key.pem", "--template", "s.info",
                "--outfile", "server-cert.pem");
        Path noKey = copy(good, base.resolve("nokey"));
        Files.delete(noKey.resolve("server-key.pem"));
        Path noCert = copy(good, base.resolve("nocert"));
        Files.delete(noCert.resolve("server-cert.pem"));
        Path badCert = copy(good, base.resolve("badcert"));
        Files.writeString(badCert.resolve("server-cert.pem"), "junk\n");
        Path badKey = copy(good, base.resolve("badkey"));
        Files.writeString(badKey.resolve("server-key.pem"), "junk\n");
        Path badClient = copy(good, base.resolve("badcli"));
        Files.writeString(badClient.resolve("client-cert.pem"), "junk\n");
        Files.writeString(badClient.resolve("client-key.pem"), "junk\n");
        Path badCa = Files.createDirectories(base.resolve("badca"));
        Files.writeString(badCa.resolve("ca-cert.pem"), "not a pem\n");
        Path empty = Files.createDirectories(base.resolve("empty"));
        Path psk = Files.createDirectories(base.resolve("psk"));
        run(psk, "psktool", "-u", "alice", "-p", "keys.psk");
        Path badPsk = Files.createDirectories(base.resolve("badpsk"));
        Files.writeString(badPsk.resolve("keys.psk"), "alice:zz\nbob\n");
        Path file = Files.writeString(base.resolve("plainfile"), "x");
        Path missing = base.resolve("missing");
        List<String> defs = new ArrayList<>();
        for (String endpoint : List.of("client", "server")) {
            for (Path d : List.of(good, noKey, noCert, badCert, badKey, badClient, badCa, empty, missing, file)) {
                defs.add("tls-creds-x509,id=t0,endpoint=" + endpoint + ",dir=" + d);
            }
            for (Path d : List.of(psk, badPsk, empty, missing)) {
                defs.add("tls-creds-psk,id=t0,endpoint=" + endpoint + ",dir=" + d);
            }
        }
        defs.add("tls-creds-psk,id=t0,endpoint=client,username=alice,dir=" + psk);
        defs.add("tls-creds-psk,id=t0,endpoint=client,username=bob,dir=" + psk);
        defs.add("tls-creds-psk,id=t0,endpoint=client,username=alice,dir=" + badPsk);
        defs.add("tls-creds-psk,id=t0,endpoint=client,username=bob,dir=" + badPsk);
        defs.add("tls-creds-psk,id=t0,endpoint=server,username=alice,dir=" + empty);
        defs.add("tls-creds-psk,id=t0,endpoint=middle,dir=" + psk);
        defs.add("tls-creds-psk,id=t0,endpoint=bad,bogus=1");
        defs.add("tls-creds-psk,id=t0");
        defs.add("tls-creds-x509,id=t0,endpoint=server,dir=" + good + ",verify-peer=maybe");
        return defs;
    }

    private static void run(Path cwd, String tool, String... args) throws Exception {
        String[] cmd = new String[args.length + 1];
        cmd[0] = Peers.require(tool, "gnutls-bin");
        for (int i = 0; i < args.length; i++) {
            cmd[i + 1] = args[i].endsWith(".pem") || args[i].endsWith(".info") || args[i].equals("keys.psk")
                    ? cwd.resolve(args[i]).toString() : args[i];
        }
        Peers.check(cmd);
    }

    private static Path copy(Path from, Path to) throws Exception {
        Files.createDirectories(to);
        for (String f : List.of("ca-cert.pem", "server-cert.pem", "server-key.pem")) {
            Files.copy(from.resolve(f), to.resolve(f));
        }
        return to;
    }
}
