package org.blockhaus.format.raw;

import java.nio.ByteBuffer;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.BlockStatus;
import org.blockhaus.api.Capabilities;
import org.blockhaus.api.Limits;
import org.blockhaus.api.Preallocation;

/** An open raw image: every operation goes to the storage, shifted by the window's offset. */
final class RawNode implements BlockNode {
    private final BlockNode file;
    private final long offset;
    /** Fixed window size, or -1 to follow the storage's size. */
    private final long fixedSize;

    RawNode(BlockNode file, long offset, long fixedSize) {
        this.file = file;
        this.offset = offset;
        this.fixedSize = fixedSize;
    }

    @Override
    public long size() throws BlockException {
        return fixedSize >= 0 ? fixedSize : Math.max(0, file.size() - offset);
    }

    @Override public void read(long off, ByteBuffer dst) throws BlockException { file.read(offset + off, dst); }
    @Override public void write(long off, ByteBuffer src, int flags) throws BlockException { file.write(offset + off, src, flags); }
    @Override public Capabilities capabilities() { return file.capabilities(); }
    @Override public Limits limits() { return file.limits(); }
    @Override public void writeZeroes(long off, long len, int flags) throws BlockException { file.writeZeroes(offset + off, len, flags); }
    @Override public void discard(long off, long len) throws BlockException { file.discard(offset + off, len); }
    @Override public void flush() throws BlockException { file.flush(); }
    @Override public long allocatedSize() throws BlockException { return file.allocatedSize(); }
    @Override public boolean hasZeroInit() { return offset == 0 && fixedSize < 0 && file.hasZeroInit(); }

    @Override
    public BlockStatus blockStatus(long off, long len) throws BlockException {
        BlockStatus s = file.blockStatus(offset + off, len);
        // raw decides all of its content: whatever the storage says is allocated at this layer,
        // and the data lives in the file at the same offset.
        int flags = s.flags() | BlockStatus.ALLOCATED;
        return new BlockStatus(off, s.length(), flags, offset + off, file);
    }

    @Override
    public void truncate(long size, boolean exact, Preallocation prealloc) throws BlockException {
        if (fixedSize >= 0 || offset != 0) {
            throw BlockException.unsupported("Resizing a raw image with 'offset' or 'size' options");
        }
        file.truncate(size, exact, prealloc);
    }

    @Override
    public void close() {
        // the core closes the file below
    }
}
