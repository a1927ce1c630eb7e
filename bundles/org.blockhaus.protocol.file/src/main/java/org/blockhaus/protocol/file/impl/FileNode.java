package org.blockhaus.protocol.file.impl;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.util.Set;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.BlockStatus;
import org.blockhaus.api.Capabilities;
import org.blockhaus.api.Capabilities.Feature;
import org.blockhaus.api.Capabilities.Support;
import org.blockhaus.api.Limits;
import org.blockhaus.api.Preallocation;

/**
 * One open file or host device. Data moves through a {@link FileChannel} (positional, thread
 * safe); with {@code cache.direct=on} it moves through {@code pread/pwrite} on an O_DIRECT
 * descriptor with aligned bounce buffers instead. A second descriptor of our own (opened with
 * {@code open(2)} through FFM) carries the image locks and answers what FileChannel cannot:
 * holes, hole punching, allocation, device geometry.
 */
final class FileNode implements org.blockhaus.api.spi.PermissionAwareNode {
    static final int SECTOR = 512;
    /** Zeroes to copy from; read-only views are handed out, so sharing is safe. */
    private static final ByteBuffer ZEROS = ByteBuffer.allocateDirect(64 * 1024).asReadOnlyBuffer();

    private final String filename;
    private final Path path;
    private final boolean readOnly;
    private final boolean device;
    private final FileChannel channel;
    private final Native nat;
    private final int fd;
    private final boolean direct;
    private final Limits limits;
    private volatile ImageLock lock;

    FileNode(String filename, Path path, boolean readOnly, boolean device, FileChannel channel, Native nat, int fd,
            boolean direct, Limits limits) {
        this.filename = filename;
        this.path = path;
        this.readOnly = readOnly;
        this.device = device;
        this.channel = channel;
        this.nat = nat;
        this.fd = fd;
        this.direct = direct;
        this.limits = limits;
    }

    void setLock(ImageLock lock) {
        this.lock = lock;
    }

    /** The core found the format on top of this file: hold the lock bytes that format needs. */
    @Override
    public void updatePermissions(java.util.Set<org.blockhaus.api.spi.Permission> permissions,
            java.util.Set<org.blockhaus.api.spi.Permission> shared) throws BlockException {
        ImageLock l = lock;
        if (l != null) {
            l.update(permissions, shared);
        }
    }

    /** Lock bytes held right now (empty with locking=off). */
    Set<Long> lockBytes() {
        ImageLock l = lock;
        return l == null ? Set.of() : l.heldBytes();
    }

    int nativeFd() {
        return fd;
    }

    @Override
    public Capabilities capabilities() {
        Capabilities.Builder b = Capabilities.builder().with(Feature.FLUSH, Support.NATIVE);
        if (!readOnly) {
            b.with(Feature.WRITE, Support.NATIVE);
            if (nat != null) {
                b.with(Feature.WRITE_ZEROES, Support.NATIVE).with(Feature.DISCARD, Support.NATIVE);
            }
            if (!device) {
                b.with(Feature.RESIZE, Support.NATIVE);
            }
        }
        if (nat != null && !device) {
            b.with(Feature.BLOCK_STATUS, Support.NATIVE);
        }
        return b.build();
    }

    @Override
    public Limits limits() {
        return limits;
    }

    /**
     * The length as last seen, or -1. QEMU keeps a node's size rather than asking the kernel
     * on every request; so do we: the core checks bounds on each request, and an fstat per
     * request per layer cost half the throughput of 4 KiB reads. Our own writes past it and
     * every resize forget it.
     */
    private volatile long knownLength = -1;

    /** The length of the file or device in bytes, not rounded. */
    long length() throws BlockException {
        long known = knownLength;
        if (known >= 0) {
            return known;
        }
        long len = queryLength();
        knownLength = len;
        return len;
    }

