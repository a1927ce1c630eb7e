package org.blockhaus.nbd.common;

import java.io.IOException;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.SecureRandom;
import java.util.HexFormat;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import javax.net.ssl.SSLException;
import org.bouncycastle.tls.AlertDescription;
import org.bouncycastle.tls.BasicTlsPSKExternal;
import org.bouncycastle.tls.CipherSuite;
import org.bouncycastle.tls.PRFAlgorithm;
import org.bouncycastle.tls.ProtocolVersion;
import org.bouncycastle.tls.PSKTlsClient;
import org.bouncycastle.tls.PskIdentity;
import org.bouncycastle.tls.TlsPSKExternal;
import org.bouncycastle.tls.TlsUtils;
import org.bouncycastle.tls.crypto.TlsCrypto;
import org.bouncycastle.tls.TlsFatalAlert;
import org.bouncycastle.tls.TlsFatalAlertReceived;
import org.bouncycastle.tls.PSKTlsServer;
import org.bouncycastle.tls.TlsClientProtocol;
import org.bouncycastle.tls.TlsPSKIdentityManager;
import org.bouncycastle.tls.TlsServerProtocol;
import org.bouncycastle.tls.crypto.impl.bc.BcTlsCrypto;

/**
 * QEMU's tls-creds-psk: a pre-shared key per user name in {@code dir/keys.psk}, one
 * {@code username:hexkey} per line (psktool's format). A client proves it knows the key of one
 * user (default "qemu"); a server accepts every user in the file, reading it again for each
 * handshake as GnuTLS does, so keys can change while it runs.
 *
 * <p>The JDK's TLS has no PSK cipher suites, so this runs on Bouncy Castle's TLS stack (TLS 1.2,
 * ECDHE_PSK and DHE_PSK suites, which GnuTLS's PSK priority in QEMU and libnbd accepts).
 */
public record PskCreds(Endpoint endpoint, Path keyFile, String username, byte[] key) implements TlsCreds {
    public static final String DEFAULT_USERNAME = "qemu";
    /** keys.psk is small; a larger file is a mistake, not something to load. */
    private static final long MAX_KEY_FILE = 1 << 20;

    /** Loads {@code dir/keys.psk}; a client also looks up its user's key now (QEMU's messages). */
    public static PskCreds load(Path dir, Endpoint endpoint, String username) throws BlockException {
        return loadFile(dir.resolve("keys.psk"), endpoint, username);
    }

    /** As {@link #load} with the key file named directly (libnbd's tls-psk-file). */
    public static PskCreds loadFile(Path keyFile, Endpoint endpoint, String username) throws BlockException {
        if (endpoint == Endpoint.SERVER && username != null) {
            throw BlockException.invalid("username should not be set when endpoint=server"); // before the file, as QEMU
        }
        Path file = TlsCredentials.requireFile(keyFile);
        if (endpoint == Endpoint.SERVER) {
            readKeyFile(file); // fail now on a file that cannot be used
            return new PskCreds(endpoint, file, null, null);
        }
        String user = username == null ? DEFAULT_USERNAME : username;
        byte[] key = lookup(file, user);
        if (key == null) {
            throw new BlockException(Reason.NOT_FOUND, "Username " + user + " not found in PSK file " + file);
        }
        return new PskCreds(endpoint, file, user, key);
    }

    /** Client credentials from a key given directly (tests, libnbd's tls-psk-file form). */
    public static PskCreds client(String username, byte[] key) {
        return new PskCreds(Endpoint.CLIENT, null, username, key.clone());
    }

    private static String readKeyFile(Path file) throws BlockException {
        try {
            if (Files.size(file) > MAX_KEY_FILE) {
                throw BlockException.invalid("PSK file " + file + " is larger than " + MAX_KEY_FILE + " bytes");
            }
            return Files.readString(file, StandardCharsets.UTF_8);
        } catch (IOException e) {
            throw BlockException.io("Cannot read PSK file " + file + ": " + e.getMessage(), e);
        }
    }

    /** The key of {@code user}, or null when the file has no line for it. */
    static byte[] lookup(Path file, String user) throws BlockException {
        for (String line : readKeyFile(file).split("\n")) {
            if (line.startsWith(user + ":")) {
                String hex = line.substring(user.length() + 1).strip();
                try {
                    byte[] key = HexFormat.of().parseHex(hex);
                    if (key.length == 0) {
                        throw new IllegalArgumentException();
                    }
                    return key;
                } catch (IllegalArgumentException e) {
                    // GnuTLS's words, which QEMU passes on
                    throw BlockException.invalid("Cannot set PSK client credentials: Error in parsing.");
                }
            }
        }
        return null;
    }

