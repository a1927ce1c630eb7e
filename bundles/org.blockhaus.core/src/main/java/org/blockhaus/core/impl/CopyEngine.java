package org.blockhaus.core.impl;

import java.nio.ByteBuffer;
import java.util.ArrayDeque;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.BlockService.Progress;
import org.blockhaus.api.ConvertOptions;
import org.blockhaus.api.Image;
import org.blockhaus.core.ChainStatus;

/**
 * qemu-img convert's copy loop. The source is walked by block status (merged down its backing
 * chain, {@link ChainWalk}), so holes and zero clusters are never read; data is read by up to
 * {@code -m} virtual threads ahead of the writer. Formats that allocate are written in order by
 * one writer (qemu-img's default; -W lets the workers write), raw targets and compressed writes
 * from the workers. Runs of zeroes at least {@code -S} long become holes. With -B only what the
 * source's top layer allocates is copied.
 */
final class CopyEngine {
    private static final int SECTOR = 512;

    /** One piece of the copy: either data to write, or a zero range. */
    record Piece(long targetOffset, long length, ByteBuffer data) {
    }

    /** What one worker read: its pieces, and the pooled buffer they live in (or null). */
    private record Chunk(List<Piece> pieces, ByteBuffer buffer) {
    }

    /**
     * Reused I/O buffers: fresh direct buffers cost a page fault per page, which for a 2 GiB
     * copy was most of the time spent in the kernel. The most recently returned buffer is handed
     * out first, so a copy cycles through as few buffers as keep the pipeline busy and the kernel
     * copies from memory still in the CPU's caches; page-aligned, as the kernel's copies are
     * fastest then (and O_DIRECT needs it).
     */
    private static final class BufferPool {
        private final java.util.concurrent.LinkedBlockingDeque<ByteBuffer> free;

        BufferPool(int count, int size) {
            free = new java.util.concurrent.LinkedBlockingDeque<>(count);
            for (int i = 0; i < count; i++) {
                free.add(ByteBuffer.allocateDirect(size + 4096).alignedSlice(4096).limit(size).slice());
            }
        }

        ByteBuffer take() throws BlockException {
            try {
                return free.takeFirst().clear();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new BlockException(Reason.IO, "convert interrupted");
            }
        }

        void release(ByteBuffer b) {
            if (b != null) {
                free.offerFirst(b);
            }
        }
    }

    void convert(List<Image> sources, Image target, ConvertOptions opts, Progress progress) throws BlockException {
        long total = 0;
        for (Image s : sources) {
            total = Math.addExact(total, s.size());
        }
        long targetSize = target.size();
        if (targetSize < total) {
            throw BlockException.invalid("Output image is too small (" + targetSize + " < " + total + " bytes)");
        }
        // -S 0 asks for a fully allocated target: zero ranges are written too, and not unmapped
        boolean zeroInit = opts.targetIsZero() && opts.minSparse() > 0;
        int zeroFlags = opts.minSparse() > 0 ? BlockNode.MAY_UNMAP : 0;
        progress.update(0);
        long base = 0;
        long done = 0;
        BufferPool pool = new BufferPool(opts.parallel() + 1, opts.bufferSize());
        // raw stores every byte at its guest offset, so write order cannot change its layout: its
        // writes go out from the workers. Formats that allocate keep qemu-img's order unless -W.
        boolean writeInWorker = opts.compress() || opts.outOfOrder() || target.driverName().equals("raw");
        // (the file protocol lets one buffered write at a time into a file: the kernel does anyway)
        Writer writer = new Writer(target, zeroInit, opts.compress() ? BlockNode.COMPRESSED : 0, zeroFlags);
        try (ExecutorService readers = Executors.newVirtualThreadPerTaskExecutor()) {
            ArrayDeque<Future<Chunk>> window = new ArrayDeque<>();
            for (Image src : sources) {
                long size = src.size();
                for (long off = 0; off < size; ) {
                    long len = Math.min(opts.bufferSize(), size - off);
                    final long at = off;
                    final long tbase = base;
                    if (writeInWorker) {
                        window.add(readers.submit(() -> {
                            Chunk c = opts.compress() ? readWhole(src, at, len, tbase, opts, pool)
                                    : readChunk(src, at, len, tbase, opts, pool, true);
                            try {
                                writer.writeAll(c.pieces());
                            } finally {
                                pool.release(c.buffer());
                            }
                            return new Chunk(List.of(new Piece(tbase + at, len, null)), null);
                        }));
                    } else {
                        window.add(readers.submit(() -> readChunk(src, at, len, tbase, opts, pool, true)));
                    }
                    off += len;
                    if (window.size() >= opts.parallel()) {
                        done += finish(writer, take(window), writeInWorker, pool);
                        progress.update(100.0 * done / Math.max(1, total));
                    }
                }
                base += size;
            }
            while (!window.isEmpty()) {
                done += finish(writer, take(window), writeInWorker, pool);
                progress.update(100.0 * done / Math.max(1, total));
            }
        }
        target.flush();
        progress.update(100);
    }

