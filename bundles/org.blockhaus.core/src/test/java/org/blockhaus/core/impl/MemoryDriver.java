package org.blockhaus.core.impl;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.Limits;
import org.blockhaus.api.spi.BlockDriver;
import org.blockhaus.api.spi.CreateContext;
import org.blockhaus.api.spi.DriverDescriptor;
import org.blockhaus.api.spi.OpenContext;
import org.blockhaus.api.spi.OptionSpec;

/**
 * A protocol for tests: "mem:NAME" is a byte array shared by name. It records every request it
 * sees, so tests can check what the core's I/O contract hands a driver.
 */
final class MemoryDriver implements BlockDriver {
    final Map<String, byte[]> disks = new ConcurrentHashMap<>();
    final List<String> requests = java.util.Collections.synchronizedList(new ArrayList<>());
    int alignment = 1;
    int maxTransfer = 0;
    /** Makes reads slow, to widen race windows in tests. */
    volatile int readDelayMillis = 0;

    @Override
    public DriverDescriptor descriptor() {
        return new DriverDescriptor("mem", DriverDescriptor.Kind.PROTOCOL, "test memory", List.of("mem:"),
                List.of(OptionSpec.of("filename", OptionSpec.OptionType.STRING, "name")),
                List.of(OptionSpec.of("size", OptionSpec.OptionType.SIZE, "size")));
    }

    @Override
    public BlockNode open(OpenContext ctx) throws BlockException {
        String name = ctx.options().get("filename");
        byte[] disk = disks.get(name);
        if (disk == null) {
            throw new BlockException(BlockException.Reason.NOT_FOUND, "Could not open '" + name + "': No such disk");
        }
        return new BlockNode() {
            @Override public long size() { return disk.length; }
            @Override public Limits limits() { return new Limits(alignment, maxTransfer, 0, 0, 0); }

            @Override
            public void read(long offset, ByteBuffer dst) {
                requests.add("read " + offset + " " + dst.remaining());
                dst.put(disk, (int) offset, dst.remaining());
                if (readDelayMillis > 0) {
                    try {
                        Thread.sleep(readDelayMillis); // after the copy: what was read may go stale
                    } catch (InterruptedException e) {
                        Thread.currentThread().interrupt();
                    }
                }
            }

            @Override
            public void write(long offset, ByteBuffer src, int flags) {
                requests.add("write " + offset + " " + src.remaining() + (flags != 0 ? " flags=" + flags : ""));
                src.get(disk, (int) offset, src.remaining());
            }

            @Override
            public void flush() {
                requests.add("flush");
            }

            @Override
            public void close() {
                requests.add("close");
            }
        };
    }

    @Override
    public void create(CreateContext ctx) throws BlockException {
        disks.put(ctx.filename().substring(4), new byte[(int) ctx.size()]);
    }

    @Override
    public org.blockhaus.api.Options parseFilename(String filename) {
        return org.blockhaus.api.Options.of("filename", filename.substring(4));
    }
}
