package org.blockhaus.core.impl;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;

/**
 * qemu-img's -S: the copy engine's zero scan against a byte-by-byte reference, on buffers whose
 * granules are zero, data, or zero but for one byte somewhere inside (the case the scan's quick
 * first/last-bytes test cannot decide alone).
 */
class SplitZeroesTest {
    @Test
    void zeroRunsFoundAsTheByteByByteReferenceFindsThem() {
        Random rnd = new Random(7);
        for (int round = 0; round < 300; round++) {
            int granules = 1 + rnd.nextInt(64);
            int tail = rnd.nextBoolean() ? 0 : 1 + rnd.nextInt(4095);
            int len = granules * 4096 + tail;
            ByteBuffer buf = rnd.nextBoolean() ? ByteBuffer.allocateDirect(len) : ByteBuffer.allocate(len);
            for (int g = 0; g * 4096 < len; g++) {
                int from = g * 4096;
                int n = Math.min(4096, len - from);
                switch (rnd.nextInt(4)) {
                    case 0 -> { } // zero
                    case 1 -> {
                        byte[] b = new byte[n];
                        rnd.nextBytes(b);
                        buf.put(from, b);
                    }
                    default -> buf.put(from + rnd.nextInt(n), (byte) (1 + rnd.nextInt(255))); // one byte anywhere
                }
            }
            long minSparse = new long[] {512, 4096, 8192, 65536}[rnd.nextInt(4)];
            List<CopyEngine.Piece> got = new ArrayList<>();
            CopyEngine.splitZeroes(buf.duplicate(), 1000, minSparse, got);
            assertEquals(reference(buf, 1000, minSparse), describe(got), "round " + round);
        }
    }

    /** Granules zero byte by byte; runs of them at least minSparse long are holes. */
    private static List<String> reference(ByteBuffer buf, long base, long minSparse) {
        int len = buf.remaining();
        int granule = (int) Math.min(Math.max(512, minSparse), 4096);
        boolean[] zero = new boolean[(len + granule - 1) / granule];
        for (int g = 0; g < zero.length; g++) {
            zero[g] = true;
            for (int i = g * granule; i < Math.min(len, (g + 1) * granule); i++) {
                if (buf.get(i) != 0) {
                    zero[g] = false;
                    break;
                }
            }
        }
        List<String> out = new ArrayList<>();
        int dataStart = 0;
        for (int g = 0; g < zero.length; ) {
            if (!zero[g]) {
                g++;
                continue;
            }
            int e = g;
            while (e < zero.length && zero[e]) {
                e++;
            }
            int zs = g * granule;
            int ze = Math.min(len, e * granule);
            if (ze - zs >= minSparse) {
                if (zs > dataStart) {
                    out.add("data " + (base + dataStart) + "+" + (zs - dataStart));
                }
                out.add("zero " + (base + zs) + "+" + (ze - zs));
                dataStart = ze;
            }
            g = e;
        }
        if (dataStart < len) {
            out.add("data " + (base + dataStart) + "+" + (len - dataStart));
        }
        return out;
    }

    private static List<String> describe(List<CopyEngine.Piece> pieces) {
        List<String> out = new ArrayList<>();
        for (CopyEngine.Piece p : pieces) {
            assertEquals(p.data() == null ? -1 : p.length(), p.data() == null ? -1 : p.data().remaining());
            out.add((p.data() == null ? "zero " : "data ") + p.targetOffset() + "+" + p.length());
        }
        return out;
    }
}
