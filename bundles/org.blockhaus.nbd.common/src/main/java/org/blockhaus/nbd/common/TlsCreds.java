package org.blockhaus.nbd.common;

import java.io.IOException;
import java.nio.channels.SocketChannel;
import java.nio.file.Path;
import java.util.Locale;
import java.util.Set;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.Options;

/**
 * TLS credentials for NBD_OPT_STARTTLS, as QEMU's user-creatable objects {@code tls-creds-x509}
 * and {@code tls-creds-psk} define them: a directory of files, an endpoint (client or server)
 * and, for X.509, whether the peer's certificate is checked. One instance serves any number of
 * connections.
 */
public sealed interface TlsCreds permits X509Creds, PskCreds {
    /** Which end of a connection the credentials are for (QEMU's {@code endpoint=} property). */
    enum Endpoint {
        CLIENT, SERVER;

        public String qemuName() {
            return name().toLowerCase(Locale.ROOT);
        }
    }

    Endpoint endpoint();

    /**
     * Runs the TLS handshake on {@code ch} (NBD_OPT_STARTTLS was just acknowledged) and returns
     * the wire for everything after it.
     *
     * @param hostname a client's name for the server, checked against its certificate (X.509 with
     *                 verify-peer only); null for servers and unix sockets
     */
    Wire handshake(SocketChannel ch, String hostname, int port) throws IOException;

    /**
     * The {@code tls-creds-x509}/{@code tls-creds-psk} object type, for a core outside a
     * framework ({@code BlockCore.addObjectType}); inside one it is a service of this bundle.
     */
    static org.blockhaus.api.spi.ObjectType objectType() {
        return new org.blockhaus.nbd.common.impl.TlsObjectType();
    }

    /** The object types this class builds, by their QEMU names. */
    Set<String> QOM_TYPES = Set.of("tls-creds-x509", "tls-creds-psk");

    /**
     * Builds credentials from a QEMU object definition (the properties after qom-type and id),
     * loading its files now, as QEMU does when the object is created, so a missing or bad file is
     * reported before any connection is tried.
     */
    static TlsCreds fromObject(String qomType, Options properties) throws BlockException {
        if (!QOM_TYPES.contains(qomType)) {
            throw BlockException.invalid("Object type '" + qomType + "' is not TLS credentials");
        }
        Endpoint endpoint = switch (properties.get("endpoint", "client")) {
            case "client" -> Endpoint.CLIENT;
            case "server" -> Endpoint.SERVER;
            default -> throw BlockException.invalid("Parameter 'endpoint' does not accept value '"
                    + properties.get("endpoint") + "'");
        };
        String dir = properties.get("dir");
        if (dir == null) {
            throw BlockException.invalid("Missing 'dir' property value"); // qemu-img 7.2's words
        }
        boolean verifyPeer = properties.getBool("verify-peer", true);
        return switch (qomType) {
            case "tls-creds-x509" -> {
                X509Files.check(Path.of(dir), endpoint);
                yield X509Creds.load(Path.of(dir), endpoint, verifyPeer);
            }
            case "tls-creds-psk" -> PskCreds.load(Path.of(dir), endpoint, properties.get("username"));
            default -> throw BlockException.invalid("Object type '" + qomType + "' is not TLS credentials");
        };
    }
}
