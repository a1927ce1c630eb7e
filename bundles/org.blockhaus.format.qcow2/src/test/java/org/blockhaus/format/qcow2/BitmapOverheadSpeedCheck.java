package org.blockhaus.format.qcow2;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import org.blockhaus.api.Image;
import org.blockhaus.api.spi.BitmapNode;
import org.blockhaus.core.BlockCore;

/**
 * Not a test: `java -cp ... BitmapOverheadSpeedCheck <dir> <MiB> <rounds>` times small random
 * writes (4 KiB) into a fresh image without bitmaps and with three enabled ones (512 B, 64 KiB,
 * 1 MiB granularity), alternating, and prints the best time of each, so the cost of tracking
 * shows as a ratio. The close (which stores the bitmaps) is part of the time.
 */
public final class BitmapOverheadSpeedCheck {
    private BitmapOverheadSpeedCheck() {
    }

    public static void main(String[] args) throws Exception {
        Path dir = Path.of(args[0]);
        long mib = Long.parseLong(args[1]);
        int rounds = Integer.parseInt(args[2]);
        BlockCore core = Fixtures.core();
        long best0 = Long.MAX_VALUE;
        long best3 = Long.MAX_VALUE;
        for (int r = 0; r < rounds; r++) {
            best0 = Math.min(best0, run(core, dir.resolve("none.qcow2"), mib, false));
            best3 = Math.min(best3, run(core, dir.resolve("three.qcow2"), mib, true));
        }
        System.out.printf("no bitmaps %.1f ms, three bitmaps %.1f ms, ratio %.3f%n", best0 / 1e6, best3 / 1e6,
                (double) best3 / best0);
    }

    private static long run(BlockCore core, Path img, long mib, boolean bitmaps) throws Exception {
        Files.deleteIfExists(img);
        Fixtures.create(core, img, mib << 20);
        if (bitmaps) {
            try (Image i = Fixtures.openRw(core, img)) {
                BitmapNode n = (BitmapNode) i.driverNode();
                n.addBitmap("fine", 512, false);
                n.addBitmap("cluster", 65536, false);
                n.addBitmap("coarse", 1 << 20, false);
            }
        }
        byte[] buf = Fixtures.pattern(4096, 1);
        java.util.Random rnd = new java.util.Random(7);
        int writes = (int) (mib * 64);
        long t0 = System.nanoTime();
        try (Image i = Fixtures.openRw(core, img)) {
            for (int k = 0; k < writes; k++) {
                long off = (rnd.nextLong(mib << 20) & -4096L);
                i.write(off, ByteBuffer.wrap(buf), 0);
            }
        }
        return System.nanoTime() - t0;
    }
}
