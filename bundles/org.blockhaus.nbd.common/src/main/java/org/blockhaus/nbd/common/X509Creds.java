package org.blockhaus.nbd.common;

import java.io.IOException;
import java.nio.channels.SocketChannel;
import java.nio.file.Path;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLEngine;
import javax.net.ssl.SSLParameters;
import org.blockhaus.api.BlockException;

/**
 * QEMU's tls-creds-x509 on the JDK's TLS (see {@link TlsCredentials} for the files). A client
 * with verify-peer checks the server's certificate against ca-cert.pem and its name against the
 * host it connected to; a server with verify-peer demands a client certificate signed by
 * ca-cert.pem.
 */
public record X509Creds(SSLContext context, Endpoint endpoint, boolean verifyPeer) implements TlsCreds {

    /** Loads the directory's files for {@code endpoint}; errors name the file, as QEMU's do. */
    public static X509Creds load(Path dir, Endpoint endpoint, boolean verifyPeer) throws BlockException {
        SSLContext ctx = endpoint == Endpoint.CLIENT ? TlsCredentials.clientContext(dir, verifyPeer)
                : TlsCredentials.serverContext(dir);
        return new X509Creds(ctx, endpoint, verifyPeer);
    }

    @Override
    public Wire handshake(SocketChannel ch, String hostname, int port) throws IOException {
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
                // GnuTLS clients (qemu, libnbd) answer the JDK's TLS 1.3 CertificateRequest with an
                // empty chain; with TLS 1.2 they present their certificate.
                e.setEnabledProtocols(new String[] {"TLSv1.2"});
            }
        }
        return TlsWire.handshake(ch, e);
    }
}
