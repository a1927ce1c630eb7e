package org.blockhaus.protocol.file.impl;

import java.io.IOException;
import java.nio.channels.FileChannel;
import java.nio.file.AccessDeniedException;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.EnumSet;
import java.util.List;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.Options;
import org.blockhaus.api.Preallocation;
import org.blockhaus.api.Sizes;
import org.blockhaus.api.spi.BlockDriver;
import org.blockhaus.api.spi.CreateContext;
import org.blockhaus.api.spi.DriverDescriptor;
import org.blockhaus.api.spi.DriverDescriptor.Kind;
import org.blockhaus.api.spi.OptionSpec;
import org.blockhaus.api.spi.OptionSpec.OptionType;
import org.blockhaus.api.spi.Permission;
import org.osgi.service.component.annotations.Component;

/**
 * QEMU's "file" protocol (block/file-posix.c): an image stored in a regular host file. Plain
 * paths and {@code file:<path>} come here. Creating a file follows qemu-img: the file is opened
 * (not truncated), locked, emptied, then grown with the requested preallocation.
 */
@Component(service = BlockDriver.class, property = {"blk.driver=file", "blk.kind=protocol"})
public final class FileDriver extends PosixDriver {
    /** file-posix's create options, in QEMU's order and words. */
    static final List<OptionSpec> CREATE_OPTIONS = List.of(
            OptionSpec.of("size", OptionType.SIZE, "Virtual disk size"),
            OptionSpec.of("nocow", OptionType.BOOL, "Turn off copy-on-write (valid only on btrfs)"),
            OptionSpec.choice("preallocation", null, "Preallocation mode (allowed values: off, falloc, full)",
                    "off", "falloc", "full"),
            OptionSpec.of("extent_size_hint", OptionType.SIZE, "Extent size hint for the image file, 0 to disable"));

    private static final DriverDescriptor DESCRIPTOR = new DriverDescriptor("file", Kind.PROTOCOL,
            "regular host files (QEMU's file-posix)", List.of("file:"), OPEN_OPTIONS, CREATE_OPTIONS);

    /** QEMU allocates this much at the start of a new file so O_DIRECT alignment can be probed. */
    private static final int FIRST_BLOCK = 4096;

    @Override
    public DriverDescriptor descriptor() {
        return DESCRIPTOR;
    }

    @Override
    String name() {
        return "file";
    }

    @Override
    boolean opensDevices() {
        return false;
    }

    static String stripPrefix(String filename) {
        return filename.startsWith("file:") ? filename.substring(5) : filename;
    }

    @Override
    public void create(CreateContext ctx) throws BlockException {
        Options o = ctx.options();
        // Everything is checked before the file is touched.
        Preallocation prealloc = Preallocation.parse(o.get("preallocation", "off"));
        if (prealloc == Preallocation.METADATA) {
            throw BlockException.invalid("Unsupported preallocation mode: metadata");
        }
        long size = o.has("size") ? Sizes.parse(o.get("size")) : ctx.size();
        size = FileNode.roundUp(size, FileNode.SECTOR);
        o.getBool("nocow", false); // only btrfs knows it; QEMU ignores failures too
        if (o.has("extent_size_hint")) {
            Sizes.parse(o.get("extent_size_hint")); // only XFS knows it; QEMU ignores failures too
        }
        String filename = stripPrefix(ctx.filename());
        Path path = Path.of(filename);
        Native nat = nat();
        try (FileChannel ch = FileChannel.open(path, StandardOpenOption.CREATE, StandardOpenOption.READ,
                StandardOpenOption.WRITE)) {
            int fd = -1;
            ImageLock lock = null;
            try {
                if (nat != null) {
                    fd = nat.open(filename, Native.O_RDWR | Native.O_CLOEXEC);
                    // QEMU: make sure nobody else uses the file before emptying it.
                    lock = ImageLock.acquire(ImageLock.ofd(nat, fd), filename,
                            EnumSet.of(Permission.WRITE, Permission.RESIZE), EnumSet.of(Permission.CONSISTENT_READ,
                                    Permission.WRITE, Permission.WRITE_UNCHANGED));
                }
                FileNode.resize(nat, fd, ch, path, 0, 0, Preallocation.OFF);
                FileNode.resize(nat, fd, ch, path, 0, size, prealloc);
                if (prealloc == Preallocation.OFF && size > 0) {
                    FileNode.writeZeroBuffers(nat, fd, ch, 0, size < FIRST_BLOCK ? FileNode.SECTOR : FIRST_BLOCK);
                }
                if (prealloc == Preallocation.FULL) {
                    ch.force(true);
                }
            } finally {
                if (lock != null) {
                    lock.close();
                }
                if (fd >= 0) {
                    nat.close(fd);
                }
            }
        } catch (NoSuchFileException e) {
            throw new BlockException(Reason.NOT_FOUND, "Could not create '" + filename
                    + "': No such file or directory", e);
        } catch (AccessDeniedException e) {
            throw new BlockException(Reason.PERMISSION, "Could not create '" + filename + "': Permission denied", e);
        } catch (IOException e) {
            throw BlockException.io("Could not create '" + filename + "'", e);
        } catch (Native.Errno e) {
            throw new BlockException(Reason.IO, "Could not create '" + filename + "': " + e.getMessage(), e);
        }
    }
}
