package org.blockhaus.format.qcow2;

import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.util.Arrays;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.Image;
import org.blockhaus.api.spi.SnapshotNode;
import org.blockhaus.core.BlockCore;

/**
 * A writer process for {@link CrashSafetyTest}: round {@code i} fills region {@code i} with
 * pattern {@code i} (plus scattered small writes and zero writes), flushes, and only then prints
 * "flushed i". The test kills it at a random instant. With a second argument {@code snapshots}
 * every round also creates, applies and deletes internal snapshots (applying one that differs
 * from the active state only in the scratch area, so the regions keep their patterns).
 */
public final class CrashWriter {
    static final int REGION = 96 * 1024;
    static final int ROUNDS = 400;
    static final long SCRATCH = (long) ROUNDS * REGION;
    static final long SIZE = SCRATCH + (2 << 20);

    private CrashWriter() {
    }

    static byte patternOf(int round) {
        return (byte) (round % 250 + 1);
    }

    public static void main(String[] args) throws Exception {
        Path img = Path.of(args[0]);
        boolean snapshotChurn = args.length > 1 && args[1].equals("snapshots");
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRw(core, img)) {
            System.out.println("ready");
            System.out.flush();
            byte[] buf = new byte[REGION];
            for (int round = 0; round < ROUNDS; round++) {
                Arrays.fill(buf, patternOf(round));
                long base = (long) round * REGION;
                // small pieces, so that the kill often lands between allocations of one round
                for (int piece = 0; piece < REGION; piece += 8192) {
                    i.write(base + piece, ByteBuffer.wrap(buf, piece, 8192), 0);
                }
                // churn in a scratch area after the regions: overwrite, then unmap, so clusters are freed
                long scratch = SCRATCH + (long) (round % 16) * 65536;
                i.write(scratch, ByteBuffer.wrap(buf, 0, 65536), 0);
                i.writeZeroes(SCRATCH + (long) ((round + 8) % 16) * 65536, 65536, BlockNode.MAY_UNMAP);
                // compressed clusters (byte-packed, refcounted per host cluster) and internal snapshots
                i.write(SCRATCH + (16 + round % 8) * 65536L, ByteBuffer.wrap(buf, 0, 65536), BlockNode.COMPRESSED);
                SnapshotNode snaps = (SnapshotNode) i.driverNode();
                if (snapshotChurn) {
                    i.flush();
                    snaps.createSnapshot("r" + round);
                    i.write(scratch, ByteBuffer.wrap(buf, 0, 4096), 0); // the active state moves on
                    snaps.applySnapshot("r" + round);                  // and comes back
                    if (round >= 2) {
                        snaps.deleteSnapshot("r" + (round - 2));
                    }
                } else if (round % 25 == 24) {
                    snaps.createSnapshot("r" + round);
                }
                i.flush();
                System.out.println("flushed " + round);
                System.out.flush();
            }
        }
    }
}