    /** After a write that may have extended the file (the sector-rounded tail, or zeroing). */
    private void wroteUpTo(long end) {
        long known = knownLength;
        if (known >= 0 && end > known) {
            knownLength = -1;
        }
    }

    private long queryLength() throws BlockException {
        try {
            if (device && nat != null) {
                try {
                    return nat.ioctlLong(fd, Native.BLKGETSIZE64);
                } catch (Native.Errno notABlockDevice) {
                    return nat.lseek(fd, 0, Native.SEEK_END); // character devices, as QEMU's raw_getlength
                }
            }
            if (channel != null) {
                return channel.size();
            }
            return nat.fstat(fd).size();
        } catch (IOException e) {
            throw BlockException.io("Could not get the size of '" + filename + "'", e);
        } catch (Native.Errno e) {
            throw new BlockException(Reason.IO, "Could not get the size of '" + filename + "': " + e.getMessage());
        }
    }

    /** QEMU counts in sectors: a file's size is rounded up to 512 bytes, the tail reads as zeroes. */
    @Override
    public long size() throws BlockException {
        long len = length();
        return device ? len : roundUp(len, SECTOR);
    }

    @Override
    public void read(long offset, ByteBuffer dst) throws BlockException {
        if (direct) {
            directRead(offset, dst);
            return;
        }
        try {
            long pos = offset;
            while (dst.hasRemaining()) {
                int n = channel.read(dst, pos);
                if (n < 0) {
                    zeroFill(dst); // past the end of the file: QEMU reads zeroes
                    return;
                }
                pos += n;
            }
        } catch (IOException e) {
            throw ioError("read", e);
        }
    }

    @Override
    public void write(long offset, ByteBuffer src, int flags) throws BlockException {
        long end = offset + src.remaining();
        try {
            writeAt(offset, src);
        } finally {
            wroteUpTo(end);
        }
    }

    private void writeAt(long offset, ByteBuffer src) throws BlockException {
        checkWritable();
        if (direct) {
            directWrite(offset, src);
            return;
        }
        bufferedWrites.lock();
        try {
            allocateAhead(offset, src.remaining());
            long pos = offset;
            while (src.hasRemaining()) {
                pos += channel.write(src, pos);
            }
        } catch (IOException e) {
            throw ioError("write", e);
        } finally {
            bufferedWrites.unlock();
        }
    }

    /** Writes smaller than this go without {@link #allocateAhead}: one more system call would not pay. */
    static final int ALLOCATE_AHEAD_MIN = 256 * 1024;
    /** 0 not decided yet, 1 allocate ahead of large writes, -1 never (not ext4, or fallocate refused). */
    private volatile int allocateAhead;

    /**
     * On ext4, a buffered write into a hole (or past the end) reserves delayed-allocation space page
     * by page; writing into blocks that one fallocate call reserved first costs about half the
     * system time (measured on this project's 2-core VM, 1.5 GiB in 2 MiB writes: 0.21-0.32 s with
     * against 0.44-0.77 s without, page cache warm). Bulk writers (convert, qcow2's new clusters)
     * write whole ranges, so the blocks reserved are blocks the write fills anyway; the data, the
     * file length and which ranges read as zero are the same either way (mode 0 only allocates and
     * grows the length to what the write sets). Only ext4 is measured here: other file systems
     * (tmpfs zeroes the pages it allocates, btrfs copies on write) are left alone. A failure of
     * fallocate changes nothing: the write then reserves as it would have.
     */
    private void allocateAhead(long offset, int len) {
        if (len < ALLOCATE_AHEAD_MIN || nat == null || device) {
            return;
        }
        int mode = allocateAhead;
        if (mode == 0) {
            try {
                mode = nat.fileSystemType(fd) == Native.EXT4_SUPER_MAGIC ? 1 : -1;
            } catch (Native.Errno | RuntimeException e) {
                mode = -1;
            }
            allocateAhead = mode;
        }
        if (mode < 0) {
            return;
        }
        try {
            nat.fallocate(fd, 0, offset, len);
        } catch (Native.Errno e) {
            if (notSupported(e)) {
                allocateAhead = -1;
            } // ENOSPC and the like: the write itself reports what it meets
        }
    }

