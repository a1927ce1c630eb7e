package org.blockhaus.nbd.server.impl;

import java.nio.ByteBuffer;
import java.util.Map;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.BlockStatus;
import org.blockhaus.api.Capabilities;
import org.blockhaus.api.Limits;

/**
 * What qemu-nbd's block-device options make of the image it serves, as one thin layer in front of
 * it: {@code --offset} (the export starts that far into the image), {@code --discard=ignore}
 * (qemu-nbd's default: trims succeed and change nothing, write-zeroes never unmap),
 * {@code --detect-zeroes=on|unmap} (all-zero writes become write-zeroes), and the flush half of
 * {@code --cache}: {@code writethrough}/{@code directsync} make every write FUA, {@code unsafe}
 * drops flushes. The host-cache half ({@code cache.direct}) goes to the file protocol as an
 * open option. {@link Session} looks through this layer for the backing chain's block status.
 */
final class ServedNode implements BlockNode {
    enum DetectZeroes { OFF, ON, UNMAP }

    private final BlockNode inner;
    private final long offset;
    private final boolean unmap;
    private final DetectZeroes detectZeroes;
    private final boolean writeThrough;
    private final boolean noFlush;

    ServedNode(BlockNode inner, long offset, boolean unmap, DetectZeroes detectZeroes, boolean writeThrough,
            boolean noFlush) {
        this.inner = inner;
        this.offset = offset;
        this.unmap = unmap;
        this.detectZeroes = detectZeroes;
        this.writeThrough = writeThrough;
        this.noFlush = noFlush;
    }

    BlockNode inner() {
        return inner;
    }

    long offset() {
        return offset;
    }

    @Override
    public long size() throws BlockException {
        return Math.max(0, inner.size() - offset);
    }

    @Override
    public void read(long at, ByteBuffer dst) throws BlockException {
        inner.read(offset + at, dst);
    }

    @Override
    public void write(long at, ByteBuffer src, int flags) throws BlockException {
        int f = writeThrough ? flags | FUA : flags;
        if (detectZeroes != DetectZeroes.OFF && src.remaining() > 0 && isZero(src)) {
            int zf = (f & FUA) | (detectZeroes == DetectZeroes.UNMAP && unmap ? MAY_UNMAP : 0);
            try {
                inner.writeZeroes(offset + at, src.remaining(), zf);
                src.position(src.limit());
                return;
            } catch (BlockException e) {
                if (e.reason() != BlockException.Reason.UNSUPPORTED) {
                    throw e;
                }
            }
        }
        inner.write(offset + at, src, f);
    }

    private static boolean isZero(ByteBuffer b) {
        int n = b.remaining();
        ByteBuffer zero = ByteBuffer.allocate(Math.min(n, 64 * 1024));
        for (int done = 0; done < n; done += zero.capacity()) {
            int len = Math.min(zero.capacity(), n - done);
            ByteBuffer part = b.duplicate().position(b.position() + done).limit(b.position() + done + len);
            if (part.mismatch(zero.duplicate().limit(len)) >= 0) {
                return false;
            }
        }
        return true;
    }

    @Override
    public Capabilities capabilities() {
        return inner.capabilities();
    }

    @Override
    public Limits limits() {
        return inner.limits();
    }

    @Override
    public void writeZeroes(long at, long length, int flags) throws BlockException {
        int f = writeThrough ? flags | FUA : flags;
        inner.writeZeroes(offset + at, length, unmap ? f : f & ~MAY_UNMAP);
    }

    @Override
    public void discard(long at, long length) throws BlockException {
        if (unmap) {
            inner.discard(offset + at, length);
        }
    }

    @Override
    public void flush() throws BlockException {
        if (!noFlush) {
            inner.flush();
        }
    }

    @Override
    public BlockStatus blockStatus(long at, long length) throws BlockException {
        BlockStatus s = inner.blockStatus(offset + at, length);
        return new BlockStatus(at, s.length(), s.flags(), s.hostOffset(), s.file());
    }

    @Override
    public Map<String, Object> info() throws BlockException {
        return inner.info();
    }

    /** The command that made this layer closes the image; the server never closes what it serves. */
    @Override
    public void close() {
    }
}
