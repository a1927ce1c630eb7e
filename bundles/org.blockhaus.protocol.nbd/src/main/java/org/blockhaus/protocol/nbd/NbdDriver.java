/*
 * The "nbd" protocol driver: a client of the Network Block Device protocol, as QEMU's
 * block/nbd.c is. It opens an export of an NBD server (qemu-nbd, nbdkit, nbd-server, our own
 * org.blockhaus.nbd.server) over TCP or a unix socket and turns every node operation into NBD
 * requests.
 *
 * Specs: the NBD protocol is doc/proto.md of the NetworkBlockDevice/nbd project; QEMU's
 * additions and its filename forms are docs/interop/nbd.rst and QEMU's block/nbd.c behaviour
 * (nbd://host[:port]/export, nbd+unix:///export?socket=path, nbd:host:port[:exportname=e],
 * nbd:unix:path[:exportname=e]).
 */
package org.blockhaus.protocol.nbd;

import org.blockhaus.nbd.common.Nbd;
import org.blockhaus.nbd.common.PskCreds;
import org.blockhaus.nbd.common.TlsCreds;
import org.blockhaus.nbd.common.X509Creds;
import java.net.URI;
import java.net.URISyntaxException;
import java.time.Duration;
import java.util.List;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.Options;
import org.blockhaus.api.spi.BlockDriver;
import org.blockhaus.api.spi.DriverDescriptor;
import org.blockhaus.api.spi.OpenContext;
import org.blockhaus.api.spi.OptionSpec;
import org.blockhaus.api.spi.OptionSpec.OptionType;
import org.blockhaus.api.spi.UserObject;
import org.osgi.service.component.annotations.Component;

@Component(service = BlockDriver.class, property = {"blk.driver=nbd", "blk.kind=protocol"})
public final class NbdDriver implements BlockDriver {
    /** The URI schemes QEMU's nbd driver accepts, and its legacy prefix. */
    static final List<String> PROTOCOLS = List.of("nbd", "nbd+tcp", "nbd+unix", "nbds", "nbds+tcp", "nbds+unix",
            "nbd:");

    static final String DEFAULT_TIMEOUT_SECONDS = "30";
    static final String DEFAULT_REQUEST_TIMEOUT_SECONDS = "300";

    private static final DriverDescriptor DESCRIPTOR = new DriverDescriptor("nbd", DriverDescriptor.Kind.PROTOCOL,
            "Network Block Device client (NBD protocol, fixed newstyle, structured replies)", PROTOCOLS,
            List.of(
                    OptionSpec.choice("server.type", "inet", "Address type of the NBD server", "inet", "unix"),
                    OptionSpec.of("server.host", OptionType.STRING, "Host name or IP address of the NBD server"),
                    OptionSpec.of("server.port", OptionType.STRING, "10809", "TCP port of the NBD server"),
                    OptionSpec.of("server.path", OptionType.STRING, "Unix socket path of the NBD server"),
                    OptionSpec.of("host", OptionType.STRING, "Legacy spelling of server.host"),
                    OptionSpec.of("port", OptionType.STRING, "Legacy spelling of server.port"),
                    OptionSpec.of("path", OptionType.STRING, "Legacy spelling of server.path"),
                    OptionSpec.of("export", OptionType.STRING, "", "Name of the NBD export to open"),
                    OptionSpec.of("tls-creds", OptionType.STRING, "ID of the TLS credentials to use (an --object"
                            + " tls-creds-x509 or tls-creds-psk with endpoint=client)"),
                    OptionSpec.of("tls-hostname", OptionType.STRING, "Host name to check the server certificate"
                            + " against (default: server.host)"),
                    OptionSpec.of("x-tls-creds-dir", OptionType.STRING, "Blockhaus: directory with ca-cert.pem and"
                            + " optionally client-cert.pem and client-key.pem; enables TLS (NBD_OPT_STARTTLS)"),
                    OptionSpec.of("x-tls-psk-file", OptionType.STRING, "Blockhaus: PSK key file (username:hexkey"
                            + " lines, as libnbd's tls-psk-file); enables TLS-PSK"),
                    OptionSpec.of("tls-username", OptionType.STRING, "Blockhaus: user name for x-tls-psk-file"
                            + " (libnbd's tls-username; default: the login name)"),
                    OptionSpec.of("x-tls", OptionType.BOOL, "off", "Blockhaus: require TLS (set by nbds:// URIs)"),
                    OptionSpec.of("reconnect-delay", OptionType.NUMBER, "0", "Seconds requests wait for a"
                            + " lost connection to come back (the client reconnects in the background and"
                            + " resends them); later requests fail until it is back. 0: no reconnecting"),
                    OptionSpec.of("open-timeout", OptionType.NUMBER, "0", "Seconds to keep trying to connect"
                            + " when opening (0: one attempt)"),
                    OptionSpec.of("x-dirty-bitmap", OptionType.STRING, "Meta context to report as block status"
                            + " instead of base:allocation (qemu:allocation-depth, qemu:dirty-bitmap:NAME); its"
                            + " bits read as hole (1) and zero (2): for map only, never for copying"),
                    OptionSpec.of("x-multi-conn", OptionType.NUMBER, "1", "Blockhaus: connections to open when"
                            + " the server allows several (NBD_FLAG_CAN_MULTI_CONN); requests are spread over them"),
                    OptionSpec.of("x-timeout", OptionType.NUMBER, DEFAULT_TIMEOUT_SECONDS, "Blockhaus: seconds"
                            + " allowed for connect and handshake before giving up"),
                    OptionSpec.of("x-request-timeout", OptionType.NUMBER, DEFAULT_REQUEST_TIMEOUT_SECONDS,
                            "Blockhaus: seconds one request may wait for its reply before the connection is"
                            + " considered dead (0 = wait forever, as QEMU does)")),
            List.of());