    /**
     * Buffered writes to one file take its inode lock in the kernel one at a time anyway (ext4's
     * i_rwsem); several writers spin on it instead of waiting: a convert with 8 writers spent half
     * its CPU in rwsem_spin_on_owner. Waiting here costs no parallelism and no CPU. O_DIRECT
     * writes, which the kernel may run side by side, do not take it.
     */
    private final java.util.concurrent.locks.ReentrantLock bufferedWrites = new java.util.concurrent.locks.ReentrantLock();

    private void directRead(long offset, ByteBuffer dst) throws BlockException {
        int len = dst.remaining();
        try (Arena a = Arena.ofConfined()) {
            MemorySegment buf = a.allocate(len, limits.requestAlignment());
            long done = 0;
            while (done < len) {
                long n = nat.pread(fd, buf.asSlice(done), len - done, offset + done);
                if (n == 0) {
                    break;
                }
                done += n;
            }
            dst.put(buf.asSlice(0, done).asByteBuffer());
            zeroFill(dst);
        } catch (Native.Errno e) {
            throw errnoError("read", e);
        }
    }

    private void directWrite(long offset, ByteBuffer src) throws BlockException {
        int len = src.remaining();
        try (Arena a = Arena.ofConfined()) {
            MemorySegment buf = a.allocate(len, limits.requestAlignment());
            buf.asByteBuffer().put(src);
            long done = 0;
            while (done < len) {
                done += nat.pwrite(fd, buf.asSlice(done), len - done, offset + done);
            }
        } catch (Native.Errno e) {
            throw errnoError("write", e);
        }
    }

    static void zeroFill(ByteBuffer dst) {
        while (dst.hasRemaining()) {
            int n = Math.min(dst.remaining(), ZEROS.capacity());
            dst.put(ZEROS.slice(0, n));
        }
    }

    @Override
    public void flush() throws BlockException {
        try {
            if (channel != null) {
                channel.force(true);
            } else {
                nat.fdatasync(fd);
            }
        } catch (IOException e) {
            throw ioError("flush", e);
        } catch (Native.Errno e) {
            throw errnoError("flush", e);
        }
    }

    /**
     * Zeroes without writing: punch a hole when the caller allows unmapping, else ask the file
     * system for a zeroed range. Where neither works the core writes zero buffers.
     */
    @Override
    public void writeZeroes(long offset, long length, int flags) throws BlockException {
        try {
            zeroRange(offset, length, flags);
        } finally {
            wroteUpTo(offset + length);
        }
    }

    private void zeroRange(long offset, long length, int flags) throws BlockException {
        checkWritable();
        requireNative("write zeroes");
        if ((flags & MAY_UNMAP) != 0) {
            try {
                nat.fallocate(fd, Native.FALLOC_FL_PUNCH_HOLE | Native.FALLOC_FL_KEEP_SIZE, offset, length);
                return;
            } catch (Native.Errno e) {
                if (!notSupported(e)) {
                    throw errnoError("write zeroes", e);
                }
            }
        }
        try {
            int mode = Native.FALLOC_FL_ZERO_RANGE | (device ? Native.FALLOC_FL_KEEP_SIZE : 0);
            nat.fallocate(fd, mode, offset, length);
        } catch (Native.Errno e) {
            if (notSupported(e)) {
                throw BlockException.unsupported("write zeroes on '" + filename + "'");
            }
            throw errnoError("write zeroes", e);
        }
    }

    @Override
    public void discard(long offset, long length) throws BlockException {
        checkWritable();
        requireNative("discard");
        try {
            nat.fallocate(fd, Native.FALLOC_FL_PUNCH_HOLE | Native.FALLOC_FL_KEEP_SIZE, offset, length);
        } catch (Native.Errno e) {
            if (notSupported(e)) {
                throw BlockException.unsupported("discard on '" + filename + "'");
            }
            throw errnoError("discard", e);
        }
    }

