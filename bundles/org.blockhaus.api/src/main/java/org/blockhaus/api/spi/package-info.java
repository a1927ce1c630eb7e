/**
 * The driver SPI: what a bundle implements to add an image format, protocol or filter.
 *
 * <h2>How every driver of the full scope maps onto this SPI</h2>
 * <ul>
 * <li><b>Protocols</b> (file, host_device, host_cdrom, nbd, iscsi, gluster, ssh, nvme) are leaves:
 * they never open children. {@link org.blockhaus.api.spi.BlockDriver#parseFilename} turns their
 * filename forms ({@code nbd://h:p/e}, {@code nbd:unix:/s:exportname=e}, {@code iscsi://...},
 * {@code ssh://...}, {@code gluster+tcp://...}, {@code nvme://...}) into dotted options
 * ({@code server.host}, {@code path}, ...), so {@code json:} and dotted forms reach the same
 * code. The descriptor's {@code protocols} lists the URI schemes and {@code prefix:} forms the
 * core uses to choose the driver. Remote protocols keep their connection state in the node and
 * report {@code BlockException.Reason.IO} when the peer breaks.</li>
 * <li><b>Formats</b> (raw, qcow2, qed, qcow, vdi, vpc, vhdx, vmdk, luks, bochs, cloop, dmg,
 * parallels) open their storage with {@link org.blockhaus.api.spi.OpenContext#openFile()} and
 * never touch host files themselves, so every format works over every protocol.
 * <ul>
 * <li>Backing chains (qcow2, qed, qcow, vmdk parent, vhdx/vpc differencing): the format reads
 * the backing name from its header and calls
 * {@link org.blockhaus.api.spi.OpenContext#openBacking}; the core resolves it relative to the
 * image, honours the backing format (probing only when none is named), caps the depth and
 * refuses loops.</li>
 * <li>vmdk multi-file extents: the descriptor file is the {@code file} child; each extent is
 * opened with {@link org.blockhaus.api.spi.OpenContext#openChild(String, String, boolean)}
 * using role {@code extents.N}, resolved relative to the descriptor; the core refuses names
 * that escape where the user allowed.</li>
 * <li>qcow2 external data files: role {@code data-file}, opened the same way.</li>
 * <li>vhdx log replay: done in {@code open()} before the node is returned; a read-only open
 * with a dirty log fails with a message asking for a read-write open (as QEMU does).</li>
 * <li>luks and qcow2 encryption: the secret arrives through
 * {@link org.blockhaus.api.spi.OpenContext#secret(String)} by id ({@code --object secret}); the
 * cipher comes from a crypto backend service in its own bundle. luks changes data, so it is a
 * format (as in QEMU), not a filter.</li>
 * <li>Checks, snapshots, amend and measure are optional node interfaces
 * ({@link org.blockhaus.api.spi.CheckableNode}, {@link org.blockhaus.api.spi.SnapshotNode},
 * {@link org.blockhaus.api.spi.AmendableNode}, {@link org.blockhaus.api.spi.BitmapNode}) and an optional driver method
 * ({@link org.blockhaus.api.spi.BlockDriver#measure}).</li>
 * </ul></li>
 * <li><b>vvfat</b> is a protocol whose node synthesises a FAT disk from a directory: reads are
 * computed from the directory tree, writes (with {@code rw}) are parsed back into file changes.</li>
 * <li><b>User-creatable objects</b> ({@code --object qom-type,id=...}): an
 * {@link org.blockhaus.api.spi.ObjectType} service creates each when it is defined (TLS
 * credentials load their files then); drivers find it by id through
 * {@link org.blockhaus.api.spi.OpenContext#object(String)} as a
 * {@link org.blockhaus.api.spi.UserObject} holding what the type created.</li>
 * <li><b>Filters</b> (preallocate, and future throttle/copy-on-read) open their {@code file} child
 * and forward everything they do not change; {@link org.blockhaus.api.spi.ForwardingNode} makes
 * that one line per changed operation.</li>
 * </ul>
 * The core wraps every node a driver returns, so drivers see only aligned, in-bounds requests
 * that fit their {@link org.blockhaus.api.Limits}, and write-zeroes and FUA are emulated for
 * nodes that do not do them natively.
 */
@Export
@Version("1.1.0")
package org.blockhaus.api.spi;

import org.osgi.annotation.bundle.Export;
import org.osgi.annotation.versioning.Version;