    @Override
    public DriverDescriptor descriptor() {
        return DESCRIPTOR;
    }

    /**
     * Turns QEMU's NBD filename forms into dotted options: server.type, server.host,
     * server.port, server.path and export.
     */
    @Override
    public Options parseFilename(String filename) throws BlockException {
        if (filename.contains("://")) {
            return parseUri(filename);
        }
        if (!filename.startsWith("nbd:")) {
            throw BlockException.invalid("Not an NBD filename: '" + filename + "'");
        }
        String rest = filename.substring(4);
        String export = null;
        int ex = rest.indexOf(":exportname=");
        if (ex >= 0) {
            export = rest.substring(ex + ":exportname=".length());
            rest = rest.substring(0, ex);
        }
        Options o;
        if (rest.startsWith("unix:")) {
            String path = rest.substring(5);
            if (path.isEmpty()) {
                throw BlockException.invalid("NBD filename '" + filename + "' names no unix socket path");
            }
            o = Options.of("server.type", "unix", "server.path", path);
        } else {
            String host;
            String port = String.valueOf(Nbd.DEFAULT_PORT);
            if (rest.startsWith("[")) {
                int close = rest.indexOf(']');
                if (close < 0) {
                    throw BlockException.invalid("NBD filename '" + filename + "': unterminated '[' in host");
                }
                host = rest.substring(1, close);
                String after = rest.substring(close + 1);
                if (after.startsWith(":")) {
                    port = after.substring(1);
                } else if (!after.isEmpty()) {
                    throw BlockException.invalid("NBD filename '" + filename + "': expected ':port' after ']'");
                }
            } else {
                int colon = rest.lastIndexOf(':');
                host = colon < 0 ? rest : rest.substring(0, colon);
                if (colon >= 0) {
                    port = rest.substring(colon + 1);
                }
            }
            if (host.isEmpty()) {
                throw BlockException.invalid("NBD filename '" + filename + "' names no host");
            }
            checkPort(port, filename);
            o = Options.of("server.type", "inet", "server.host", host, "server.port", port);
        }
        return export == null ? o : o.with("export", export);
    }

