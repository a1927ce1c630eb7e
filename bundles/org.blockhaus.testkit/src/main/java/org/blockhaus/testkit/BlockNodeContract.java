package org.blockhaus.testkit;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.util.Random;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.BlockStatus;
import org.blockhaus.api.Capabilities.Feature;
import org.blockhaus.api.Image;
import org.blockhaus.api.Preallocation;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * What every driver promises, as tests. A driver module extends this class in its tests and
 * says how to make a fresh, writable image of a given size; every test then runs through the
 * core, so the I/O contract is part of what is checked.
 */
public abstract class BlockNodeContract {
    protected static final int MiB = 1 << 20;

    @TempDir
    protected Path dir;

    /** A new, empty, writable image of {@code size} bytes, opened through the core. */
    protected abstract Image create(Path dir, long size) throws Exception;

    /** The same image opened again (after the first was closed), writable. */
    protected abstract Image reopen(Path dir) throws Exception;

    private static byte[] random(int n, long seed) {
        byte[] b = new byte[n];
        new Random(seed).nextBytes(b);
        return b;
    }

    private static byte[] read(Image img, long off, int n) throws BlockException {
        ByteBuffer b = ByteBuffer.allocate(n);
        img.read(off, b);
        return b.array();
    }

    @Test
    void aFreshImageReadsAsZeroes() throws Exception {
        try (Image img = create(dir, 4 * MiB)) {
            assertEquals(4 * MiB, img.size());
            assertArrayEquals(new byte[64 * 1024], read(img, 3 * MiB, 64 * 1024));
        }
    }

    @Test
    void readsBackWhatWasWrittenAtUnalignedOffsets() throws Exception {
        try (Image img = create(dir, 4 * MiB)) {
            long[] offsets = {0, 1, 511, 4095, 65535, 65536 + 7, 3 * MiB - 3};
            int i = 0;
            for (long off : offsets) {
                byte[] data = random(1000 + i * 77, off);
                img.write(off, ByteBuffer.wrap(data), 0);
                assertArrayEquals(data, read(img, off, data.length), "at " + off);
                i++;
            }
        }
    }

    @Test
    void writesSurviveCloseAndReopen() throws Exception {
        byte[] data = random(3 * 65536 + 5, 42);
        try (Image img = create(dir, 8 * MiB)) {
            img.write(MiB + 100, ByteBuffer.wrap(data), 0);
            img.flush();
        }
        try (Image img = reopen(dir)) {
            assertArrayEquals(data, read(img, MiB + 100, data.length));
            assertArrayEquals(new byte[100], read(img, MiB, 100));
        }
    }

    @Test
    void writeZeroesReadsBackAsZeroes() throws Exception {
        try (Image img = create(dir, 4 * MiB)) {
            byte[] data = random(2 * MiB, 7);
            img.write(0, ByteBuffer.wrap(data), 0);
            img.writeZeroes(100, MiB, 0);
            byte[] back = read(img, 0, 2 * MiB);
            for (int i = 0; i < back.length; i++) {
                byte expected = i >= 100 && i < 100 + MiB ? 0 : data[i];
                if (back[i] != expected) {
                    throw new AssertionError("byte " + i + ": " + back[i] + " != " + expected);
                }
            }
        }
    }

    @Test
    void discardNeverChangesTheSizeOrFails() throws Exception {
        try (Image img = create(dir, 4 * MiB)) {
            img.write(0, ByteBuffer.wrap(random(2 * MiB, 9)), 0);
            img.discard(0, MiB);
            assertEquals(4 * MiB, img.size());
            read(img, 0, 2 * MiB);
        }
    }

    @Test
    void blockStatusAgreesWithWhatReadsReturn() throws Exception {
        try (Image img = create(dir, 8 * MiB)) {
            img.write(MiB, ByteBuffer.wrap(random(MiB, 3)), 0);
            img.write(5 * MiB + 4096, ByteBuffer.wrap(random(8192, 4)), 0);
            long size = img.size();
            for (long off = 0; off < size; ) {
                BlockStatus st = img.blockStatus(off, size - off);
                assertEquals(off, st.offset());
                assertTrue(st.length() > 0 && st.length() <= size - off);
                if (st.isZero()) {
                    int n = (int) Math.min(st.length(), 4 * MiB);
                    assertArrayEquals(new byte[n], read(img, off, n), "block status says zero at " + off);
                }
                off += st.length();
            }
        }
    }

    @Test
    void requestsBeyondTheEndAreRefused() throws Exception {
        try (Image img = create(dir, MiB)) {
            assertEquals(Reason.OUT_OF_RANGE, assertThrows(BlockException.class,
                    () -> img.read(MiB - 10, ByteBuffer.allocate(20))).reason());
            assertEquals(Reason.OUT_OF_RANGE, assertThrows(BlockException.class,
                    () -> img.write(MiB, ByteBuffer.allocate(1), 0)).reason());
            assertEquals(Reason.OUT_OF_RANGE, assertThrows(BlockException.class,
                    () -> img.read(-1, ByteBuffer.allocate(1))).reason());
        }
    }

    @Test
    void growingKeepsDataAndTheNewPartReadsAsZeroes() throws Exception {
        try (Image img = create(dir, 2 * MiB)) {
            if (!img.capabilities().can(Feature.RESIZE) && !canResize()) {
                return; // the driver declares it cannot resize: nothing to promise
            }
            byte[] data = random(4096, 11);
            img.write(2 * MiB - 4096, ByteBuffer.wrap(data), 0);
            img.truncate(4 * MiB, false, Preallocation.OFF);
            assertEquals(4 * MiB, img.size());
            assertArrayEquals(data, read(img, 2 * MiB - 4096, 4096));
            assertArrayEquals(new byte[MiB], read(img, 3 * MiB, MiB));
        }
    }

    /** Drivers whose capabilities do not mention RESIZE but that do resize say so here. */
    protected boolean canResize() {
        return false;
    }

    @Test
    void concurrentWritersToDisjointRangesDoNotDisturbEachOther() throws Exception {
        try (Image img = create(dir, 16 * MiB)) {
            Thread[] threads = new Thread[8];
            Throwable[] failure = new Throwable[1];
            for (int t = 0; t < threads.length; t++) {
                final int n = t;
                threads[t] = Thread.ofVirtual().start(() -> {
                    try {
                        for (int k = 0; k < 16; k++) {
                            long off = (long) n * 2 * MiB + k * 65536L + 17;
                            img.write(off, ByteBuffer.wrap(random(60000, n * 100 + k)), 0);
                        }
                    } catch (Throwable e) {
                        failure[0] = e;
                    }
                });
            }
            for (Thread t : threads) {
                t.join();
            }
            if (failure[0] != null) {
                throw new AssertionError(failure[0]);
            }
            for (int n = 0; n < threads.length; n++) {
                for (int k = 0; k < 16; k++) {
                    long off = (long) n * 2 * MiB + k * 65536L + 17;
                    assertArrayEquals(random(60000, n * 100 + k), read(img, off, 60000));
                }
            }
        }
    }

    @Test
    void aClosedImageRefusesIo() throws Exception {
        Image img = create(dir, MiB);
        img.close();
        assertEquals(Reason.CLOSED, assertThrows(BlockException.class, () -> img.read(0, ByteBuffer.allocate(1)))
                .reason());
    }
}