    /** Writes pieces into the target: data as data, zero ranges as the options ask. */
    private record Writer(Image target, boolean zeroInit, int flags, int zeroFlags) {
        long writeAll(List<Piece> pieces) throws BlockException {
            return CopyEngine.writeAll(target, pieces, zeroInit, flags, zeroFlags);
        }
    }

    private static Chunk take(ArrayDeque<Future<Chunk>> window) throws BlockException {
        Future<Chunk> f = window.poll();
        try {
            return f.get();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new BlockException(Reason.IO, "convert interrupted");
        } catch (ExecutionException e) {
            if (e.getCause() instanceof BlockException be) {
                throw be;
            }
            throw new BlockException(Reason.IO, "convert failed: " + e.getCause(), e.getCause());
        }
    }

    /** Writes what a worker read, unless the worker already wrote it (then only counts it). */
    private static long finish(Writer writer, Chunk chunk, boolean writtenByWorker, BufferPool pool)
            throws BlockException {
        if (writtenByWorker) {
            long n = 0;
            for (Piece p : chunk.pieces()) {
                n += p.length();
            }
            return n;
        }
        try {
            return writer.writeAll(chunk.pieces());
        } finally {
            pool.release(chunk.buffer());
        }
    }

    /** -c: whole chunks, zero or not, so the format can compress cluster by cluster. */
    private static Chunk readWhole(Image src, long off, long len, long targetBase, ConvertOptions opts,
            BufferPool pool) throws BlockException {
        ChainStatus st = ChainWalk.status(src, off, len);
        if (st.isZero() && st.length() == len) {
            return new Chunk(List.of(new Piece(targetBase + off, len, null)), null);
        }
        if (opts.skipUnallocated() && src.backing() != null) {
            // -B: whole clusters must still be compressed, so only the top layer's ranges are read
            return readChunk(src, off, len, targetBase, opts, pool, false);
        }
        ByteBuffer buf = pool.take().limit((int) len);
        src.read(off, buf);
        buf.flip();
        return new Chunk(List.of(new Piece(targetBase + off, len, buf)), buf);
    }

    private static long writeAll(Image target, List<Piece> pieces, boolean zeroInit, int flags, int zeroFlags)
            throws BlockException {
        long n = 0;
        for (Piece p : pieces) {
            if (p.data() == UNALLOCATED) {
                // -B: not written, only counted
            } else if (p.data() != null) {
                target.write(p.targetOffset(), p.data(), flags);
            } else if (!zeroInit) {
                if (zeroFlags == 0) {
                    writeZeroBuffers(target, p.targetOffset(), p.length());
                } else {
                    target.writeZeroes(p.targetOffset(), p.length(), zeroFlags);
                }
            }
            n += p.length();
        }
        return n;
    }

    private static final ByteBuffer ZERO_MIB = ByteBuffer.allocateDirect(1 << 20);

    /** Marks a piece that -B leaves unallocated (counted for progress, never written). */
    private static final ByteBuffer UNALLOCATED = ByteBuffer.allocate(0);

