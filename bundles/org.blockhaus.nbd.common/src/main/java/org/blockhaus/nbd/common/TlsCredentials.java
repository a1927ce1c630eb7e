package org.blockhaus.nbd.common;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.GeneralSecurityException;
import java.security.KeyFactory;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.security.spec.PKCS8EncodedKeySpec;
import java.util.Base64;
import java.util.Collection;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManager;
import javax.net.ssl.TrustManagerFactory;
import javax.net.ssl.X509TrustManager;
import java.security.cert.X509Certificate;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;

/**
 * X.509 credentials in the directory layout of QEMU's tls-creds-x509 object. A client reads
 * ca-cert.pem (the CA that signed the server) and optionally client-cert.pem and client-key.pem
 * (for servers that verify their clients); a server reads server-cert.pem, server-key.pem and, to
 * verify clients, ca-cert.pem. Keys may be PKCS#8 or PKCS#1 RSA PEM, as certtool writes them.
 */
public final class TlsCredentials {
    private static final Pattern PEM = Pattern.compile("-----BEGIN ([A-Z ]+)-----([^-]+)-----END \\1-----");
    /** DER of AlgorithmIdentifier { rsaEncryption, NULL }. */
    private static final byte[] RSA_ALGORITHM = {0x30, 0x0d, 0x06, 0x09, 0x2a, (byte) 0x86, 0x48, (byte) 0x86,
        (byte) 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00};

    private TlsCredentials() {
    }

    /** ca-cert.pem checks the server; client-cert.pem and client-key.pem, if present, prove who we are. */
    public static SSLContext clientContext(Path dir) throws BlockException {
        return clientContext(dir, true);
    }

    /**
     * As {@link #clientContext(Path)}; without {@code verifyPeer} the server's certificate is
     * accepted unchecked (QEMU's verify-peer=off), though ca-cert.pem must exist as QEMU wants it.
     */
    public static SSLContext clientContext(Path dir, boolean verifyPeer) throws BlockException {
        Path ca = requireFile(dir.resolve("ca-cert.pem"));
        Path cert = dir.resolve("client-cert.pem");
        Path key = dir.resolve("client-key.pem");
        try {
            TrustManagerFactory tmf = trustIn(ca);
            KeyManagerFactory kmf = null;
            if (Files.exists(cert) && Files.exists(key)) {
                KeyStore ks = KeyStore.getInstance("PKCS12");
                ks.load(null, null);
                char[] pw = new char[0];
                ks.setKeyEntry("client", privateKey(key), pw, certificates(cert).toArray(Certificate[]::new));
                kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
                kmf.init(ks, pw);
            }
            SSLContext ctx = SSLContext.getInstance("TLS");
            ctx.init(kmf == null ? null : kmf.getKeyManagers(),
                    verifyPeer ? tmf.getTrustManagers() : new TrustManager[] {new UncheckedServer()}, null);
            return ctx;
        } catch (IOException e) {
            throw BlockException.io("Cannot read TLS credentials in '" + dir + "'", e);
        } catch (GeneralSecurityException e) {
            throw new BlockException(Reason.INVALID_ARGUMENT, "Invalid TLS credentials in '" + dir + "': "
                    + e.getMessage(), e);
        }
    }

    /** QEMU's message for a credentials file that is not there. */
    static Path requireFile(Path p) throws BlockException {
        try {
            Files.newByteChannel(p).close();
        } catch (java.nio.file.NoSuchFileException e) {
            throw missing(p, "No such file or directory");
        } catch (java.nio.file.AccessDeniedException e) {
            throw missing(p, "Permission denied");
        } catch (java.nio.file.FileSystemException e) {
            throw missing(p, e.getReason() == null ? "Input/output error" : e.getReason()); // "Not a directory"
        } catch (IOException e) {
            throw missing(p, String.valueOf(e.getMessage()));
        }
        if (Files.isDirectory(p)) {
            throw missing(p, "Is a directory");
        }
        return p;
    }

    private static BlockException missing(Path p, String why) {
        return new BlockException(Reason.NOT_FOUND, "Unable to access credentials " + p + ": " + why);
    }

    /** verify-peer=off on a client: any server certificate is taken. */
    private static final class UncheckedServer implements X509TrustManager {
        @Override
        public void checkClientTrusted(X509Certificate[] chain, String authType) {
            throw new UnsupportedOperationException("client-side trust manager");
        }

        @Override
        public void checkServerTrusted(X509Certificate[] chain, String authType) {
            // QEMU's verify-peer=off: the user chose not to check
        }

        @Override
        public X509Certificate[] getAcceptedIssuers() {
            return new X509Certificate[0];
        }
    }

