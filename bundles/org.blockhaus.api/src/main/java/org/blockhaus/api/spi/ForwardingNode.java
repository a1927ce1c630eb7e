package org.blockhaus.api.spi;

import java.nio.ByteBuffer;
import java.util.Map;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.BlockStatus;
import org.blockhaus.api.Capabilities;
import org.blockhaus.api.Limits;
import org.blockhaus.api.Preallocation;

/**
 * A filter's starting point: passes every operation to the child node; a filter overrides only
 * what it changes (nbdkit's "next" idea). Closing closes the child.
 */
public class ForwardingNode implements BlockNode {
    protected final BlockNode next;

    public ForwardingNode(BlockNode next) {
        this.next = next;
    }

    @Override public long size() throws BlockException { return next.size(); }
    @Override public void read(long offset, ByteBuffer dst) throws BlockException { next.read(offset, dst); }
    @Override public void write(long offset, ByteBuffer src, int flags) throws BlockException { next.write(offset, src, flags); }
    @Override public Capabilities capabilities() { return next.capabilities(); }
    @Override public Limits limits() { return next.limits(); }
    @Override public void writeZeroes(long offset, long length, int flags) throws BlockException { next.writeZeroes(offset, length, flags); }
    @Override public void discard(long offset, long length) throws BlockException { next.discard(offset, length); }
    @Override public void prefetch(long offset, long length) throws BlockException { next.prefetch(offset, length); }
    @Override public void flush() throws BlockException { next.flush(); }
    @Override public BlockStatus blockStatus(long offset, long length) throws BlockException { return next.blockStatus(offset, length); }
    @Override public void truncate(long size, boolean exact, Preallocation p) throws BlockException { next.truncate(size, exact, p); }
    @Override public long allocatedSize() throws BlockException { return next.allocatedSize(); }
    @Override public Map<String, Object> info() throws BlockException { return next.info(); }
    @Override public boolean hasZeroInit() { return next.hasZeroInit(); }
    /** The core closes children after their parent; a filter has nothing of its own to close. */
    @Override public void close() throws BlockException { }
}
