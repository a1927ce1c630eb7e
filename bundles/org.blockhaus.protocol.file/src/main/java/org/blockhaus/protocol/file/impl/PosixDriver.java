package org.blockhaus.protocol.file.impl;

import java.io.IOException;
import java.nio.channels.FileChannel;
import java.nio.file.AccessDeniedException;
import java.nio.file.FileSystemException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.NoSuchFileException;
import java.nio.file.OpenOption;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.List;
import java.util.Set;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.Limits;
import org.blockhaus.api.Options;
import org.blockhaus.api.spi.BlockDriver;
import org.blockhaus.api.spi.OpenContext;
import org.blockhaus.api.spi.OptionSpec;
import org.blockhaus.api.spi.OptionSpec.OptionType;
import org.blockhaus.api.spi.Permission;

/**
 * What QEMU's file-posix drivers share ("file", "host_device", "host_cdrom"): the open options,
 * opening with QEMU's error messages, the type check, O_DIRECT geometry and image locking.
 */
abstract class PosixDriver implements BlockDriver {
    private static final System.Logger LOG = System.getLogger(PosixDriver.class.getName());
    /** Bounce buffers for O_DIRECT are allocated per request; keep them bounded. */
    private static final int DIRECT_MAX_TRANSFER = 16 << 20;

    /** file-posix's runtime options (raw_runtime_opts), in QEMU's words. */
    static final List<OptionSpec> OPEN_OPTIONS = List.of(
            OptionSpec.of("filename", OptionType.STRING, "File name of the image"),
            OptionSpec.choice("aio", "threads", "host AIO implementation (threads, native, io_uring)",
                    "threads", "native", "io_uring"),
            OptionSpec.of("aio-max-batch", OptionType.NUMBER, "AIO max batch size (0 = auto handled by AIO backend,"
                    + " default: 0)"),
            OptionSpec.choice("locking", "auto", "file locking mode (on/off/auto, default: auto)",
                    "on", "off", "auto"),
            OptionSpec.of("pr-manager", OptionType.STRING, "id of persistent reservation manager object"
                    + " (default: none)"),
            OptionSpec.of("drop-cache", OptionType.BOOL, "invalidate page cache during live migration"
                    + " (default: on)"),
            OptionSpec.of("x-check-cache-dropped", OptionType.BOOL, "check that page cache was dropped on live"
                    + " migration (default: off)"));

    static {
        if (!PosixDriver.class.getModule().isNativeAccessEnabled()) {
            LOG.log(System.Logger.Level.WARNING, "native access is not enabled for the file protocol driver"
                    + " (start the JVM with --enable-native-access=ALL-UNNAMED); OFD locks, holes and"
                    + " preallocation may be unavailable");
        }
        if (Native.get() == null) {
            LOG.log(System.Logger.Level.WARNING, "file protocol: native calls unavailable: "
                    + Native.unavailableReason());
        }
    }

    /** The native bindings, or null: then FileChannel and POSIX locks do what they can. */
    private volatile Native nat = Native.get();

    /** QEMU's driver name. */
    abstract String name();

    Native nat() {
        return nat;
    }

    /** Behaves as in a JVM that denies native access (for tests of the fallbacks). */
    PosixDriver withoutNativeAccess() {
        nat = null;
        return this;
    }

    /** Whether this driver opens block and character devices (else regular files). */
    abstract boolean opensDevices();

    /** {@code <driver>:<path>} names the path, as QEMU's parse_filename strips the prefix. */
    @Override
    public Options parseFilename(String filename) {
        String prefix = name() + ":";
        return Options.of("filename", filename.startsWith(prefix) ? filename.substring(prefix.length()) : filename);
    }

    @Override
    public BlockNode open(OpenContext ctx) throws BlockException {
        Options o = ctx.options();
        String filename = o.get("filename", ctx.filename());
        if (filename == null || filename.isEmpty()) {
            throw BlockException.invalid("A block device must be specified for \"" + name() + "\"");
        }
        String locking = o.get("locking", "auto");
        if (!List.of("on", "off", "auto").contains(locking)) {
            throw BlockException.invalid("invalid parameter value: " + locking);
        }
        String aio = o.get("aio", "threads");
        if (!List.of("threads", "native", "io_uring").contains(aio)) {
            throw BlockException.invalid("invalid parameter value: " + aio);
        }
        boolean direct = o.getBool("cache.direct", false);
        if (aio.equals("native") && !direct) {
            throw BlockException.invalid("aio=native was specified, but it requires cache.direct=on, which was not"
                    + " specified.");
        }
        if (o.get("pr-manager") != null) {
            throw BlockException.invalid("No persistent reservation manager with id '" + o.get("pr-manager") + "'");
        }
        o.getLong("aio-max-batch", 0);
        o.getBool("drop-cache", true);
        o.getBool("x-check-cache-dropped", false);

        boolean readOnly = ctx.readOnly();
        Path path = Path.of(filename);
        Native nat = nat();
        if (direct && nat == null) {
            throw BlockException.unsupported("cache.direct=on without native access");
        }
        int fd = -1;
        FileChannel channel = null;
        FileNode node = null;
        try {
            boolean device;
            if (nat != null) {
                fd = openNative(nat, filename, readOnly, direct);
                device = checkType(filename, nat.fstat(fd));
            } else {
                device = checkType(filename, path, readOnly);
            }
            if (!direct) {
                channel = openChannel(filename, path, readOnly);
            }
            Limits limits = Limits.DEFAULT;
            if (direct) {
                int align = 4096;
                if (device) {
                    try {
                        align = Math.max(nat.ioctlInt(fd, Native.BLKSSZGET), 512);
                    } catch (Native.Errno notABlockDevice) {
                        // a character device: keep the safe 4 KiB
                    }
                }
                limits = new Limits(align, DIRECT_MAX_TRANSFER, 0, 0, 0);
            }
            node = new FileNode(filename, path, readOnly, device, channel, nat, fd, direct, limits);
            if (!locking.equals("off")) {
                node.setLock(lock(ctx, nat, fd, channel, readOnly, filename, locking));
            }
            return node;
        } catch (Native.Errno e) {
            closeQuietly(node, channel, nat, fd);
            throw new BlockException(Reason.IO, "Could not open '" + filename + "': " + e.getMessage(), e);
        } catch (BlockException | RuntimeException e) {
            closeQuietly(node, channel, nat, fd);
            throw e;
        }
    }

