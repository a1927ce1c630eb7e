package org.blockhaus.protocol.file.impl;

import static org.blockhaus.api.spi.Permission.CONSISTENT_READ;
import static org.blockhaus.api.spi.Permission.RESIZE;
import static org.blockhaus.api.spi.Permission.WRITE;
import static org.blockhaus.api.spi.Permission.WRITE_UNCHANGED;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.EnumSet;
import java.util.List;
import java.util.Set;
import org.blockhaus.api.Options;
import org.blockhaus.api.spi.Permission;

/**
 * A QEMU user of an image file and the permissions QEMU 7.2 gives its file node, read from the
 * lock bytes it holds in /proc/locks (PEERS.md): qemu-io -f raw holds 100-101, -r holds 100,
 * -f qcow2 holds 100,101,103,201,203, -r -f qcow2 holds 100,201,203, qemu-nbd -f raw 100,101,203.
 */
enum QemuRole {
    RAW_RW(false, EnumSet.of(CONSISTENT_READ, WRITE), Permission.all(), 2, "-f", "raw"),
    RAW_RO(true, EnumSet.of(CONSISTENT_READ), Permission.all(), 1, "-r", "-f", "raw"),
    QCOW2_RW(false, EnumSet.of(CONSISTENT_READ, WRITE, RESIZE), EnumSet.of(CONSISTENT_READ, WRITE_UNCHANGED), 5, "-f", "qcow2"),
    QCOW2_RO(true, EnumSet.of(CONSISTENT_READ), EnumSet.of(CONSISTENT_READ, WRITE_UNCHANGED), 3, "-r", "-f", "qcow2"),
    /** qemu-nbd -f raw: writes, but lets nobody resize. Only a holder. */
    NBD_RAW(false, EnumSet.of(CONSISTENT_READ, WRITE), EnumSet.of(CONSISTENT_READ, WRITE, WRITE_UNCHANGED), 3);

    final boolean readOnly;
    final Set<Permission> perm;
    final Set<Permission> shared;
    final int lockBytes;
    final List<String> qemuIoArgs;

    QemuRole(boolean readOnly, Set<Permission> perm, Set<Permission> shared, int lockBytes, String... qemuIoArgs) {
        this.readOnly = readOnly;
        this.perm = perm;
        this.shared = shared;
        this.lockBytes = lockBytes;
        this.qemuIoArgs = List.of(qemuIoArgs);
    }

    TestContext context(Path image) {
        return new TestContext(image.toString(), Options.empty(), readOnly, perm, shared);
    }

    /** QEMU holding the image in this role until closed. */
    Peers.Holder holdWithQemu(Path image) throws Exception {
        if (this == NBD_RAW) {
            Path sock = image.resolveSibling("nbd-" + System.nanoTime() + ".sock");
            return Peers.Holder.start(image, lockBytes, Peers.qemuNbd(), "-f", "raw", "-k", sock.toString(),
                    image.toString());
        }
        List<String> cmd = new ArrayList<>(List.of(Peers.qemuIo()));
        cmd.addAll(qemuIoArgs);
        cmd.add(image.toString());
        return Peers.Holder.start(image, lockBytes, cmd.toArray(String[]::new));
    }

    /** QEMU opening the image in this role once. */
    Peers.Result openWithQemu(Path image) throws Exception {
        List<String> cmd = new ArrayList<>(List.of(Peers.qemuIo()));
        cmd.addAll(qemuIoArgs);
        cmd.addAll(List.of("-c", "quit", image.toString()));
        return Peers.run(cmd.toArray(String[]::new));
    }
}

