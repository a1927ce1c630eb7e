package org.blockhaus.nbd.common;

import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.security.PrivateKey;
import java.security.cert.CertificateException;
import java.security.cert.CertificateFactory;
import java.security.cert.X509Certificate;
import java.security.interfaces.ECKey;
import java.util.Vector;
import javax.net.ssl.X509TrustManager;
import org.bouncycastle.asn1.x500.X500Name;
import org.bouncycastle.tls.AlertDescription;
import org.bouncycastle.tls.Certificate;
import org.bouncycastle.tls.CertificateEntry;
import org.bouncycastle.tls.CertificateRequest;
import org.bouncycastle.tls.CipherSuite;
import org.bouncycastle.tls.ClientCertificateType;
import org.bouncycastle.tls.DefaultTlsServer;
import org.bouncycastle.tls.HashAlgorithm;
import org.bouncycastle.tls.ProtocolVersion;
import org.bouncycastle.tls.SignatureAlgorithm;
import org.bouncycastle.tls.SignatureAndHashAlgorithm;
import org.bouncycastle.tls.TlsCredentials;
import org.bouncycastle.tls.TlsFatalAlert;
import org.bouncycastle.tls.TlsUtils;
import org.bouncycastle.tls.crypto.TlsCertificate;
import org.bouncycastle.tls.crypto.TlsCryptoParameters;
import org.bouncycastle.tls.crypto.impl.jcajce.JcaDefaultTlsCredentialedSigner;
import org.bouncycastle.tls.crypto.impl.jcajce.JcaTlsCrypto;

/**
 * An X.509 server that demands client certificates (QEMU's verify-peer=on), on Bouncy Castle's
 * TLS so that TLS 1.3 works with GnuTLS clients holding RSA keys: its CertificateRequest lists
 * rsa_pkcs1 schemes in signature_algorithms next to RSA-PSS (RFC 8446 4.2.3 allows it "for
 * backward compatibility"). GnuTLS 3.7 chooses its client certificate by the key types those
 * schemes imply; the JDK's request names RSA-PSS only, so GnuTLS finds no match for a plain RSA
 * key and sends none. The client's chain is checked with the JDK's PKIX trust manager.
 */
final class BcX509Server extends DefaultTlsServer {
    /** What we accept from clients, in order of preference. */
    private static final SignatureAndHashAlgorithm[] ACCEPTED = {
        SignatureAndHashAlgorithm.rsa_pss_rsae_sha256, SignatureAndHashAlgorithm.rsa_pss_rsae_sha384,
        SignatureAndHashAlgorithm.rsa_pss_rsae_sha512,
        new SignatureAndHashAlgorithm(HashAlgorithm.sha256, SignatureAlgorithm.ecdsa),
        new SignatureAndHashAlgorithm(HashAlgorithm.sha384, SignatureAlgorithm.ecdsa),
        new SignatureAndHashAlgorithm(HashAlgorithm.sha512, SignatureAlgorithm.ecdsa), SignatureAndHashAlgorithm.ed25519,
        SignatureAndHashAlgorithm.ed448,
        new SignatureAndHashAlgorithm(HashAlgorithm.sha256, SignatureAlgorithm.rsa),
        new SignatureAndHashAlgorithm(HashAlgorithm.sha384, SignatureAlgorithm.rsa),
        new SignatureAndHashAlgorithm(HashAlgorithm.sha512, SignatureAlgorithm.rsa),
    };
    private static final int[] ECDSA_SUITES = {
        CipherSuite.TLS_CHACHA20_POLY1305_SHA256, CipherSuite.TLS_AES_256_GCM_SHA384,
        CipherSuite.TLS_AES_128_GCM_SHA256, CipherSuite.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    };

    private final JcaTlsCrypto crypto;
    private final PrivateKey key;
    private final X509Certificate[] chain;
    private final X509TrustManager trust;

    BcX509Server(JcaTlsCrypto crypto, PrivateKey key, X509Certificate[] chain, X509TrustManager trust) {
        super(crypto);
        this.crypto = crypto;
        this.key = key;
        this.chain = chain;
        this.trust = trust;
    }