    private static boolean notSupported(Native.Errno e) {
        return e.errno == Native.EOPNOTSUPP || e.errno == Native.ENOSYS || e.errno == Native.EINVAL;
    }

    /**
     * Holes from {@code lseek(SEEK_DATA/SEEK_HOLE)}, answered as QEMU's file-posix does: data is
     * "data, allocated", a hole "zero, allocated" (the protocol layer decides its own content),
     * and the tail past the end of the file reads as zeroes.
     */
    @Override
    public BlockStatus blockStatus(long offset, long length) throws BlockException {
        if (nat == null || device) {
            return status(offset, length, BlockStatus.DATA);
        }
        long eof = length();
        if (offset >= eof) {
            return status(offset, length, BlockStatus.ZERO);
        }
        long data;
        try {
            data = nat.lseek(fd, offset, Native.SEEK_DATA);
        } catch (Native.Errno e) {
            if (e.errno == Native.ENXIO) { // a hole up to the end of the file, then the zero tail
                return status(offset, length, BlockStatus.ZERO);
            }
            return status(offset, length, BlockStatus.DATA); // file system cannot tell
        }
        if (data > offset) {
            return status(offset, Math.min(data - offset, length), BlockStatus.ZERO);
        }
        long hole;
        try {
            hole = nat.lseek(fd, offset, Native.SEEK_HOLE);
        } catch (Native.Errno e) {
            return status(offset, length, BlockStatus.DATA);
        }
        return status(offset, Math.min(Math.max(hole - offset, 1), length), BlockStatus.DATA);
    }

    private static BlockStatus status(long offset, long length, int kind) {
        return new BlockStatus(offset, length, kind | BlockStatus.ALLOCATED, offset, null);
    }

    /** QEMU's resize of a file: off = ftruncate, falloc = fallocate the growth, full = write it. */
    @Override
    public void truncate(long size, boolean exact, Preallocation prealloc) throws BlockException {
        checkWritable();
        if (device) {
            if (prealloc != Preallocation.OFF) {
                throw BlockException.invalid("Preallocation mode '" + prealloc.qemuName()
                        + "' unsupported for this non-regular file");
            }
            long cur = length();
            if (size != cur && exact) {
                throw new BlockException(Reason.UNSUPPORTED, "Cannot resize device files");
            }
            if (size > cur) {
                throw new BlockException(Reason.UNSUPPORTED, "Cannot grow device files");
            }
            return;
        }
        long cur = length();
        if (prealloc != Preallocation.OFF && size < cur) {
            throw BlockException.invalid("Cannot use preallocation for shrinking files");
        }
        boolean done = false;
        try {
            resize(nat, fd, channel, path, cur, size, prealloc);
            done = true;
        } finally {
            // the file is 'size' bytes now: growing formats (qcow2 grows its file per allocating
            // write) then need no fstat on their next request
            knownLength = done ? size : -1;
        }
    }

    /** Shared by resize and create: grows or shrinks the file behind {@code fd}. */
    static void resize(Native nat, int fd, FileChannel channel, Path path, long cur, long size,
            Preallocation prealloc) throws BlockException {
        try {
            switch (prealloc) {
                case OFF -> setLength(nat, fd, channel, size);
                case FALLOC -> {
                    if (nat == null) {
                        throw BlockException.unsupported("Preallocation mode 'falloc' without native access");
                    }
                    if (size > cur) {
                        try {
                            nat.fallocate(fd, 0, cur, size - cur);
                        } catch (Native.Errno e) {
                            throw new BlockException(e.errno == Native.ENOSPC ? Reason.NO_SPACE : Reason.IO,
                                    "Could not preallocate new data: " + e.getMessage());
                        }
                    }
                    setLength(nat, fd, channel, size);
                }
                case FULL -> {
                    setLength(nat, fd, channel, size);
                    writeZeroBuffers(nat, fd, channel, cur, size);
                }
                case METADATA -> throw BlockException.invalid("Unsupported preallocation mode: metadata");
            }
        } catch (IOException e) {
            String m = e.getMessage() == null ? "" : e.getMessage();
            throw new BlockException(m.contains("No space") ? Reason.NO_SPACE
                    : m.contains("File too large") ? Reason.OUT_OF_RANGE : Reason.IO, "Could not resize file: " + m, e);
        }
    }

