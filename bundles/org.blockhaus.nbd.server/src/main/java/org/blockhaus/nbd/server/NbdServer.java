package org.blockhaus.nbd.server;

import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.net.UnixDomainSocketAddress;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Objects;
import org.blockhaus.api.BlockException;
import javax.net.ssl.SSLContext;
import org.blockhaus.nbd.common.PskCreds;
import org.blockhaus.nbd.common.TlsCreds;
import org.blockhaus.nbd.common.X509Creds;
import org.blockhaus.api.BlockNode;
import org.osgi.annotation.versioning.ProviderType;

/**
 * An NBD server (qemu-nbd's counterpart): exports block nodes by name on one listening address.
 * The server speaks the fixed newstyle handshake with NBD_OPT_GO/INFO, structured replies, the
 * base:allocation, qemu:allocation-depth and qemu:dirty-bitmap:NAME meta contexts, and optionally
 * TLS (X.509 or PSK). It never closes the nodes it serves; their owner does, after
 * {@link Running#close()}.
 */
@ProviderType
public interface NbdServer {
    /**
     * Starts serving {@code exports} on {@code address} (an {@link InetSocketAddress}, port 0 for
     * an ephemeral port, or a {@link UnixDomainSocketAddress}; a stale socket file is replaced).
     */
    Running start(List<Export> exports, SocketAddress address, Settings settings) throws BlockException;

    /** Serves one node under {@code exportName} with default settings. */
    default Running start(BlockNode node, String exportName, SocketAddress address, boolean readOnly)
            throws BlockException {
        return start(List.of(new Export(exportName, node, readOnly, null)), address, Settings.DEFAULT);
    }

    /** A server outside a framework (tests, plain Java). */
    static NbdServer standalone() {
        return new org.blockhaus.nbd.server.impl.NbdServerService();
    }

    /**
     * Parses qemu-nbd style addresses: {@code host:port}, {@code [v6]:port}, {@code unix:/path}
     * or an absolute path (a unix socket).
     */
    static SocketAddress parseAddress(String text) throws BlockException {
        if (text.startsWith("unix:")) {
            return UnixDomainSocketAddress.of(text.substring(5));
        }
        if (text.startsWith("/")) {
            return UnixDomainSocketAddress.of(text);
        }
        int colon = text.lastIndexOf(':');
        if (colon < 0) {
            return new InetSocketAddress(text, 10809);
        }
        String host = text.substring(0, colon);
        if (host.startsWith("[") && host.endsWith("]")) {
            host = host.substring(1, host.length() - 1);
        }
        try {
            return new InetSocketAddress(host, Integer.parseInt(text.substring(colon + 1)));
        } catch (IllegalArgumentException e) {
            throw BlockException.invalid("Invalid NBD server address '" + text + "'");
        }
    }

    /**
     * One export.
     *
     * @param name        the export name clients ask for ("" is a valid name)
     * @param node        what is served
     * @param readOnly    refuse writes (NBD_FLAG_READ_ONLY)
     * @param description shown by NBD_INFO_DESCRIPTION and NBD_OPT_LIST, or null
     * @param allocationDepth offer QEMU's qemu:allocation-depth meta context (qemu-nbd's -A)
     * @param bitmaps     persistent dirty bitmaps offered as {@code qemu:dirty-bitmap:NAME} meta
     *                    contexts (qemu-nbd's -B), listed in this order; each is looked up in
     *                    the node (an {@link org.blockhaus.api.Image} whose driver node is a
     *                    {@link org.blockhaus.api.spi.BitmapNode}, or such a node itself) and down
     *                    its backing chain when the server starts, which fails with qemu-nbd's
     *                    "Bitmap 'NAME' is not found" or "... is inconsistent and cannot be used"
     */
    record Export(String name, BlockNode node, boolean readOnly, String description, boolean allocationDepth,
            List<String> bitmaps) {
        /** An export that offers qemu:allocation-depth, as before -A existed. */
        public Export(String name, BlockNode node, boolean readOnly, String description) {
            this(name, node, readOnly, description, true);
        }

        /** An export without dirty bitmaps. */
        public Export(String name, BlockNode node, boolean readOnly, String description, boolean allocationDepth) {
            this(name, node, readOnly, description, allocationDepth, List.of());
        }

        public Export {
            Objects.requireNonNull(name, "name");
            Objects.requireNonNull(node, "node");
            bitmaps = List.copyOf(bitmaps);
            if (name.getBytes(java.nio.charset.StandardCharsets.UTF_8).length > 4096) {
                throw new IllegalArgumentException("export name longer than 4096 bytes");
            }
        }
    }

