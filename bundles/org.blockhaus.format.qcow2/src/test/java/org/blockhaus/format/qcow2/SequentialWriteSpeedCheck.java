package org.blockhaus.format.qcow2;

import java.nio.ByteBuffer;
import java.nio.file.Path;
import org.blockhaus.api.Image;
import org.blockhaus.core.BlockCore;

/** Not a test: `java -cp ... SequentialWriteSpeedCheck <file> <MiB>` prints MB/s for a sequential fill. */
public final class SequentialWriteSpeedCheck {
    private SequentialWriteSpeedCheck() {
    }

    public static void main(String[] args) throws Exception {
        Path img = Path.of(args[0]);
        long mib = Long.parseLong(args[1]);
        BlockCore core = Fixtures.core();
        Fixtures.create(core, img, mib << 20);
        byte[] buf = Fixtures.pattern(2 << 20, 1);
        long t0 = System.nanoTime();
        try (Image i = Fixtures.openRw(core, img)) {
            for (long off = 0; off < mib << 20; off += buf.length) {
                i.write(off, ByteBuffer.wrap(buf), 0);
            }
            i.flush();
        }
        long t1 = System.nanoTime();
        byte[] rd = new byte[2 << 20];
        try (Image i = Fixtures.openRo(core, img)) {
            for (long off = 0; off < mib << 20; off += rd.length) {
                i.read(off, ByteBuffer.wrap(rd));
            }
        }
        long t2 = System.nanoTime();
        System.out.printf("write %.0f MB/s, read %.0f MB/s%n", mib / ((t1 - t0) / 1e9), mib / ((t2 - t1) / 1e9));
    }
}