    private static void setLength(Native nat, int fd, FileChannel channel, long size)
            throws IOException {
        if (nat != null && fd >= 0) {
            try {
                nat.ftruncate(fd, size);
                return;
            } catch (Native.Errno e) {
                throw new IOException(e.getMessage(), e);
            }
        }
        if (size <= channel.size()) {
            channel.truncate(size);
        } else if (size > 0) {
            // FileChannel cannot extend a file sparsely. Another descriptor (RandomAccessFile) would
            // drop our POSIX locks when closed, so write the last byte: one block gets allocated.
            channel.write(ByteBuffer.allocate(1), size - 1);
        }
    }

    static void writeZeroBuffers(Native nat, int fd, FileChannel channel, long from, long to) throws IOException {
        ByteBuffer zeros = ByteBuffer.allocateDirect((1 << 20) + 4096).alignedSlice(4096).slice(0, 1 << 20);
        for (long at = from; at < to; ) {
            int n = (int) Math.min(zeros.capacity(), to - at);
            zeros.clear().limit(n);
            if (channel != null) {
                while (zeros.hasRemaining()) {
                    at += channel.write(zeros, at);
                }
            } else {
                MemorySegment seg = MemorySegment.ofBuffer(zeros);
                try {
                    at += nat.pwrite(fd, seg, n, at);
                } catch (Native.Errno e) {
                    throw new IOException(e.getMessage(), e);
                }
            }
        }
    }

    /** st_blocks * 512: what the file really occupies (qemu-img's "disk size"). */
    @Override
    public long allocatedSize() throws BlockException {
        if (nat == null) {
            return -1;
        }
        try {
            return nat.fstat(fd).blocks() * 512;
        } catch (Native.Errno e) {
            throw errnoError("stat", e);
        }
    }

    @Override
    public boolean hasZeroInit() {
        return !device;
    }

    @Override
    public void close() throws BlockException {
        ImageLock l = lock;
        lock = null;
        if (l != null) {
            l.close();
        }
        BlockException failure = null;
        if (channel != null) {
            try {
                channel.close();
            } catch (IOException e) {
                failure = ioError("close", e);
            }
        }
        if (nat != null && fd >= 0) {
            try {
                nat.close(fd);
            } catch (Native.Errno e) {
                failure = failure != null ? failure : errnoError("close", e);
            }
        }
        if (failure != null) {
            throw failure;
        }
    }

    private void checkWritable() throws BlockException {
        if (readOnly) {
            throw new BlockException(Reason.READ_ONLY, "'" + filename + "' is open read-only");
        }
    }

    private void requireNative(String what) throws BlockException {
        if (nat == null) {
            throw BlockException.unsupported(what + " without native access");
        }
    }

    private BlockException ioError(String op, IOException e) {
        String m = e.getMessage();
        Reason r = m != null && m.contains("No space left") ? Reason.NO_SPACE : Reason.IO;
        return new BlockException(r, "Could not " + op + " '" + filename + "': " + m, e);
    }

    private BlockException errnoError(String op, Native.Errno e) {
        Reason r = e.errno == Native.ENOSPC ? Reason.NO_SPACE : Reason.IO;
        return new BlockException(r, "Could not " + op + " '" + filename + "': " + e.getMessage(), e);
    }

    static long roundUp(long v, long align) {
        return (v + align - 1) / align * align;
    }
}