    private static Options parseUri(String filename) throws BlockException {
        URI uri;
        try {
            uri = new URI(filename);
        } catch (URISyntaxException e) {
            throw BlockException.invalid("Invalid NBD URI '" + filename + "': " + e.getMessage());
        }
        String scheme = uri.getScheme() == null ? "" : uri.getScheme().toLowerCase(java.util.Locale.ROOT);
        boolean unix;
        switch (scheme) {
            case "nbd", "nbd+tcp" -> unix = false;
            case "nbd+unix" -> unix = true;
            case "nbds", "nbds+tcp" -> unix = false;
            case "nbds+unix" -> unix = true;
            default -> throw BlockException.invalid("Invalid NBD URI scheme in '" + filename + "'");
        }
        String path = uri.getPath() == null ? "" : uri.getPath();
        String export = path.startsWith("/") ? path.substring(1) : path;
        boolean tls = scheme.startsWith("nbds");
        String socket = null;
        String certificates = null;
        String pskFile = null;
        // libnbd: nbds://alice@host/... and nbds+unix://alice@/... (a bare "alice@" authority has no host)
        String authority = uri.getRawAuthority();
        String username = tls && authority != null && authority.contains("@") ? java.net.URLDecoder.decode(
                authority.substring(0, authority.lastIndexOf('@')), java.nio.charset.StandardCharsets.UTF_8) : null;
        String query = uri.getRawQuery();
        if (query != null) {
            for (String param : query.split("&")) {
                int eq = param.indexOf('=');
                String key = eq < 0 ? param : param.substring(0, eq);
                String value = eq < 0 ? null : java.net.URLDecoder.decode(param.substring(eq + 1),
                        java.nio.charset.StandardCharsets.UTF_8);
                if (key.equals("socket") && unix && value != null) {
                    socket = value;
                } else if (key.equals("tls-certificates") && tls && value != null) {
                    certificates = value; // libnbd's spelling, so nbdinfo's URIs work here too
                } else if (key.equals("tls-psk-file") && tls && value != null) {
                    pskFile = value;
                } else if (key.equals("tls-username") && tls && value != null) {
                    username = value;
                } else {
                    throw BlockException.invalid("NBD URI '" + filename + "': unexpected parameter '" + key + "'");
                }
            }
        }
        Options o;
        if (unix) {
            if (uri.getHost() != null || uri.getPort() != -1) {
                throw BlockException.invalid("NBD URI '" + filename + "': nbd+unix:// takes no host or port");
            }
            if (socket == null || socket.isEmpty()) {
                throw BlockException.invalid("NBD URI '" + filename + "' needs ?socket=<path> for nbd+unix://");
            }
            o = Options.of("server.type", "unix", "server.path", socket);
        } else {
            String host = uri.getHost();
            if (host == null || host.isEmpty()) {
                throw BlockException.invalid("NBD URI '" + filename + "' names no host");
            }
            if (host.startsWith("[") && host.endsWith("]")) {
                host = host.substring(1, host.length() - 1);
            }
            int port = uri.getPort() == -1 ? Nbd.DEFAULT_PORT : uri.getPort();
            o = Options.of("server.type", "inet", "server.host", host, "server.port", String.valueOf(port));
        }
        if (tls) {
            o = o.with("x-tls", "on");
            if (certificates != null) {
                o = o.with("x-tls-creds-dir", certificates);
            }
            if (pskFile != null) {
                o = o.with("x-tls-psk-file", pskFile);
            }
            if (username != null) {
                o = o.with("tls-username", username);
            }
        }
        return export.isEmpty() ? o : o.with("export", export);
    }

    private static int checkPort(String port, String where) throws BlockException {
        try {
            int p = Integer.parseInt(port);
            if (p < 0 || p > 65535) {
                throw new NumberFormatException();
            }
            return p;
        } catch (NumberFormatException e) {
            throw BlockException.invalid("Invalid NBD port '" + port + "' in '" + where + "'");
        }
    }

    /** The server address from server.* (or the legacy host/port/path) options. */
    static NbdConnection.Address address(Options o) throws BlockException {
        Options server = o.subtree("server");
        String path = server.get("path", o.get("path"));
        String host = server.get("host", o.get("host"));
        String type = server.get("type", path != null && host == null ? "unix" : "inet");
        switch (type) {
            case "unix" -> {
                if (path == null || path.isEmpty()) {
                    throw BlockException.invalid("NBD server address of type 'unix' needs server.path");
                }
                return new NbdConnection.Address(null, 0, path);
            }
            case "inet" -> {
                if (host == null || host.isEmpty()) {
                    throw BlockException.invalid("NBD server address needs server.host (or a unix server.path)");
                }
                String port = server.get("port", o.get("port", String.valueOf(Nbd.DEFAULT_PORT)));
                return new NbdConnection.Address(host, checkPort(port, "server.port"), null);
            }
            default -> throw BlockException.invalid("Invalid NBD server.type '" + type + "' (inet or unix)");
        }
    }