    private static void closeQuietly(FileNode node, FileChannel channel, Native nat, int fd) {
        if (node != null) {
            try {
                node.close();
            } catch (BlockException ignored) {
                // the open error is the one to report
            }
            return;
        }
        try {
            if (channel != null) {
                channel.close();
            }
            if (nat != null && fd >= 0) {
                nat.close(fd);
            }
        } catch (IOException | Native.Errno ignored) {
            // the open error is the one to report
        }
    }

    private static int openNative(Native nat, String filename, boolean readOnly, boolean direct)
            throws BlockException {
        int flags = (readOnly ? Native.O_RDONLY : Native.O_RDWR) | Native.O_CLOEXEC | (direct ? Native.O_DIRECT : 0);
        try {
            return nat.open(filename, flags);
        } catch (Native.Errno e) {
            Reason r = switch (e.errno) {
                case Native.ENOENT -> Reason.NOT_FOUND;
                case Native.EACCES, 1 /* EPERM */ -> Reason.PERMISSION;
                case 30 /* EROFS */ -> Reason.READ_ONLY;
                default -> Reason.IO;
            };
            throw new BlockException(r, "Could not open '" + filename + "': " + e.getMessage(), e);
        }
    }

    private boolean checkType(String filename, Native.Stat st) throws BlockException {
        int type = st.type();
        if (opensDevices()) {
            if (type != Native.S_IFBLK && type != Native.S_IFCHR) {
                throw notDevice(filename);
            }
            return true;
        }
        if (type != Native.S_IFREG) {
            throw notRegular(filename);
        }
        return false;
    }

    /** Without native access: what java.nio.file can tell (character devices look like "other"). */
    private boolean checkType(String filename, Path path, boolean readOnly) throws BlockException {
        if (!Files.exists(path)) {
            throw new BlockException(Reason.NOT_FOUND, "Could not open '" + filename + "': No such file or directory");
        }
        if (Files.isDirectory(path) && !readOnly) {
            throw new BlockException(Reason.INVALID_ARGUMENT, "Could not open '" + filename + "': Is a directory");
        }
        boolean regular = Files.isRegularFile(path, LinkOption.NOFOLLOW_LINKS) || Files.isRegularFile(path);
        if (opensDevices()) {
            if (regular || Files.isDirectory(path)) {
                throw notDevice(filename);
            }
            return true;
        }
        if (!regular) {
            throw notRegular(filename);
        }
        return false;
    }

    private BlockException notRegular(String filename) {
        return BlockException.invalid("'" + name() + "' driver requires '" + filename + "' to be a regular file");
    }

    private BlockException notDevice(String filename) {
        return BlockException.invalid("'" + name() + "' driver requires '" + filename
                + "' to be either a character or block device");
    }

    private static FileChannel openChannel(String filename, Path path, boolean readOnly) throws BlockException {
        Set<OpenOption> opts = readOnly ? Set.of(StandardOpenOption.READ)
                : Set.of(StandardOpenOption.READ, StandardOpenOption.WRITE);
        try {
            return FileChannel.open(path, opts);
        } catch (NoSuchFileException e) {
            throw new BlockException(Reason.NOT_FOUND, "Could not open '" + filename + "': No such file or directory",
                    e);
        } catch (AccessDeniedException e) {
            throw new BlockException(Reason.PERMISSION, "Could not open '" + filename + "': Permission denied", e);
        } catch (FileSystemException e) {
            throw new BlockException(Reason.IO, "Could not open '" + filename + "': "
                    + (e.getReason() != null ? e.getReason() : e.getMessage()), e);
        } catch (IOException e) {
            throw BlockException.io("Could not open '" + filename + "'", e);
        }
    }

    private static ImageLock lock(OpenContext ctx, Native nat, int fd, FileChannel channel, boolean readOnly,
            String filename, String locking) throws BlockException {
        Set<Permission> perm = ctx.permissions();
        Set<Permission> shared = ctx.sharedPermissions();
        if (nat != null) {
            return ImageLock.acquire(ImageLock.ofd(nat, fd), filename, perm, shared);
        }
        // QEMU's words when OFD locks are missing; we also fall back for locking=auto, because
        // here the cause is the JVM's native access, not the kernel.
        ctx.warn("File lock requested but OFD locking syscall is unavailable, falling back to POSIX file locks.\n"
                + "Due to the implementation, locks can be lost unexpectedly.");
        if (channel == null) {
            return null;
        }
        if (readOnly) {
            ctx.warn("Cannot check for conflicting locks on '" + filename + "' without native access when it is"
                    + " opened read-only; only our own locks are taken.");
        }
        return ImageLock.acquire(ImageLock.posix(channel, readOnly ? null : channel), filename, perm, shared);
    }

    /** Forces the POSIX fallback, for tests: the same open with no native calls at all. */
    static ImageLock posixLock(FileChannel channel, boolean writable, String filename, Set<Permission> perm,
            Set<Permission> shared) throws BlockException {
        return ImageLock.acquire(ImageLock.posix(channel, writable ? channel : null), filename, perm, shared);
    }
}
