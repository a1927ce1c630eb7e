package org.blockhaus.nbd.common;

import java.io.IOException;
import java.nio.channels.SocketChannel;
import java.nio.file.Path;
import java.security.SecureRandom;
import java.util.Objects;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLEngine;
import javax.net.ssl.SSLParameters;
import org.blockhaus.api.BlockException;
import org.bouncycastle.tls.TlsServerProtocol;
import org.bouncycastle.tls.crypto.impl.jcajce.JcaTlsCrypto;
import org.bouncycastle.tls.crypto.impl.jcajce.JcaTlsCryptoProvider;

/**
 * QEMU's tls-creds-x509 (see {@link TlsCredentials} for the files). A client with verify-peer
 * checks the server's certificate against ca-cert.pem and its name against the host it connected
 * to; a server with verify-peer demands a client certificate signed by ca-cert.pem.
 *
 * <p>Clients and servers without verify-peer run on the JDK's TLS (1.2 and 1.3). A server with
 * verify-peer loaded from a directory runs on Bouncy Castle's TLS ({@link BcX509Server}), so that
 * GnuTLS clients with RSA keys present their certificate over TLS 1.3 too; one built from a bare
 * {@link SSLContext} stays on the JDK, limited to TLS 1.2 when it verifies peers.
 */
public final class X509Creds implements TlsCreds {
    private final SSLContext context;
    private final Endpoint endpoint;
    private final boolean verifyPeer;
    private final TlsCredentials.ServerIdentity identity; // verifying servers from a directory

    /** Credentials from a JDK context (no Bouncy Castle path; see the class comment). */
    public X509Creds(SSLContext context, Endpoint endpoint, boolean verifyPeer) {
        this(context, endpoint, verifyPeer, null);
    }

    private X509Creds(SSLContext context, Endpoint endpoint, boolean verifyPeer,
            TlsCredentials.ServerIdentity identity) {
        this.context = Objects.requireNonNull(context, "context");
        this.endpoint = Objects.requireNonNull(endpoint, "endpoint");
        this.verifyPeer = verifyPeer;
        this.identity = identity;
    }

    /** Loads the directory's files for {@code endpoint}; errors name the file, as QEMU's do. */
    public static X509Creds load(Path dir, Endpoint endpoint, boolean verifyPeer) throws BlockException {
        if (endpoint == Endpoint.CLIENT) {
            return new X509Creds(TlsCredentials.clientContext(dir, verifyPeer), endpoint, verifyPeer, null);
        }
        SSLContext ctx = TlsCredentials.serverContext(dir);
        return new X509Creds(ctx, endpoint, verifyPeer, verifyPeer ? TlsCredentials.serverIdentity(dir) : null);
    }

    public SSLContext context() {
        return context;
    }

    @Override
    public Endpoint endpoint() {
        return endpoint;
    }

    public boolean verifyPeer() {
        return verifyPeer;
    }

    @Override
    public Wire handshake(SocketChannel ch, String hostname, int port) throws IOException {
        if (identity != null) {
            JcaTlsCrypto crypto = (JcaTlsCrypto) new JcaTlsCryptoProvider().setProvider(BcProvider.INSTANCE)
                    .create(new SecureRandom());
            TlsServerProtocol protocol = new TlsServerProtocol(BcTlsWire.input(ch), BcTlsWire.output(ch));
            protocol.accept(new BcX509Server(crypto, identity.key(), identity.chain(), identity.trust()));
            return new BcTlsWire(protocol);
        }
        SSLEngine e;
        if (endpoint == Endpoint.CLIENT) {
            e = hostname == null ? context.createSSLEngine() : context.createSSLEngine(hostname, port);
            e.setUseClientMode(true);
            if (hostname != null && verifyPeer) {
                SSLParameters p = e.getSSLParameters();
                p.setEndpointIdentificationAlgorithm("HTTPS");
                e.setSSLParameters(p);
            }
        } else {
            e = context.createSSLEngine();
            e.setUseClientMode(false);
            if (verifyPeer) {
                e.setNeedClientAuth(true);
                // GnuTLS clients with RSA keys answer the JDK's TLS 1.3 CertificateRequest with an
                // empty chain (see BcX509Server); with TLS 1.2 they present their certificate.
                e.setEnabledProtocols(new String[] {"TLSv1.2"});
            }
        }
        return TlsWire.handshake(ch, e);
    }

    /**
     * Bouncy Castle's JCA provider, used as an instance (not installed in the JVM): the JDK has
     * no "SHA256withRSASSA-PSS" by the name BC's TLS asks for. Made once, on first use.
     */
    private static final class BcProvider {
        static final java.security.Provider INSTANCE = new org.bouncycastle.jce.provider.BouncyCastleProvider();
    }

    @Override
    public String toString() {
        return "X509Creds[" + endpoint.qemuName() + ", verify-peer=" + (verifyPeer ? "on" : "off") + "]";
    }
}
