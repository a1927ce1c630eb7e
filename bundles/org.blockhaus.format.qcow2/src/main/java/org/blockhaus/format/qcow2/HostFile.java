package org.blockhaus.format.qcow2;

import java.nio.ByteBuffer;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.Preallocation;

/**
 * The image file below the qcow2 layer (the "file" child). Reads are checked against the file's
 * end, because the core refuses out-of-range requests and a pointer past the end means the image
 * is corrupt; writes past the end grow the file first.
 */
final class HostFile {
    private final BlockNode file;
    /** Changed under the qcow2 node's lock only; read by I/O outside it. */
    private volatile long size;

    HostFile(BlockNode file) throws BlockException {
        this.file = file;
        this.size = file.size();
    }

    BlockNode node() {
        return file;
    }

    long size() {
        return size;
    }

    /** Reads exactly {@code dst.remaining()} bytes; a range past the end of the file is corruption. */
    void read(long offset, ByteBuffer dst, String what) throws BlockException {
        int len = dst.remaining();
        if (offset < 0 || offset > size || len > size - offset) {
            throw Qcow2Header.corrupt(what + " at offset " + offset + " (" + len + " bytes) lies beyond the end of"
                    + " the file (" + size + " bytes)");
        }
        if (len > 0) {
            file.read(offset, dst);
        }
    }

    /** Reads guest data from a data cluster (the message names the guest offset only on error). */
    void readData(long offset, ByteBuffer dst, long guest) throws BlockException {
        int len = dst.remaining();
        if (offset < 0 || offset > size || len > size - offset) {
            read(offset, dst, "Data cluster for guest offset " + guest);
            return;
        }
        if (len > 0) {
            file.read(offset, dst);
        }
    }

    ByteBuffer read(long offset, int len, String what) throws BlockException {
        ByteBuffer b = ByteBuffer.allocate(len);
        read(offset, b, what);
        return b.flip();
    }

    /** Reads what the file has of {@code [offset, offset+len)}; the rest of {@code dst} is left as zeroes. */
    int readClamped(long offset, ByteBuffer dst) throws BlockException {
        if (offset >= size) {
            return 0;
        }
        int n = (int) Math.min(dst.remaining(), size - offset);
        ByteBuffer part = dst.slice(dst.position(), n);
        file.read(offset, part);
        return n;
    }

    void write(long offset, ByteBuffer src) throws BlockException {
        int len = src.remaining();
        ensureSize(Math.addExact(offset, len));
        file.write(offset, src, 0);
    }

    void write(long offset, byte[] data) throws BlockException {
        write(offset, ByteBuffer.wrap(data));
    }

    /** Grows the file to at least {@code end} bytes. */
    void ensureSize(long end) throws BlockException {
        if (end > size) {
            // the file is exactly 'end' bytes now: no fstat needed (one per growing write before)
            file.truncate(end, false, Preallocation.OFF);
            size = end;
        }
    }

    /** Grows the file to {@code end} with the given preallocation (falloc reserves, full writes zeroes). */
    void growWith(long end, Preallocation mode) throws BlockException {
        if (end > size) {
            file.truncate(end, true, mode);
            size = Math.max(end, file.size());
        }
    }

    /** Sets the file's length to {@code end} (a resize of the data file, or dropping a freed tail). */
    void truncateTo(long end, boolean exact) throws BlockException {
        file.truncate(end, exact, Preallocation.OFF);
        size = file.size();
    }

    /**
     * Gives a range of free clusters back to the file system (a hole), as qemu's discards of
     * freed clusters do. Advisory: a file (or protocol) that cannot discard keeps the bytes, which
     * nothing reads, so a failure is not an error of the operation that freed them.
     */
    void punch(long offset, long len) {
        if (offset >= size || len <= 0) {
            return;
        }
        try {
            file.discard(offset, Math.min(len, size - offset));
        } catch (BlockException e) {
            // qemu ignores a failed discard too
        }
    }

    /**
     * Preallocation maps clusters without writing them and counts on them reading as zeroes, which
     * holds past the file's end but not for free clusters inside it: those still hold what was
     * freed there (an old snapshot table, say), so the part of {@code [offset, offset+len)} inside
     * the file is zeroed. {@code unmap}: as a hole (preallocation=metadata, where the rest of a new
     * run is a hole past the end too), else kept allocated (falloc, full).
     */
    void zeroStale(long offset, long len, boolean unmap) throws BlockException {
        if (offset < 0 || offset >= size || len <= 0) {
            return;
        }
        file.writeZeroes(offset, Math.min(len, size - offset), unmap ? BlockNode.MAY_UNMAP : 0);
    }

    void flush() throws BlockException {
        file.flush();
    }
}
