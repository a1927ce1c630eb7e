package org.blockhaus.protocol.nullco;

import java.nio.ByteBuffer;
import java.util.concurrent.locks.LockSupport;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.BlockStatus;
import org.blockhaus.api.Capabilities;
import org.blockhaus.api.Capabilities.Feature;
import org.blockhaus.api.Capabilities.Support;

/** An open null device: every operation succeeds after {@code latencyNs}, nothing is stored. */
final class NullNode implements BlockNode {
    private static final Capabilities CAPABILITIES = Capabilities.builder()
            .with(Feature.WRITE, Support.NATIVE).with(Feature.FLUSH, Support.NATIVE)
            .with(Feature.WRITE_ZEROES, Support.NATIVE).with(Feature.FUA, Support.NATIVE)
            .with(Feature.BLOCK_STATUS, Support.NATIVE).build();
    private static final byte[] ZEROES = new byte[64 * 1024];

    private final long size;
    private final long latencyNs;
    private final boolean readZeroes;

    NullNode(long size, long latencyNs, boolean readZeroes) {
        this.size = size;
        this.latencyNs = latencyNs;
        this.readZeroes = readZeroes;
    }

    @Override
    public long size() {
        return size;
    }

    @Override
    public Capabilities capabilities() {
        return CAPABILITIES;
    }

    @Override
    public void read(long offset, ByteBuffer dst) {
        delay();
        if (!readZeroes) {
            dst.position(dst.limit()); // content unspecified, as in QEMU: the buffer is left untouched
            return;
        }
        while (dst.hasRemaining()) {
            dst.put(ZEROES, 0, Math.min(ZEROES.length, dst.remaining()));
        }
    }

    @Override
    public void write(long offset, ByteBuffer src, int flags) {
        delay();
        src.position(src.limit());
    }

    @Override
    public void writeZeroes(long offset, long length, int flags) {
        delay();
    }

    @Override
    public void flush() {
        delay();
    }

    /** QEMU answers "offset valid" for the whole range, plus "zero" when reads give zeroes. */
    @Override
    public BlockStatus blockStatus(long offset, long length) {
        int flags = BlockStatus.ALLOCATED | (readZeroes ? BlockStatus.ZERO : BlockStatus.DATA);
        return new BlockStatus(offset, length, flags, offset, null);
    }

    @Override
    public long allocatedSize() {
        return 0;
    }

    @Override
    public void close() throws BlockException {
    }

    private void delay() {
        if (latencyNs > 0) {
            LockSupport.parkNanos(latencyNs);
        }
    }
}