    @Override
    public BlockNode open(OpenContext ctx) throws BlockException {
        Options o = ctx.options();
        // QEMU's x-dirty-bitmap: block status from another meta context (qemu:allocation-depth,
        // qemu:dirty-bitmap:NAME), its bits read as base:allocation's; meant for map, as in QEMU
        String statusContext = o.get("x-dirty-bitmap");
        long reconnectDelay = o.getLong("reconnect-delay", 0);
        long openTimeout = o.getLong("open-timeout", 0);
        if (reconnectDelay < 0 || openTimeout < 0) {
            throw BlockException.invalid(reconnectDelay < 0 ? "reconnect-delay must not be negative"
                    : "open-timeout must not be negative");
        }
        long timeout = o.getLong("x-timeout", Long.parseLong(DEFAULT_TIMEOUT_SECONDS));
        if (timeout <= 0) {
            throw BlockException.invalid("x-timeout must be positive");
        }
        long requestTimeout = o.getLong("x-request-timeout", Long.parseLong(DEFAULT_REQUEST_TIMEOUT_SECONDS));
        if (requestTimeout < 0) {
            throw BlockException.invalid("x-request-timeout must not be negative");
        }
        long multiConn = o.getLong("x-multi-conn", 1);
        if (multiConn < 1 || multiConn > 16) {
            throw BlockException.invalid("x-multi-conn must be between 1 and 16");
        }
        NbdConnection.Address address = address(o);
        String export = o.get("export", "");
        NbdConnection.Tls tls = tls(ctx, o, address);
        Duration handshake = Duration.ofSeconds(timeout);
        Duration perRequest = Duration.ofSeconds(requestTimeout);
        ConnectionSlot.Connector connector = () -> NbdConnection.open(address, export, handshake, perRequest, tls,
                statusContext);
        // errors name the server; the caller names what it opened (as qemu-img's "Could not open")
        NbdConnection c = connectWithin(connector, Duration.ofSeconds(openTimeout));
        if (!ctx.readOnly() && c.export().has(Nbd.FLAG_READ_ONLY)) {
            c.close();
            throw new BlockException(Reason.READ_ONLY, "NBD export '" + describe(address, export)
                    + "' is read-only; open it read-only");
        }
        List<NbdConnection> all = new java.util.ArrayList<>(List.of(c));
        if (multiConn > 1 && c.export().has(Nbd.FLAG_CAN_MULTI_CONN)) {
            try {
                for (int i = 1; i < multiConn; i++) {
                    NbdConnection more = connector.connect();
                    all.add(more);
                    if (!ConnectionSlot.sameExport(more.export(), c.export())) {
                        throw new BlockException(Reason.IO, "NBD server '" + address + "' described the export"
                                + " differently on another connection");
                    }
                }
            } catch (BlockException e) {
                all.forEach(NbdConnection::close);
                throw e;
            }
        }
        return new NbdNode(all, ctx.readOnly(), connector, Duration.ofSeconds(reconnectDelay));
    }

    /**
     * QEMU's open-timeout: 0 tries once; otherwise connection attempts repeat (every 100 ms to
     * 1 s) until one succeeds or the time is up. Only connection failures (Reason.IO) are retried:
     * a missing export or bad credentials will not get better by waiting.
     */
    static NbdConnection connectWithin(ConnectionSlot.Connector connector, Duration openTimeout)
            throws BlockException {
        long deadline = System.nanoTime() + openTimeout.toNanos();
        long backoff = 100;
        while (true) {
            try {
                return connector.connect();
            } catch (BlockException e) {
                long left = deadline - System.nanoTime();
                if (e.reason() != Reason.IO || left <= 0) {
                    throw e;
                }
                try {
                    Thread.sleep(Math.min(backoff, java.util.concurrent.TimeUnit.NANOSECONDS.toMillis(left) + 1));
                } catch (InterruptedException ie) {
                    Thread.currentThread().interrupt();
                    throw e;
                }
                backoff = Math.min(backoff * 2, 1000);
            }
        }
    }

