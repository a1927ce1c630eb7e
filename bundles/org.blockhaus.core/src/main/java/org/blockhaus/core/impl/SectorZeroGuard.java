package org.blockhaus.core.impl;

import java.nio.ByteBuffer;
import java.util.List;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.spi.ForwardingNode;

/**
 * An image whose format was guessed as raw must not be turned into something that probes as
 * another format: a guest writing a qcow2 header into sector 0 would otherwise make the next
 * open read host files through a backing name it chose. QEMU refuses such writes; so do we.
 */
final class SectorZeroGuard extends ForwardingNode {
    private static final int SECTOR = 512;
    private final DriverRegistry registry;

    SectorZeroGuard(BlockNode next, DriverRegistry registry) {
        super(next);
        this.registry = registry;
    }

    @Override
    public void write(long offset, ByteBuffer src, int flags) throws BlockException {
        if (offset < SECTOR) {
            ByteBuffer sector = ByteBuffer.allocate((int) Math.min(SECTOR, next.size()));
            next.read(0, sector);
            int n = (int) Math.min(src.remaining(), sector.capacity() - offset);
            sector.put((int) offset, src, src.position(), n);
            sector.clear();
            check(sector);
        }
        next.write(offset, src, flags);
    }

    @Override
    public void writeZeroes(long offset, long length, int flags) throws BlockException {
        if (offset < SECTOR) {
            ByteBuffer sector = ByteBuffer.allocate((int) Math.min(SECTOR, next.size()));
            next.read(0, sector);
            for (long i = offset; i < Math.min(SECTOR, offset + length) && i < sector.capacity(); i++) {
                sector.put((int) i, (byte) 0);
            }
            sector.clear();
            check(sector);
        }
        next.writeZeroes(offset, length, flags);
    }

    private void check(ByteBuffer sector) throws BlockException {
        List<DriverRegistry.Entry> formats = registry.formats();
        for (DriverRegistry.Entry e : formats) {
            if (e.descriptor().name().equals("raw")) {
                continue;
            }
            int score;
            try {
                score = e.driver().probe(sector.asReadOnlyBuffer(), null);
            } catch (RuntimeException ex) {
                continue;
            }
            if (score > 0) {
                throw new BlockException(Reason.PERMISSION, "Writing a '" + e.descriptor().name()
                        + "' header into sector 0 of an image whose format was only guessed as raw is not allowed;"
                        + " open it with format 'raw' given explicitly");
            }
        }
    }
}
