/**
 * What QEMU's nbd/common.c is to its client and server: the byte stream under the NBD protocol
 * (plain socket, or TLS after NBD_OPT_STARTTLS) and X.509 credentials in QEMU's tls-creds-x509
 * directory layout. Shared by org.blockhaus.protocol.nbd and org.blockhaus.nbd.server.
 */
@Export
@Version("1.0.0")
package org.blockhaus.nbd.common;

import org.osgi.annotation.bundle.Export;
import org.osgi.annotation.versioning.Version;