    private boolean ecKey() {
        return key instanceof ECKey;
    }

    @Override
    protected ProtocolVersion[] getSupportedVersions() {
        return ProtocolVersion.TLSv13.downTo(ProtocolVersion.TLSv12);
    }

    @Override
    protected int[] getSupportedCipherSuites() {
        return ecKey() ? TlsUtils.getSupportedCipherSuites(crypto, ECDSA_SUITES) : super.getSupportedCipherSuites();
    }

    @Override
    public TlsCredentials getCredentials() throws IOException {
        boolean tls13 = TlsUtils.isTLSv13(context);
        Vector<?> offered = context.getSecurityParametersHandshake().getClientSigAlgs();
        SignatureAndHashAlgorithm alg = null;
        for (SignatureAndHashAlgorithm a : ACCEPTED) {
            boolean fits = ecKey() ? a.getSignature() == SignatureAlgorithm.ecdsa
                    : a.getSignature() == SignatureAlgorithm.rsa_pss_rsae_sha256
                    || a.getSignature() == SignatureAlgorithm.rsa_pss_rsae_sha384
                    || a.getSignature() == SignatureAlgorithm.rsa_pss_rsae_sha512
                    || !tls13 && a.getSignature() == SignatureAlgorithm.rsa;
            if (fits && (offered == null || offered.contains(a))) {
                alg = a;
                break;
            }
        }
        if (alg == null) {
            throw new TlsFatalAlert(AlertDescription.handshake_failure, "no signature scheme in common");
        }
        TlsCertificate[] certs = new TlsCertificate[chain.length];
        for (int i = 0; i < chain.length; i++) {
            try {
                certs[i] = crypto.createCertificate(chain[i].getEncoded());
            } catch (java.security.cert.CertificateEncodingException e) {
                throw new TlsFatalAlert(AlertDescription.internal_error, e);
            }
        }
        Certificate certificate;
        if (tls13) {
            CertificateEntry[] entries = new CertificateEntry[certs.length];
            for (int i = 0; i < certs.length; i++) {
                entries[i] = new CertificateEntry(certs[i], null);
            }
            certificate = new Certificate(TlsUtils.EMPTY_BYTES, entries);
        } else {
            certificate = new Certificate(certs);
        }
        return new JcaDefaultTlsCredentialedSigner(new TlsCryptoParameters(context), crypto, key, certificate, alg);
    }

    @Override
    public CertificateRequest getCertificateRequest() throws IOException {
        Vector<SignatureAndHashAlgorithm> algs = new Vector<>(java.util.List.of(ACCEPTED));
        Vector<X500Name> cas = new Vector<>();
        for (X509Certificate ca : trust.getAcceptedIssuers()) {
            cas.add(X500Name.getInstance(ca.getSubjectX500Principal().getEncoded()));
        }
        if (TlsUtils.isTLSv13(context)) {
            return new CertificateRequest(TlsUtils.EMPTY_BYTES, algs, null, cas);
        }
        return new CertificateRequest(new short[] {ClientCertificateType.rsa_sign, ClientCertificateType.ecdsa_sign},
                algs, cas);
    }

    @Override
    public void notifyClientCertificate(Certificate clientCertificate) throws IOException {
        if (clientCertificate == null || clientCertificate.isEmpty()) {
            throw new TlsFatalAlert(TlsUtils.isTLSv13(context) ? AlertDescription.certificate_required
                    : AlertDescription.handshake_failure, "the client sent no certificate (verify-peer is on)");
        }
        X509Certificate[] peer = new X509Certificate[clientCertificate.getLength()];
        try {
            CertificateFactory cf = CertificateFactory.getInstance("X.509");
            for (int i = 0; i < peer.length; i++) {
                peer[i] = (X509Certificate) cf.generateCertificate(new ByteArrayInputStream(
                        clientCertificate.getCertificateAt(i).getEncoded()));
            }
            trust.checkClientTrusted(peer, peer[0].getPublicKey().getAlgorithm());
        } catch (CertificateException e) {
            throw new TlsFatalAlert(AlertDescription.bad_certificate, "client certificate refused: "
                    + e.getMessage(), e);
        }
    }
}
