/*
 * The NBD server: qemu-nbd's counterpart, exporting block nodes over the Network Block Device
 * protocol on TCP or unix sockets. Specs: doc/proto.md of the NetworkBlockDevice/nbd project (the
 * protocol), QEMU's docs/interop/nbd.rst (qemu:allocation-depth) and qemu-nbd's behaviour
 * (--shared, --persistent, handshake limit, stale socket replacement).
 *
 * Layout: ServerInstance listens and accepts, Session speaks the protocol with one client,
 * org.blockhaus.nbd.common's Nbd names the protocol's numbers, Wire/TlsWire carry the bytes (plain or TLS).
 */
package org.blockhaus.nbd.server.impl;

import java.net.SocketAddress;
import java.util.List;
import java.util.Set;
import java.util.concurrent.CopyOnWriteArraySet;
import org.blockhaus.api.BlockException;
import org.blockhaus.nbd.server.NbdServer;
import org.osgi.service.component.annotations.Component;
import org.osgi.service.component.annotations.Deactivate;

/** The NBD server as a service; stopping the bundle stops every server it started. */
@Component(service = NbdServer.class)
public final class NbdServerService implements NbdServer {
    private final Set<ServerInstance> running = new CopyOnWriteArraySet<>();

    @Override
    public Running start(List<Export> exports, SocketAddress address, Settings settings) throws BlockException {
        if (exports.isEmpty()) {
            throw BlockException.invalid("An NBD server needs at least one export");
        }
        ServerInstance s = ServerInstance.start(exports, address, settings == null ? Settings.DEFAULT : settings,
                running::remove);
        running.add(s);
        if (!s.isRunning()) {
            running.remove(s);
        }
        return s;
    }

    @Deactivate
    void deactivate() {
        for (ServerInstance s : List.copyOf(running)) {
            s.close();
        }
    }
}