    /** server-cert.pem and server-key.pem prove who we are; ca-cert.pem checks client certificates. */
    public static SSLContext serverContext(Path dir) throws BlockException {
        Path ca = requireFile(dir.resolve("ca-cert.pem"));
        Path cert = requireFile(dir.resolve("server-cert.pem"));
        Path key = requireFile(dir.resolve("server-key.pem"));
        try {
            KeyStore ks = KeyStore.getInstance("PKCS12");
            ks.load(null, null);
            char[] pw = new char[0];
            ks.setKeyEntry("server", privateKey(key), pw, certificates(cert).toArray(Certificate[]::new));
            KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
            kmf.init(ks, pw);
            TrustManagerFactory tmf = Files.exists(ca) ? trustIn(ca) : null;
            SSLContext ctx = SSLContext.getInstance("TLS");
            ctx.init(kmf.getKeyManagers(), tmf == null ? null : tmf.getTrustManagers(), null);
            return ctx;
        } catch (IOException e) {
            throw BlockException.io("Cannot read TLS credentials in '" + dir + "'", e);
        } catch (GeneralSecurityException e) {
            throw new BlockException(Reason.INVALID_ARGUMENT, "Invalid TLS credentials in '" + dir + "': "
                    + e.getMessage(), e);
        }
    }

    /** A server's key, its certificate chain and the trust manager for client certificates. */
    record ServerIdentity(PrivateKey key, X509Certificate[] chain, X509TrustManager trust) {
    }

    /** server-key.pem, server-cert.pem and ca-cert.pem (for client certificates), as for serverContext. */
    static ServerIdentity serverIdentity(Path dir) throws BlockException {
        Path ca = requireFile(dir.resolve("ca-cert.pem"));
        Path cert = requireFile(dir.resolve("server-cert.pem"));
        Path key = requireFile(dir.resolve("server-key.pem"));
        try {
            TrustManagerFactory tmf = trustIn(ca);
            X509TrustManager tm = null;
            for (TrustManager t : tmf.getTrustManagers()) {
                if (t instanceof X509TrustManager x) {
                    tm = x;
                }
            }
            if (tm == null) {
                throw new GeneralSecurityException("no X.509 trust manager");
            }
            X509Certificate[] chain = certificates(cert).stream().map(c -> (X509Certificate) c)
                    .toArray(X509Certificate[]::new);
            return new ServerIdentity(privateKey(key), chain, tm);
        } catch (IOException e) {
            throw BlockException.io("Cannot read TLS credentials in '" + dir + "'", e);
        } catch (GeneralSecurityException e) {
            throw new BlockException(Reason.INVALID_ARGUMENT, "Invalid TLS credentials in '" + dir + "': "
                    + e.getMessage(), e);
        }
    }

    /** A trust manager factory that trusts exactly the CA certificates in {@code ca} (a PEM file). */
    private static TrustManagerFactory trustIn(Path ca) throws IOException, GeneralSecurityException {
        KeyStore trust = KeyStore.getInstance("PKCS12");
        trust.load(null, null);
        int i = 0;
        for (Certificate c : certificates(ca)) {
            trust.setCertificateEntry("ca" + i++, c);
        }
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(trust);
        return tmf;
    }

    static Collection<? extends Certificate> certificates(Path pem) throws IOException, GeneralSecurityException {
        Collection<? extends Certificate> c = CertificateFactory.getInstance("X.509")
                .generateCertificates(new ByteArrayInputStream(Files.readAllBytes(pem)));
        if (c.isEmpty()) {
            throw new GeneralSecurityException("no certificate in " + pem);
        }
        return c;
    }

    static PrivateKey privateKey(Path pem) throws IOException, GeneralSecurityException {
        Matcher m = PEM.matcher(Files.readString(pem));
        while (m.find()) {
            byte[] der = Base64.getMimeDecoder().decode(m.group(2).trim());
            switch (m.group(1)) {
                case "PRIVATE KEY" -> {
                    for (String alg : new String[] {"RSA", "EC", "Ed25519", "Ed448"}) {
                        try {
                            return KeyFactory.getInstance(alg).generatePrivate(new PKCS8EncodedKeySpec(der));
                        } catch (GeneralSecurityException e) {
                            // try the next algorithm
                        }
                    }
                    throw new GeneralSecurityException("unsupported private key algorithm in " + pem);
                }
                case "RSA PRIVATE KEY" -> {
                    return KeyFactory.getInstance("RSA").generatePrivate(new PKCS8EncodedKeySpec(pkcs8FromPkcs1(der)));
                }
                default -> {
                    // certtool may put other blocks first; keep looking
                }
            }
        }
        throw new GeneralSecurityException("no PKCS#8 or RSA private key in " + pem
                + " (convert it with: certtool --to-p8 --null-password)");
    }

    /** PrivateKeyInfo { version 0, rsaEncryption, OCTET STRING pkcs1 }. */
    private static byte[] pkcs8FromPkcs1(byte[] pkcs1) {
        ByteArrayOutputStream body = new ByteArrayOutputStream();
        body.writeBytes(new byte[] {0x02, 0x01, 0x00});
        body.writeBytes(RSA_ALGORITHM);
        body.write(0x04);
        writeLength(body, pkcs1.length);
        body.writeBytes(pkcs1);
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        out.write(0x30);
        writeLength(out, body.size());
        out.writeBytes(body.toByteArray());
        return out.toByteArray();
    }

    private static void writeLength(ByteArrayOutputStream out, int len) {
        if (len < 0x80) {
            out.write(len);
        } else if (len < 0x100) {
            out.write(0x81);
            out.write(len);
        } else if (len < 0x10000) {
            out.write(0x82);
            out.write(len >> 8);
            out.write(len);
        } else {
            out.write(0x83);
            out.write(len >> 16);
            out.write(len >> 8);
            out.write(len);
        }
    }
}