    /**
     * TLS when asked for: {@code tls-creds=ID} (an {@code --object tls-creds-x509|tls-creds-psk}),
     * or the credentials an nbds:// URI names ({@code x-tls-creds-dir}, {@code x-tls-psk-file}).
     * A TCP server's certificate is checked against tls-hostname, by default the host connected to.
     */
    static NbdConnection.Tls tls(OpenContext ctx, Options o, NbdConnection.Address address) throws BlockException {
        TlsCreds creds = credentials(ctx, o);
        if (creds == null) {
            if (o.getBool("x-tls", false)) {
                throw BlockException.invalid("NBD over TLS needs credentials: tls-creds=<id of a tls-creds-x509 or"
                        + " tls-creds-psk object>, or ?tls-certificates=<dir> or ?tls-psk-file=<file> in the"
                        + " nbds:// URI");
            }
            return null;
        }
        String hostname = o.get("tls-hostname", address.unix() ? null : address.host());
        return ch -> creds.handshake(ch, hostname, address.port());
    }

    private static TlsCreds credentials(OpenContext ctx, Options o) throws BlockException {
        String id = o.get("tls-creds");
        if (id != null) {
            if (o.has("x-tls-creds-dir") || o.has("x-tls-psk-file")) {
                throw BlockException.invalid("tls-creds cannot be combined with x-tls-creds-dir or x-tls-psk-file");
            }
            UserObject obj;
            try {
                obj = ctx.object(id);
            } catch (BlockException e) {
                throw new BlockException(Reason.NOT_FOUND, "No TLS credentials with id '" + id + "'");
            }
            if (!TlsCreds.QOM_TYPES.contains(obj.qomType())) {
                throw BlockException.invalid("Object with id '" + id + "' is not TLS credentials");
            }
            // loaded when the object was created (ObjectType); an object added as bare properties loads now
            TlsCreds creds = obj.instance() instanceof TlsCreds loaded ? loaded
                    : TlsCreds.fromObject(obj.qomType(), obj.properties());
            if (creds.endpoint() != TlsCreds.Endpoint.CLIENT) {
                throw BlockException.invalid("Expected TLS credentials for a client endpoint");
            }
            return creds;
        }
        String dir = o.get("x-tls-creds-dir");
        String pskFile = o.get("x-tls-psk-file");
        if (dir != null && pskFile != null) {
            throw BlockException.invalid("Give either x-tls-creds-dir (X.509) or x-tls-psk-file (PSK), not both");
        }
        if (dir != null) {
            return X509Creds.load(java.nio.file.Path.of(dir), TlsCreds.Endpoint.CLIENT, true);
        }
        if (pskFile != null) {
            // libnbd's default user name is the local login name
            return PskCreds.loadFile(java.nio.file.Path.of(pskFile), TlsCreds.Endpoint.CLIENT,
                    o.get("tls-username", System.getProperty("user.name")));
        }
        return null;
    }

    /**
     * QEMU's exact filename of an nbd node: nbd://host:port[/export] or
     * nbd+unix:///[export]?socket=path, whatever else (TLS, timeouts) the options say.
     */
    @Override
    public String exactFilename(Options o) {
        NbdConnection.Address a;
        try {
            a = address(o);
        } catch (BlockException e) {
            return null; // open() reports the problem
        }
        String export = o.get("export");
        if (a.unix()) {
            return "nbd+unix://" + (export == null ? "" : "/" + export) + "?socket=" + a.path();
        }
        return "nbd://" + a.host() + ":" + a.port() + (export == null ? "" : "/" + export);
    }

    static String describe(NbdConnection.Address a, String export) {
        if (a.unix()) {
            return "nbd+unix:///" + export + "?socket=" + a.path();
        }
        return "nbd://" + a + "/" + export;
    }
}
