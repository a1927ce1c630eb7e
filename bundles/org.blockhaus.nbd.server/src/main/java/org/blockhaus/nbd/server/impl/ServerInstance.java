package org.blockhaus.nbd.server.impl;

import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.time.Duration;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.function.Consumer;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.nbd.server.NbdServer;

/**
 * One listening server: an accept loop on a virtual thread and one virtual thread per client
 * {@link Session}.
 */
final class ServerInstance implements NbdServer.Running {
    /** How long close waits for each client's requests in flight. */
    static final Duration DRAIN_TIMEOUT = Duration.ofSeconds(10);

    private final Map<String, NbdServer.Export> exports;
    /** Per export name: its dirty bitmaps, resolved once at start. */
    private final Map<String, List<ExportedBitmap>> bitmaps;
    private final NbdServer.Settings settings;
    private final ServerSocketChannel listener;
    private final SocketAddress bound;
    private final Path socketFile;
    private final Set<Session> sessions = ConcurrentHashMap.newKeySet();
    private final Semaphore slots;
    private final CountDownLatch stopped = new CountDownLatch(1);
    private final Consumer<ServerInstance> onStopped;
    private final Thread acceptor;
    private volatile boolean closing;
    private boolean hadClient; // guarded by this

    private ServerInstance(Map<String, NbdServer.Export> exports, Map<String, List<ExportedBitmap>> bitmaps,
            NbdServer.Settings settings, ServerSocketChannel listener, SocketAddress bound, Path socketFile,
            Consumer<ServerInstance> onStopped) {
        this.exports = exports;
        this.bitmaps = bitmaps;
        this.settings = settings;
        this.listener = listener;
        this.bound = bound;
        this.socketFile = socketFile;
        this.onStopped = onStopped;
        this.slots = new Semaphore(settings.maxClients() == 0 ? Integer.MAX_VALUE : settings.maxClients());
        this.acceptor = Thread.ofVirtual().name("nbd-server accept " + bound).unstarted(this::acceptLoop);
    }

    static ServerInstance start(List<NbdServer.Export> exportList, SocketAddress address, NbdServer.Settings settings,
            Consumer<ServerInstance> onStopped) throws BlockException {
        Map<String, NbdServer.Export> exports = new LinkedHashMap<>();
        for (NbdServer.Export e : exportList) {
            if (exports.putIfAbsent(e.name(), e) != null) {
                throw BlockException.invalid("Export name '" + e.name() + "' is used twice");
            }
        }
        Map<String, List<ExportedBitmap>> bitmaps = new HashMap<>();
        for (NbdServer.Export e : exports.values()) {
            bitmaps.put(e.name(), ExportedBitmap.resolve(e)); // before binding: a bad -B leaves no socket
        }
        ServerSocketChannel ch = null;
        Path socketFile = null;
        try {
            if (address instanceof UnixDomainSocketAddress u) {
                socketFile = u.getPath();
                removeStaleSocket(socketFile);
                ch = ServerSocketChannel.open(StandardProtocolFamily.UNIX);
            } else if (address instanceof InetSocketAddress i) {
                ch = ServerSocketChannel.open(i.getAddress() instanceof java.net.Inet6Address
                        ? StandardProtocolFamily.INET6 : StandardProtocolFamily.INET);
                ch.setOption(java.net.StandardSocketOptions.SO_REUSEADDR, true);
            } else {
                throw BlockException.invalid("Unsupported NBD server address " + address);
            }
            ch.bind(address, 64);
            ServerInstance s = new ServerInstance(exports, bitmaps, settings, ch, ch.getLocalAddress(), socketFile, onStopped);
            s.acceptor.start();
            return s;
        } catch (IOException e) {
            if (ch != null) {
                try {
                    ch.close();
                } catch (IOException ignored) {
                    // reporting the bind failure matters more
                }
            }
            throw new BlockException(Reason.IO, "Failed to listen on " + describe(address) + ": " + e.getMessage(), e);
        }
    }

