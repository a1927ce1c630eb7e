/**
 * Serving block nodes over NBD, as qemu-nbd does: {@link org.blockhaus.nbd.server.NbdServer} (an
 * OSGi service) exports any {@link org.blockhaus.api.BlockNode} (usually an open
 * {@link org.blockhaus.api.Image} chain) on a TCP address or a unix socket.
 */
@Export
@Version("1.1.0")
package org.blockhaus.nbd.server;

import org.osgi.annotation.bundle.Export;
import org.osgi.annotation.versioning.Version;
