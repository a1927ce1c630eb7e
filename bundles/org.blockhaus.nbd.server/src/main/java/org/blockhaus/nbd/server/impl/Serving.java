package org.blockhaus.nbd.server.impl;

import org.blockhaus.nbd.common.TlsCreds;
import org.blockhaus.api.spi.UserObject;
import java.net.SocketAddress;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.function.Consumer;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.Image;
import org.blockhaus.core.BlockCore;
import org.blockhaus.nbd.server.NbdServer;

/**
 * One qemu-nbd: the images a command line names, opened through the core (which takes QEMU's
 * image locks), served by one {@link ServerInstance}, and taken down in qemu-nbd's order when it
 * stops (by itself after the last client, by {@link #close()} on SIGTERM, {@code blk:unserve} or
 * bundle stop): stop accepting, finish requests in flight, flush, close the images (releasing
 * their locks).
 */
final class Serving implements AutoCloseable {
    private final ServeConfig config;
    private final List<Image> images;
    private final NbdServer.Running server;
    private final Thread watcher;
    private boolean closed; // guarded by this
    private final java.util.concurrent.CountDownLatch released = new java.util.concurrent.CountDownLatch(1);
    /** Forgets the --object definitions this server made, so the next blk:serve may reuse their ids. */
    private final Runnable forgetObjects;

    private Serving(ServeConfig config, List<Image> images, NbdServer.Running server, Runnable forgetObjects,
            Consumer<Serving> onStopped) {
        this.forgetObjects = forgetObjects;
        this.config = config;
        this.images = images;
        this.server = server;
        // a server that stops by itself (non-persistent, last client gone) releases its images too
        this.watcher = Thread.ofVirtual().name("nbd-serve " + server.address()).start(() -> {
            try {
                server.awaitStop(Duration.ofDays(365 * 100));
                close();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            } finally {
                onStopped.accept(this);
            }
        });
    }

    /**
     * Defines the --object secrets and TLS credentials, opens every image and starts serving.
     * Errors carry qemu-nbd's message without the "qemu-nbd: " prefix.
     */
    static Serving start(BlockCore core, ServeConfig config, Consumer<String> warnings, Consumer<Serving> onStopped)
            throws BlockException {
        List<String> objectIds = new ArrayList<>();
        Runnable forgetObjects = () -> objectIds.forEach(core::removeObject);
        try {
            return start(core, config, warnings, onStopped, objectIds, forgetObjects);
        } catch (BlockException | RuntimeException e) {
            forgetObjects.run();
            throw e;
        }
    }

    private static Serving start(BlockCore core, ServeConfig config, Consumer<String> warnings,
            Consumer<Serving> onStopped, List<String> objectIds, Runnable forgetObjects) throws BlockException {
        TlsCreds tls = null;
        java.util.Set<String> secretIds = new java.util.HashSet<>();
        for (String def : config.objects()) {
            // the object's type checks and creates it now (TLS: loads the files), as qemu-nbd does
            UserObject created = core.createObject(def);
            objectIds.add(created.id()); // forgotten when the server stops
            if (created.qomType().equals("secret")) {
                secretIds.add(created.id());
            }
        }
        if (config.tlsCreds() != null) {
            UserObject found = core.object(config.tlsCreds());
            if (found == null || !TlsCreds.QOM_TYPES.contains(found.qomType())) {
                throw BlockException.invalid("Failed to get TLS creds: " + (found == null
                        && !secretIds.contains(config.tlsCreds()) ? "No TLS credentials with id '"
                        + config.tlsCreds() + "'" : "Object with id '" + config.tlsCreds()
                        + "' is not TLS credentials"));
            }
            tls = found.instance() instanceof TlsCreds loaded ? loaded
                    : TlsCreds.fromObject(found.qomType(), found.properties());
            if (tls.endpoint() != TlsCreds.Endpoint.SERVER) {
                throw BlockException.invalid("Failed to get TLS creds: Expected TLS credentials for a server endpoint");
            }
        }
        SocketAddress address = config.address();
        List<Image> images = new ArrayList<>();
        try {
            List<NbdServer.Export> exports = new ArrayList<>();
            for (ServeConfig.Image spec : config.images()) {
                Image img;
                try {
                    img = core.open(config.imageOpts() ? null : spec.filename(), config.openOptions(spec.filename()),
                            new OpenMode(!config.readOnly(), false, warnings));
                } catch (BlockException e) {
                    throw e.prepend("Failed to blk_new_open '" + spec.filename() + "': ");
                }
                images.add(img);
                long size = img.size();
                if (config.offset() > size) {
                    throw BlockException.invalid("Offset (" + config.offset()
                            + ") cannot be greater than size of the containing file (" + size + ")");
                }
                ServedNode node = new ServedNode(img, config.offset(), config.discardUnmap(), config.detectZeroes(),
                        config.writeThrough(), config.noFlush());
                exports.add(new NbdServer.Export(spec.exportName(), node, config.readOnly(), spec.description(),
                        config.allocationDepth(), spec.bitmaps()));
            }
            NbdServer.Settings settings = new NbdServer.Settings(config.shared(), config.persistent(), 16,
                    Duration.ofSeconds(10), tls);
            NbdServer.Running running;
            try {
                running = ServerInstance.start(exports, address, settings, s -> { });
            } catch (BlockException e) {
                throw new BlockException(e.reason(), bindMessage(e.getMessage()), e);
            }
            return new Serving(config, List.copyOf(images), running, forgetObjects, onStopped);
        } catch (BlockException | RuntimeException e) {
            for (Image img : images) {
                closeQuietly(img);
            }
            throw e;
        }
    }

    /** qemu-nbd says "Failed to bind socket: <strerror>"; the JDK's words differ a little. */
    private static String bindMessage(String message) {
        if (message.contains("Address already in use")) {
            return "Failed to bind socket: Address already in use";
        }
        if (message.contains("Cannot assign requested address")) {
            return "Failed to bind socket: Cannot assign requested address";
        }
        if (message.contains("Permission denied")) {
            return "Failed to bind socket: Permission denied";
        }
        return message;
    }

    ServeConfig config() {
        return config;
    }

    NbdServer.Running server() {
        return server;
    }

    List<Image> images() {
        return images;
    }

    boolean isRunning() {
        return server.isRunning();
    }

    /** Blocks until the server stopped and the images are closed. */
    void await() throws InterruptedException {
        watcher.join();
    }

    /**
     * Stops serving, flushes and closes every image (which releases its locks). Idempotent; a
     * second caller returns once the first has finished.
     */
    @Override
    public void close() {
        boolean first;
        synchronized (this) {
            first = !closed;
            closed = true;
        }
        if (!first) {
            try {
                released.await();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
            return;
        }
        try {
            server.close(); // drains requests in flight and flushes writable exports
            for (Image img : images) {
                closeQuietly(img);
            }
        } finally {
            forgetObjects.run();
            released.countDown();
        }
    }

    private static void closeQuietly(Image img) {
        try {
            img.close();
        } catch (BlockException | RuntimeException ignored) {
            // closing on the way out: the image's own error handling has reported what it could
        }
    }
}
