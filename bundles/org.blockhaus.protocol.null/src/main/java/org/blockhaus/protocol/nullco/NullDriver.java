package org.blockhaus.protocol.nullco;

import java.util.List;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.Options;
import org.blockhaus.api.spi.BlockDriver;
import org.blockhaus.api.spi.DriverDescriptor;
import org.blockhaus.api.spi.DriverDescriptor.Kind;
import org.blockhaus.api.spi.OpenContext;
import org.blockhaus.api.spi.OptionSpec;
import org.blockhaus.api.spi.OptionSpec.OptionType;

/**
 * QEMU's null block drivers (block/null.c): a protocol with no storage behind it. Writes are
 * dropped; reads return zeroes only with {@code read-zeroes=on} (QEMU 7.2's default is off, and
 * the content is then unspecified: here the caller's buffer is left as it was). Useful for
 * benchmarks and tests. QEMU registers two variants that differ only in their I/O interface
 * (coroutines vs AIO); both are the same node here.
 */
abstract class NullDriver implements BlockDriver {
    /** QEMU's default size: 1 GiB. */
    static final long DEFAULT_SIZE = 1L << 30;

    static final List<OptionSpec> OPEN_OPTIONS = List.of(
            OptionSpec.of("size", OptionType.SIZE, "1073741824", "size of the null block"),
            OptionSpec.of("latency-ns", OptionType.NUMBER, "0", "nanoseconds (approximated) to wait before completing request"),
            OptionSpec.of("read-zeroes", OptionType.BOOL, "off", "return zeroes when read"));

    private final DriverDescriptor descriptor;

    NullDriver(String name) {
        descriptor = new DriverDescriptor(name, Kind.PROTOCOL,
                "null device: discards writes, reads zeroes with read-zeroes=on", List.of(name), OPEN_OPTIONS,
                List.of());
    }

    @Override
    public DriverDescriptor descriptor() {
        return descriptor;
    }

    /** Only "&lt;name&gt;://" names this driver; everything else goes in options (as in QEMU). */
    @Override
    public Options parseFilename(String filename) throws BlockException {
        String only = descriptor.name() + "://";
        if (!only.equals(filename)) {
            throw BlockException.invalid("The only allowed filename for this driver is '" + only + "'");
        }
        return Options.empty();
    }

    @Override
    public BlockNode open(OpenContext ctx) throws BlockException {
        Options o = ctx.options();
        long size = o.getSize("size", DEFAULT_SIZE);
        long latency = o.getLong("latency-ns", 0);
        if (latency < 0) {
            throw BlockException.invalid("latency-ns is invalid");
        }
        return new NullNode(size, latency, o.getBool("read-zeroes", false));
    }
}
