package org.blockhaus.nbd.common;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.GeneralSecurityException;
import org.blockhaus.api.BlockException;

/**
 * The files of a tls-creds-x509 directory, checked in QEMU's order with its (and GnuTLS's)
 * words before they are loaded: first that each needed file is there (ca-cert.pem; a server's
 * server-cert.pem and server-key.pem), then that the CA list, the endpoint's certificate and its
 * key parse. A client's client-cert.pem and client-key.pem are optional.
 */
final class X509Files {
    private X509Files() {
    }

    static void check(Path dir, TlsCreds.Endpoint endpoint) throws BlockException {
        boolean server = endpoint == TlsCreds.Endpoint.SERVER;
        String side = server ? "server" : "client";
        Path ca = TlsCredentials.requireFile(dir.resolve("ca-cert.pem"));
        Path cert = dir.resolve(side + "-cert.pem");
        Path key = dir.resolve(side + "-key.pem");
        if (server) {
            TlsCredentials.requireFile(cert);
            TlsCredentials.requireFile(key);
        }
        try {
            TlsCredentials.certificates(ca);
        } catch (IOException | GeneralSecurityException e) {
            throw BlockException.invalid("Unable to import CA certificate list " + ca);
        }
        boolean hasCert = Files.exists(cert);
        if (hasCert) {
            try {
                TlsCredentials.certificates(cert);
            } catch (IOException | GeneralSecurityException e) {
                throw BlockException.invalid("Unable to import " + side + " certificate " + cert + ": "
                        + (pem(cert) ? "ASN1 parser: Error in DER parsing." : "Base64 unexpected header error."));
            }
        }
        if (hasCert && Files.exists(key)) {
            try {
                TlsCredentials.privateKey(key);
            } catch (IOException | GeneralSecurityException | IllegalArgumentException e) {
                throw BlockException.invalid("Cannot load certificate '" + cert + "' & key '" + key
                        + "': The requested data were not available.");
            }
        }
    }

    /** Whether the file has a PEM header at all (GnuTLS words the two failures differently). */
    private static boolean pem(Path p) {
        try {
            return Files.readString(p).contains("-----BEGIN ");
        } catch (IOException | RuntimeException e) {
            return false;
        }
    }
}
