package org.blockhaus.nbd.server.impl;

import org.blockhaus.nbd.common.TlsCredentials;
import java.io.IOException;
import java.net.SocketAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.function.Consumer;
import javax.net.ssl.SSLContext;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
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

    private Serving(ServeConfig config, List<Image> images, NbdServer.Running server, Consumer<Serving> onStopped) {
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
        SSLContext tls = null;
        boolean verifyPeer = false;
        List<String[]> tlsObjects = new ArrayList<>();
        for (String def : config.objects()) {
            Options o = Options.parseKeyValue(def, "qom-type");
            String type = o.get("qom-type");
            String id = o.get("id");
            if (type == null) {
                throw BlockException.invalid("Parameter 'qom-type' is missing");
            }
            if (!List.of("secret", "tls-creds-x509", "tls-creds-psk").contains(type)) {
                throw BlockException.invalid("Parameter 'qom-type' does not accept value '" + type + "'");
            }
            if (id == null) {
                throw BlockException.invalid("Parameter 'id' is missing");
            }
            if (type.equals("secret")) {
                core.addSecret(id, secret(o, id));
            } else {
                tlsObjects.add(new String[] {type, id, def});
            }
        }
        if (config.tlsCreds() != null) {
            String[] found = null;
            for (String[] t : tlsObjects) {
                if (t[1].equals(config.tlsCreds())) {
                    found = t;
                }
            }
            if (found == null) {
                throw BlockException.invalid("Failed to get TLS creds: No TLS credentials with id '"
                        + config.tlsCreds() + "'");
            }
            Options o = Options.parseKeyValue(found[2], "qom-type");
            if (found[0].equals("tls-creds-psk")) {
                throw BlockException.unsupported("TLS-PSK credentials ('" + found[1] + "'): the JDK has no TLS-PSK");
            }
            if (!"server".equals(o.get("endpoint", "client"))) {
                throw BlockException.invalid("Expecting TLS credentials with a server endpoint");
            }
            String dir = o.get("dir");
            if (dir == null) {
                throw BlockException.invalid("Unable to access credentials: no 'dir' given");
            }
            verifyPeer = o.getBool("verify-peer", true);
            tls = TlsCredentials.serverContext(java.nio.file.Path.of(dir));
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
                        config.allocationDepth()));
            }
            NbdServer.Settings settings = new NbdServer.Settings(config.shared(), config.persistent(), 16,
                    Duration.ofSeconds(10), tls, verifyPeer);
            NbdServer.Running running;
            try {
                running = ServerInstance.start(exports, address, settings, s -> { });
            } catch (BlockException e) {
                throw new BlockException(e.reason(), bindMessage(e.getMessage()), e);
            }
            return new Serving(config, List.copyOf(images), running, onStopped);
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

    private static byte[] secret(Options o, String id) throws BlockException {
        if (o.has("data") == o.has("file")) {
            throw BlockException.invalid(o.has("data") ? "'file' and 'data' are mutually exclusive"
                    : "Either 'file' or 'data' must be provided");
        }
        byte[] value;
        if (o.has("data")) {
            value = o.get("data").getBytes(StandardCharsets.UTF_8);
        } else {
            try {
                value = Files.readAllBytes(java.nio.file.Path.of(o.get("file")));
            } catch (IOException e) {
                throw BlockException.io("Unable to read " + o.get("file"), e);
            }
        }
        if ("base64".equals(o.get("format"))) {
            try {
                value = Base64.getDecoder().decode(new String(value, StandardCharsets.US_ASCII).trim());
            } catch (IllegalArgumentException e) {
                throw BlockException.invalid("Invalid base64 data for secret '" + id + "'");
            }
        }
        return value;
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