    /** qemu replaces a leftover unix socket; anything else at that path is the user's file. */
    private static void removeStaleSocket(Path p) throws IOException, BlockException {
        if (!Files.exists(p, LinkOption.NOFOLLOW_LINKS)) {
            return;
        }
        Object mode;
        try {
            mode = Files.getAttribute(p, "unix:mode", LinkOption.NOFOLLOW_LINKS);
        } catch (UnsupportedOperationException e) {
            mode = null;
        }
        if (mode instanceof Integer m && (m & 0170000) == 0140000) {
            Files.delete(p);
        } else {
            throw new BlockException(Reason.INVALID_ARGUMENT, "Failed to listen on " + p + ": the path exists and"
                    + " is not a socket");
        }
    }

    private static String describe(SocketAddress a) {
        return a instanceof UnixDomainSocketAddress u ? u.getPath().toString() : String.valueOf(a);
    }

    NbdServer.Export export(String name) {
        return exports.get(name);
    }

    /** The export's dirty bitmaps (qemu:dirty-bitmap:NAME contexts), in the order they are listed. */
    List<ExportedBitmap> bitmaps(String exportName) {
        return bitmaps.getOrDefault(exportName, List.of());
    }

    Iterable<NbdServer.Export> exports() {
        return exports.values();
    }

    NbdServer.Settings settings() {
        return settings;
    }

    boolean closing() {
        return closing;
    }

    private void acceptLoop() {
        try {
            while (!closing) {
                slots.acquire();
                SocketChannel c;
                try {
                    c = listener.accept();
                } catch (IOException e) {
                    slots.release();
                    if (closing || !listener.isOpen()) {
                        break;
                    }
                    Thread.sleep(10); // a vanished client, or out of file descriptors: do not spin
                    continue;
                }
                Session s = new Session(this, c);
                sessions.add(s);
                Thread.ofVirtual().name("nbd-server client " + sessions.size()).start(() -> {
                    try {
                        s.run();
                    } finally {
                        sessions.remove(s);
                        slots.release();
                        sessionEnded();
                    }
                });
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /**
     * A client reached the transmission phase. Only such clients end a non-persistent server when
     * they leave, as in qemu-nbd: listing exports ({@code nbdinfo --list}) or probing the port does not.
     */
    synchronized void negotiated() {
        hadClient = true;
    }

    private void sessionEnded() {
        if (!settings.persistent() && !closing) {
            synchronized (this) {
                if (!hadClient || !sessions.isEmpty()) {
                    return;
                }
            }
            Thread.ofVirtual().start(this::close);
        }
    }

    @Override
    public SocketAddress address() {
        return bound;
    }

    @Override
    public int clients() {
        return sessions.size();
    }

    @Override
    public boolean isRunning() {
        return stopped.getCount() > 0;
    }

    @Override
    public boolean awaitStop(Duration timeout) throws InterruptedException {
        return stopped.await(timeout.toMillis(), TimeUnit.MILLISECONDS);
    }

    @Override
    public void close() {
        synchronized (this) {
            if (closing) {
                return;
            }
            closing = true;
        }
        try {
            try {
                listener.close();
            } catch (IOException ignored) {
                // the socket is going away either way
            }
            acceptor.interrupt();
            for (Session s : List.copyOf(sessions)) {
                s.shutdown();
            }
            long deadline = System.nanoTime() + DRAIN_TIMEOUT.toNanos();
            for (Session s : List.copyOf(sessions)) {
                s.awaitEnd(Math.max(0, deadline - System.nanoTime()));
            }
            for (NbdServer.Export e : exports.values()) {
                if (!e.readOnly()) {
                    try {
                        e.node().flush();
                    } catch (BlockException | RuntimeException ignored) {
                        // the owner closes (and flushes) the node again; nothing to add here
                    }
                }
            }
            if (socketFile != null) {
                try {
                    Files.deleteIfExists(socketFile);
                } catch (IOException ignored) {
                    // a leftover socket file is replaced by the next server
                }
            }
        } finally {
            stopped.countDown();
            onStopped.accept(this);
        }
    }
}
