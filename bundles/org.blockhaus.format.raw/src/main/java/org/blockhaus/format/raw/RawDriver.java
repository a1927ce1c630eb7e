package org.blockhaus.format.raw;

import java.nio.ByteBuffer;
import java.util.List;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.Options;
import org.blockhaus.api.Preallocation;
import org.blockhaus.api.spi.BlockDriver;
import org.blockhaus.api.spi.CreateContext;
import org.blockhaus.api.spi.DriverDescriptor;
import org.blockhaus.api.spi.DriverDescriptor.Kind;
import org.blockhaus.api.spi.OpenContext;
import org.blockhaus.api.spi.OptionSpec;
import org.blockhaus.api.spi.OptionSpec.OptionType;
import org.osgi.service.component.annotations.Component;

/**
 * QEMU's "raw" format: the image is its storage, byte for byte. The optional {@code offset} and
 * {@code size} options expose a window of the storage (a partition inside a disk, say).
 * Preallocation and the other create options belong to the protocol below, so create passes
 * them down.
 */
@Component(service = BlockDriver.class, property = {"blk.driver=raw", "blk.kind=format"})
public class RawDriver implements BlockDriver {
    static final DriverDescriptor DESCRIPTOR = new DriverDescriptor("raw", Kind.FORMAT,
            "raw disk image: the data as it is, optionally a window of it", List.of(),
            List.of(OptionSpec.of("offset", OptionType.SIZE, "offset in the disk where the image starts"),
                    OptionSpec.of("size", OptionType.SIZE, "virtual disk size")),
            List.of(OptionSpec.of("size", OptionType.SIZE, "Virtual disk size"),
                    OptionSpec.choice("preallocation", null, "Preallocation mode (allowed values: off, falloc, full)",
                            "off", "falloc", "full")));

    @Override
    public DriverDescriptor descriptor() {
        return DESCRIPTOR;
    }

    /** Anything can be raw; every other format that recognises its header wins. */
    @Override
    public int probe(ByteBuffer head, String filename) {
        return 1;
    }

    @Override
    public BlockNode open(OpenContext ctx) throws BlockException {
        Options o = ctx.options();
        long offset = o.getSize("offset", 0);
        long size = o.getSize("size", -1);
        BlockNode file = ctx.openFile();
        long fileSize = file.size();
        if (offset > fileSize) {
            throw BlockException.invalid("The sum of offset (" + offset + ") and size (0) has to be smaller or equal"
                    + " to the  actual size of the containing file (" + fileSize + ")");
        }
        if (size >= 0 && size > fileSize - offset) {
            throw BlockException.invalid("The sum of offset (" + offset + ") and size (" + size + ") has to be smaller"
                    + " or equal to the  actual size of the containing file (" + fileSize + ")");
        }
        if (size >= 0 && size % 512 != 0) {
            // QEMU keeps raw windows sector-granular so that the block layer's sector view stays exact
            throw BlockException.invalid("Specified size is not a multiple of 512");
        }
        return new RawNode(file, offset, size);
    }

    /** A raw image needs exactly its virtual size, whatever the source holds. */
    @Override
    public org.blockhaus.api.spi.MeasureResult measure(Options createOptions, long size, BlockNode source)
            throws BlockException {
        long bytes = source != null ? source.size() : size;
        return new org.blockhaus.api.spi.MeasureResult(bytes, bytes, -1);
    }

    @Override
    public void create(CreateContext ctx) throws BlockException {
        String prealloc = ctx.options().get("preallocation", "off");
        Preallocation.parse(prealloc); // refuses bad values before the file exists
        Options proto = Options.of("size", Long.toString(ctx.size()));
        if (ctx.options().has("preallocation")) {
            proto = proto.with("preallocation", prealloc);
        }
        ctx.createFile(proto);
    }
}