    @Override
    public Wire handshake(SocketChannel ch, String hostname, int port) throws IOException {
        BcTlsCrypto crypto = new BcTlsCrypto(new SecureRandom());
        try {
            if (endpoint == Endpoint.CLIENT) {
                TlsClientProtocol protocol = new TlsClientProtocol(BcTlsWire.input(ch), BcTlsWire.output(ch));
                protocol.connect(new Client(crypto, username.getBytes(StandardCharsets.UTF_8), key));
                return new BcTlsWire(protocol);
            }
            TlsServerProtocol protocol = new TlsServerProtocol(BcTlsWire.input(ch), BcTlsWire.output(ch));
            protocol.accept(new Server(crypto, new KeyFile(keyFile)));
            return new BcTlsWire(protocol);
        } catch (TlsFatalAlertReceived e) {
            throw new SSLException("TLS-PSK handshake refused by the peer (alert " + e.getMessage() + ")"
                    + (endpoint == Endpoint.CLIENT ? hint(e.getAlertDescription()) : ""), e);
        } catch (TlsFatalAlert e) {
            throw new SSLException("TLS-PSK handshake failed: " + e.getMessage()
                    + (endpoint == Endpoint.CLIENT ? hint(e.getAlertDescription()) : ""), e);
        }
    }

    /** What a user can check when the server refuses: its key file must know our user and key. */
    private String hint(short alert) {
        return switch (alert) {
            case AlertDescription.unknown_psk_identity -> ": the server does not know user '" + username + "'";
            case AlertDescription.bad_record_mac, AlertDescription.decrypt_error, AlertDescription.handshake_failure
                    -> ": is the key of user '" + username + "' the one the server has?";
            default -> "";
        };
    }

    /**
     * TLS 1.3 suites (with an external PSK: psk_dhe_ke) before BC's TLS 1.2 PSK suites. Only the
     * SHA-256 ones: the PSK's binder hash is SHA-256 (as GnuTLS makes it) and a suite must use the
     * PSK's hash; BC's server would otherwise pick AES-256-GCM-SHA384 and the keys would differ.
     */
    private static int[] withTls13(TlsCrypto crypto, int[] tls12Suites) {
        int[] tls13 = {CipherSuite.TLS_AES_128_GCM_SHA256, CipherSuite.TLS_CHACHA20_POLY1305_SHA256};
        int[] all = java.util.stream.IntStream.concat(java.util.Arrays.stream(tls13),
                java.util.Arrays.stream(tls12Suites)).toArray();
        return TlsUtils.getSupportedCipherSuites(crypto, all);
    }

    /** The external PSK of TLS 1.3 for a user's key (SHA-256 binders, as GnuTLS makes them). */
    private static TlsPSKExternal external(TlsCrypto crypto, byte[] identity, byte[] key) {
        return new BasicTlsPSKExternal(identity, crypto.createSecret(key), PRFAlgorithm.tls13_hkdf_sha256);
    }

    /** A PSK client for TLS 1.3 (external PSK) and TLS 1.2 (PSK cipher suites). */
    private static final class Client extends PSKTlsClient {
        private final byte[] identity;
        private final byte[] key;

        Client(TlsCrypto crypto, byte[] identity, byte[] key) {
            super(crypto, identity, key);
            this.identity = identity;
            this.key = key;
        }

        @Override
        protected ProtocolVersion[] getSupportedVersions() {
            return ProtocolVersion.TLSv13.downTo(ProtocolVersion.TLSv12);
        }

        @Override
        protected int[] getSupportedCipherSuites() {
            return withTls13(getCrypto(), super.getSupportedCipherSuites());
        }

        @Override
        public java.util.Vector<TlsPSKExternal> getExternalPSKs() {
            java.util.Vector<TlsPSKExternal> v = new java.util.Vector<>();
            v.add(external(getCrypto(), identity, key));
            return v;
        }
    }

    /** A PSK server for TLS 1.3 (external PSKs from keys.psk) and TLS 1.2. */
    private static final class Server extends PSKTlsServer {
        private final KeyFile keys;

        Server(TlsCrypto crypto, KeyFile keys) {
            super(crypto, keys);
            this.keys = keys;
        }

        @Override
        protected ProtocolVersion[] getSupportedVersions() {
            return ProtocolVersion.TLSv13.downTo(ProtocolVersion.TLSv12);
        }

        @Override
        protected int[] getSupportedCipherSuites() {
            return withTls13(getCrypto(), super.getSupportedCipherSuites());
        }

        @Override
        public TlsPSKExternal getExternalPSK(java.util.Vector identities) {
            for (Object o : identities) {
                byte[] identity = ((PskIdentity) o).getIdentity();
                byte[] key = keys.getPSK(identity);
                if (key != null) {
                    return external(getCrypto(), identity, key);
                }
            }
            return null; // no user known: BC then refuses the handshake (no certificate to offer)
        }
    }

    /** The server's view of keys.psk: unknown users get no key (alert unknown_psk_identity). */
    private record KeyFile(Path file) implements TlsPSKIdentityManager {
        @Override
        public byte[] getHint() {
            return null;
        }

        @Override
        public byte[] getPSK(byte[] identity) {
            String user = new String(identity, StandardCharsets.UTF_8);
            if (user.isEmpty() || user.indexOf(':') >= 0 || user.indexOf('\n') >= 0) {
                return null;
            }
            try {
                return lookup(file, user);
            } catch (BlockException e) {
                return null;
            }
        }
    }

    @Override
    public String toString() {
        return "PskCreds[" + endpoint.qemuName() + (username == null ? "" : ", username=" + username)
                + (keyFile == null ? "" : ", " + keyFile) + "]"; // never the key
    }
}