    /** -S 0: zeroes written as data, so the target is allocated as qemu-img's is. */
    private static void writeZeroBuffers(Image target, long offset, long length) throws BlockException {
        for (long at = offset; at < offset + length; ) {
            int n = (int) Math.min(ZERO_MIB.capacity(), offset + length - at);
            target.write(at, ZERO_MIB.duplicate().clear().limit(n), 0);
            at += n;
        }
    }

    /** Reads one chunk of the source and splits it into data and zero pieces. */
    private static Chunk readChunk(Image src, long off, long len, long targetBase, ConvertOptions opts,
            BufferPool pool, boolean splitZeroes) throws BlockException {
        List<Piece> out = new java.util.ArrayList<>();
        ByteBuffer buffer = null;
        long end = off + len;
        long at = off;
        try {
            // -B: the target's backing file stands for the source's, so only what the source's top
            // layer allocates is copied; a source without a backing file decides every byte itself
            boolean topOnly = opts.skipUnallocated() && src.backing() != null;
            while (at < end) {
                ChainStatus st = ChainWalk.status(src, at, end - at);
                long n = st.length();
                if (topOnly && !st.allocatedInTop()) {
                    out.add(new Piece(targetBase + at, n, UNALLOCATED)); // the target's backing file provides it
                } else if (st.isZero()) {
                    out.add(new Piece(targetBase + at, n, null));
                } else {
                    if (buffer == null) {
                        buffer = pool.take();
                    }
                    ByteBuffer buf = buffer.slice((int) (at - off), (int) n);
                    src.read(at, buf);
                    buf.flip();
                    splitZeroes(buf, targetBase + at, splitZeroes ? opts.minSparse() : 0, out);
                }
                at += n;
            }
        } catch (BlockException | RuntimeException e) {
            pool.release(buffer);
            throw e;
        }
        return new Chunk(out, buffer);
    }

    /**
     * qemu-img's -S: a run of zero sectors at least {@code minSparse} bytes long is not written;
     * shorter runs are written as data. {@code minSparse == 0} writes everything.
     */
    static void splitZeroes(ByteBuffer buf, long targetOffset, long minSparse, List<Piece> out) {
        int len = buf.remaining();
        if (minSparse <= 0) {
            out.add(new Piece(targetOffset, len, buf));
            return;
        }
        int granule = (int) Math.min(Math.max(SECTOR, minSparse), 4096);
        int dataStart = 0;
        int pos = 0;
        while (pos < len) {
            int zeroStart = nextZeroGranule(buf, pos, granule, len);
            if (zeroStart >= len) {
                break;
            }
            int zeroEnd = zeroStart;
            while (zeroEnd < len && isZero(buf, zeroEnd, Math.min(granule, len - zeroEnd))) {
                zeroEnd += Math.min(granule, len - zeroEnd);
            }
            if (zeroEnd - zeroStart >= minSparse) {
                if (zeroStart > dataStart) {
                    out.add(new Piece(targetOffset + dataStart, zeroStart - dataStart,
                            buf.slice(dataStart, zeroStart - dataStart)));
                }
                out.add(new Piece(targetOffset + zeroStart, zeroEnd - zeroStart, null));
                dataStart = zeroEnd;
            }
            pos = zeroEnd;
        }
        if (dataStart < len) {
            out.add(new Piece(targetOffset + dataStart, len - dataStart, buf.slice(dataStart, len - dataStart)));
        }
    }

    private static int nextZeroGranule(ByteBuffer buf, int from, int granule, int len) {
        for (int p = from; p < len; p += granule) {
            if (isZero(buf, p, Math.min(granule, len - p))) {
                return p;
            }
        }
        return len;
    }

    private static final ByteBuffer ZEROES = ByteBuffer.allocateDirect(4096);

    static boolean isZero(ByteBuffer buf, int pos, int n) {
        // Data granules nearly always differ from zero in their first or last bytes: answering
        // those from two reads, without the two slices a mismatch needs, took the zero scan of a
        // 2 GiB convert from a noticeable share of the readers' CPU to almost nothing.
        if (n >= 16 && (buf.getLong(pos) != 0 || buf.getLong(pos + n - 8) != 0)) {
            return false;
        }
        return buf.slice(pos, n).mismatch(ZEROES.slice(0, n)) < 0;
    }
}
