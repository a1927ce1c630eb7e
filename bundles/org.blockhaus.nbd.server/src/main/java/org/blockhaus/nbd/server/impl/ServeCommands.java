package org.blockhaus.nbd.server.impl;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.net.UnixDomainSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.concurrent.CopyOnWriteArraySet;
import org.apache.felix.service.command.Descriptor;
import org.blockhaus.api.BlockException;
import org.blockhaus.core.BlockCore;
import org.blockhaus.nbd.server.impl.QemuNbdArgs.UsageError;
import org.osgi.service.component.annotations.Component;
import org.osgi.service.component.annotations.Deactivate;
import org.osgi.service.component.annotations.Reference;

/**
 * qemu-nbd in the Gogo shell, scope {@code blk}: {@code blk:serve} takes qemu-nbd's options and
 * returns at once with a description of the export while the server keeps running in the
 * framework; {@code blk:exports} lists the running servers, {@code blk:unserve} stops one.
 * Stopping the bundle stops every server cleanly (flush, close, unlock).
 */
// immediate: a delayed component would be deactivated (stopping its servers) as soon as the shell
// ungets it after a command
@Component(service = ServeCommands.class, immediate = true, property = {"osgi.command.scope=blk", "osgi.command.function=serve",
        "osgi.command.function=exports", "osgi.command.function=unserve"})
public final class ServeCommands {
    @Reference
    BlockCore core;

    private final Set<Serving> running = new CopyOnWriteArraySet<>();

    public ServeCommands() {
    }

    /** Outside a framework (tests). */
    public ServeCommands(BlockCore core) {
        this.core = core;
    }

    /** One export of a running server, as the shell shows it. */
    public static final class ExportInfo {
        public final String name;
        public final String uri;
        public final String address;
        public final String image;
        public final boolean readOnly;
        public final boolean persistent;
        public final int clients;
        public final boolean running;

        ExportInfo(String name, String uri, String address, String image, boolean readOnly, boolean persistent,
                int clients, boolean running) {
            this.name = name;
            this.uri = uri;
            this.address = address;
            this.image = image;
            this.readOnly = readOnly;
            this.persistent = persistent;
            this.clients = clients;
            this.running = running;
        }

        @Override
        public String toString() {
            return uri + "  " + image + (readOnly ? "  read-only" : "") + (persistent ? "  persistent" : "")
                    + "  clients=" + clients + (running ? "" : "  stopped");
        }
    }

    @Descriptor("serve images over NBD with qemu-nbd's options, in the background: serve [-k socket | -b addr -p port]"
            + " [-x name [-D text]] [-e shared] [-t] [-r] [-A] [-f fmt] [--cache=mode] [--discard=mode]"
            + " [--object ...] [--tls-creds=id] file (several files: each after its own -x name)")
    public List<ExportInfo> serve(@Descriptor("qemu-nbd arguments") String... args) throws Exception {
        ServeConfig config;
        try {
            config = ServeConfig.from(QemuNbdArgs.parse(args == null ? new String[0] : args));
        } catch (UsageError e) {
            throw new IllegalArgumentException(e.getMessage(), e);
        }
        if (config.help() || config.version()) {
            throw new IllegalArgumentException(Usage.TEXT);
        }
        if (config.fork() || config.pidFile() != null) {
            throw new IllegalArgumentException("--fork and --pid-file make no sense in the shell: blk:serve"
                    + " already returns while the server runs in the framework");
        }
        ByteArrayOutputStream warnings = new ByteArrayOutputStream();
        PrintStream w = new PrintStream(warnings, true, StandardCharsets.UTF_8);
        Serving s;
        try {
            s = Serving.start(core, config, w::println, running::remove);
        } catch (BlockException e) {
            throw new IllegalArgumentException(e.getMessage(), e);
        }
        running.add(s);
        if (warnings.size() > 0) {
            System.err.print(warnings.toString(StandardCharsets.UTF_8));
        }
        return describe(s);
    }

    @Descriptor("list the exports of the NBD servers started with blk:serve")
    public List<ExportInfo> exports() {
        List<ExportInfo> out = new ArrayList<>();
        for (Serving s : running) {
            out.addAll(describe(s));
        }
        return out;
    }

    @Descriptor("stop an NBD server started with blk:serve (flush, close the image, release its lock)")
    public List<ExportInfo> unserve(@Descriptor("export name, nbd URI, host:port or socket path") String which) {
        List<ExportInfo> stopped = new ArrayList<>();
        for (Serving s : List.copyOf(running)) {
            List<ExportInfo> d = describe(s);
            boolean match = d.stream().anyMatch(e -> e.name.equals(which) || e.uri.equals(which)
                    || e.address.equals(which));
            if (match) {
                s.close();
                running.remove(s);
                stopped.addAll(describe(s));
            }
        }
        if (stopped.isEmpty()) {
            throw new IllegalArgumentException("No NBD export or server '" + which + "'");
        }
        return stopped;
    }

    private static List<ExportInfo> describe(Serving s) {
        List<ExportInfo> out = new ArrayList<>();
        SocketAddress a = s.server().address();
        String address = a instanceof UnixDomainSocketAddress u ? u.getPath().toString()
                : a instanceof InetSocketAddress i ? hostPort(i) : String.valueOf(a);
        for (ServeConfig.Image img : s.config().images()) {
            out.add(new ExportInfo(img.exportName(), s.server().uri(img.exportName()), address, img.filename(),
                    s.config().readOnly(), s.config().persistent(), s.server().clients(), s.isRunning()));
        }
        return out;
    }

    private static String hostPort(InetSocketAddress i) {
        String host = i.getAddress().getHostAddress();
        return (host.contains(":") ? "[" + host + "]" : host) + ":" + i.getPort();
    }

    /** Bundle stop: every server started here shuts down cleanly. */
    @Deactivate
    public void deactivate() {
        for (Serving s : List.copyOf(running)) {
            s.close();
        }
        running.clear();
    }
}