    /**
     * How the server behaves.
     *
     * @param maxClients        clients served at once (qemu-nbd's --shared), 0 = no limit;
     *                          further clients wait to be accepted
     * @param persistent        keep serving after the last client left (qemu-nbd's --persistent);
     *                          if false the server stops when its last client disconnects
     * @param maxInFlight       requests one client may have in flight before the server stops
     *                          reading from it
     * @param handshakeTimeout  clients that do not finish the handshake in time are dropped
     * @param tls               null for plain NBD; else server credentials (X.509 or PSK) and every
     *                          client must upgrade with NBD_OPT_STARTTLS first (the spec's FORCEDTLS mode)
     */
    record Settings(int maxClients, boolean persistent, int maxInFlight, Duration handshakeTimeout,
            TlsCreds tls) {
        public static final Settings DEFAULT = new Settings(0, true, 16, Duration.ofSeconds(10), null);

        public Settings {
            if (maxClients < 0 || maxInFlight < 1) {
                throw new IllegalArgumentException("maxClients >= 0 and maxInFlight >= 1 required");
            }
            Objects.requireNonNull(handshakeTimeout, "handshakeTimeout");
            if (tls != null && tls.endpoint() != TlsCreds.Endpoint.SERVER) {
                throw new IllegalArgumentException("Expected TLS credentials for a server endpoint");
            }
        }

        public Settings withMaxClients(int n) {
            return new Settings(n, persistent, maxInFlight, handshakeTimeout, tls);
        }

        public Settings withPersistent(boolean p) {
            return new Settings(maxClients, p, maxInFlight, handshakeTimeout, tls);
        }

        public Settings withHandshakeTimeout(Duration d) {
            return new Settings(maxClients, persistent, maxInFlight, d, tls);
        }

        public Settings withTls(TlsCreds creds) {
            return new Settings(maxClients, persistent, maxInFlight, handshakeTimeout, creds);
        }

        /**
         * X.509 from a JDK context; {@code verifyPeer} requires a client certificate signed by a
         * trusted CA (QEMU's verify-peer).
         */
        public Settings withTls(SSLContext context, boolean verifyPeer) {
            return withTls(new X509Creds(context, TlsCreds.Endpoint.SERVER, verifyPeer));
        }
    }

    /**
     * QEMU's tls-creds-psk with endpoint=server: every user in {@code dir/keys.psk}
     * ({@code username:hexkey} lines) may connect with its key.
     */
    static TlsCreds pskFromDirectory(Path dir) throws BlockException {
        return PskCreds.load(dir, TlsCreds.Endpoint.SERVER, null);
    }

    /**
     * QEMU's tls-creds-x509 with endpoint=server from {@code dir} (server-cert.pem, server-key.pem,
     * ca-cert.pem). With {@code verifyPeer} clients must present a certificate signed by
     * ca-cert.pem, over TLS 1.2 or 1.3 (this runs on Bouncy Castle's TLS; see nbd.common's
     * X509Creds).
     */
    static TlsCreds x509FromDirectory(Path dir, boolean verifyPeer) throws BlockException {
        return X509Creds.load(dir, TlsCreds.Endpoint.SERVER, verifyPeer);
    }

    /**
     * TLS credentials from a directory laid out as for QEMU's tls-creds-x509 (endpoint=server):
     * server-cert.pem, server-key.pem, and ca-cert.pem to verify client certificates.
     */
    static SSLContext tlsFromDirectory(Path dir) throws BlockException {
        return org.blockhaus.nbd.common.TlsCredentials.serverContext(dir);
    }

    /** A running server. */
    interface Running extends AutoCloseable {
        /** The bound address (with the real port when port 0 was asked for). */
        SocketAddress address();

        /** A URI for an export, as qemu-img and nbdinfo take it. */
        default String uri(String exportName) {
            SocketAddress a = address();
            if (a instanceof UnixDomainSocketAddress u) {
                return "nbd+unix:///" + exportName + "?socket=" + u.getPath();
            }
            InetSocketAddress i = (InetSocketAddress) a;
            String host = i.getAddress().getHostAddress();
            if (host.contains(":")) {
                host = "[" + host + "]";
            }
            return "nbd://" + host + ":" + i.getPort() + "/" + exportName;
        }

        /** Clients connected now. */
        int clients();

        boolean isRunning();

        /** Waits until the server stopped (after close, or after the last client when not persistent). */
        boolean awaitStop(Duration timeout) throws InterruptedException;

        /**
         * Stops accepting, lets requests in flight finish (bounded), disconnects every client,
         * flushes writable exports and removes a unix socket file.
         */
        @Override
        void close();
    }
}
