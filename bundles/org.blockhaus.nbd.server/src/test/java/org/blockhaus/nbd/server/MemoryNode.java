package org.blockhaus.nbd.server;

import java.nio.ByteBuffer;
import java.util.concurrent.ConcurrentHashMap;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.BlockStatus;
import org.blockhaus.api.Capabilities;
import org.blockhaus.api.Capabilities.Feature;
import org.blockhaus.api.Capabilities.Support;

/**
 * A sparse in-memory node: 64 KiB chunks that exist only once written. Absent chunks read as
 * zeroes and report as holes, so block status and sparse reads have something to show.
 */
final class MemoryNode implements BlockNode {
    static final int CHUNK = 64 * 1024;
    private final long size;
    private final ConcurrentHashMap<Long, byte[]> chunks = new ConcurrentHashMap<>();
    volatile int flushes;

    /** Bytes read so far (tests of NBD_CMD_CACHE see the prefetch). */
    long bytesRead;

    MemoryNode(long size) {
        this.size = size;
    }

    @Override
    public long size() {
        return size;
    }

    @Override
    public Capabilities capabilities() {
        return Capabilities.builder().with(Feature.WRITE, Support.NATIVE).with(Feature.FLUSH, Support.NATIVE)
                .with(Feature.WRITE_ZEROES, Support.NATIVE).with(Feature.DISCARD, Support.NATIVE)
                .with(Feature.BLOCK_STATUS, Support.NATIVE).build();
    }

    private void check(long offset, long len) throws BlockException {
        if (offset < 0 || len < 0 || offset > size || len > size - offset) {
            throw new BlockException(BlockException.Reason.OUT_OF_RANGE, "out of range " + offset + "+" + len);
        }
    }

    @Override
    public synchronized void read(long offset, ByteBuffer dst) throws BlockException {
        check(offset, dst.remaining());
        bytesRead += dst.remaining();
        while (dst.hasRemaining()) {
            long idx = offset / CHUNK;
            int in = (int) (offset % CHUNK);
            int n = Math.min(dst.remaining(), CHUNK - in);
            byte[] c = chunks.get(idx);
            if (c == null) {
                for (int i = 0; i < n; i++) {
                    dst.put((byte) 0);
                }
            } else {
                dst.put(c, in, n);
            }
            offset += n;
        }
    }

    @Override
    public synchronized void write(long offset, ByteBuffer src, int flags) throws BlockException {
        check(offset, src.remaining());
        while (src.hasRemaining()) {
            long idx = offset / CHUNK;
            int in = (int) (offset % CHUNK);
            int n = Math.min(src.remaining(), CHUNK - in);
            src.get(chunks.computeIfAbsent(idx, k -> new byte[CHUNK]), in, n);
            offset += n;
        }
    }

    @Override
    public synchronized void writeZeroes(long offset, long length, int flags) throws BlockException {
        check(offset, length);
        long end = offset + length;
        while (offset < end) {
            long idx = offset / CHUNK;
            int in = (int) (offset % CHUNK);
            int n = (int) Math.min(end - offset, CHUNK - in);
            if (in == 0 && n == CHUNK && (flags & MAY_UNMAP) != 0) {
                chunks.remove(idx);
            } else {
                byte[] c = chunks.get(idx);
                if (c != null) {
                    java.util.Arrays.fill(c, in, in + n, (byte) 0);
                }
            }
            offset += n;
        }
    }

    @Override
    public void discard(long offset, long length) throws BlockException {
        check(offset, length);
        long first = (offset + CHUNK - 1) / CHUNK;
        long last = (offset + length) / CHUNK;
        for (long i = first; i < last; i++) {
            chunks.remove(i);
        }
    }

    @Override
    public void flush() {
        flushes++;
    }

    @Override
    public BlockStatus blockStatus(long offset, long length) throws BlockException {
        check(offset, length);
        boolean present = chunks.containsKey(offset / CHUNK);
        long n = 0;
        long pos = offset;
        while (pos < offset + length && chunks.containsKey(pos / CHUNK) == present) {
            long step = CHUNK - pos % CHUNK;
            n += step;
            pos += step;
        }
        n = Math.min(n, length);
        int flags = present ? BlockStatus.DATA | BlockStatus.ALLOCATED : BlockStatus.ZERO | BlockStatus.ALLOCATED;
        return new BlockStatus(offset, n, flags, -1, null);
    }

    int chunkCount() {
        return chunks.size();
    }

    @Override
    public void close() {
    }
}
