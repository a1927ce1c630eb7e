package org.blockhaus.api.spi;

import java.nio.ByteBuffer;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.Options;
import org.osgi.annotation.versioning.ConsumerType;

/**
 * A block driver, registered as an OSGi service by its bundle with the service properties
 * {@code blk.driver=<qemu name>} and {@code blk.kind=format|protocol|filter}.
 */
@ConsumerType
public interface BlockDriver {
    /** Service property naming the driver (QEMU's driver name). */
    String DRIVER_PROPERTY = "blk.driver";
    /** Service property: format, protocol or filter. */
    String KIND_PROPERTY = "blk.kind";

    DriverDescriptor descriptor();

    /**
     * How sure this format is that {@code head} (the first bytes of the file, at most 2 KiB,
     * possibly fewer for short files) is one of its images: 0 = no, 100 = certain.
     */
    default int probe(ByteBuffer head, String filename) {
        return 0;
    }

    /**
     * Protocols: how sure this driver is that a plain filename (no URI scheme, no prefix) is one
     * of its kind, 0..100; e.g. host_device claims block devices. The file protocol is the
     * fallback when nobody claims a name.
     */
    default int probeDevice(String filename) {
        return 0;
    }

    /**
     * Protocols: the one filename that stands for these options (QEMU's exact filename), which
     * {@code info} shows whatever form the user gave (a URI, a legacy form, json: or dotted
     * options); null keeps the name the user gave, or json:{...} for options alone.
     */
    default String exactFilename(Options options) {
        return null;
    }

    /**
     * Protocols: turns a filename in one of this driver's forms into options. The default
     * keeps it as the {@code filename} option.
     */
    default Options parseFilename(String filename) throws BlockException {
        return Options.of("filename", filename);
    }

    BlockNode open(OpenContext ctx) throws BlockException;

    default void create(CreateContext ctx) throws BlockException {
        throw new BlockException(BlockException.Reason.UNSUPPORTED,
                "Driver '" + descriptor().name() + "' does not support image creation");
    }

    /**
     * Space needed to convert {@code source} (or to create an empty image of {@code size} bytes
     * when source is null) with the given create options.
     */
    default MeasureResult measure(Options createOptions, long size, BlockNode source) throws BlockException {
        throw new BlockException(BlockException.Reason.UNSUPPORTED,
                "Format driver '" + descriptor().name() + "' does not support measure");
    }
}
