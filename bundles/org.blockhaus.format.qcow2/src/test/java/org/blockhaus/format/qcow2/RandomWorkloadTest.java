package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import org.blockhaus.api.Image;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/** Random workloads in both directions: qemu-io writes what we read, we write what qemu-io verifies. */
class RandomWorkloadTest {
    @TempDir
    Path dir;

    private static final long SIZE = 16 << 20;

    @ParameterizedTest(name = "[{index}] {0} seed {1}")
    @CsvSource({"compat=1.1,1", "compat=0.10;cluster_size=4096,2", "extended_l2=on,3", "cluster_size=512,4"})
    void weReadWhatQemuIoWroteAtRandom(String opts, long seed) throws Exception {
        Path img = dir.resolve("q.qcow2");
        Qemu.img("create", "-f", "qcow2", "-o", opts.replace(';', ','), img.toString(), Long.toString(SIZE)).ok();
        Random r = new Random(seed);
        List<String> args = new ArrayList<>(List.of("-f", "qcow2"));
        for (int k = 0; k < 60; k++) {
            long len = 512L * (1 + r.nextInt(400));
            long off = 512L * r.nextInt((int) ((SIZE - len) / 512));
            String cmd = switch (r.nextInt(6)) {
                case 0 -> "write -z " + off + " " + len;
                case 1 -> "discard " + off + " " + len;
                default -> "write -P " + (1 + r.nextInt(250)) + " " + off + " " + len;
            };
            args.add("-c");
            args.add(cmd);
        }
        args.add(img.toString());
        Qemu.io(args.toArray(String[]::new)).ok();
        byte[] expected = Fixtures.qemuRaw(img, dir);
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRo(core, img)) {
            assertArrayEquals(expected, Fixtures.readAll(i));
        }
    }

    @ParameterizedTest(name = "[{index}] {0} seed {1}")
    @CsvSource({"compat=1.1,5", "compat=0.10;cluster_size=4096,6", "extended_l2=on,7", "cluster_size=512,8"})
    void qemuIoVerifiesWhatWeWroteAtRandom(String opts, long seed) throws Exception {
        Path img = dir.resolve("o.qcow2");
        BlockCore core = Fixtures.core();
        Fixtures.create(core, img, SIZE, opts.replace(';', '=').split("[=,]"));
        Random r = new Random(seed);
        byte[] ref = new byte[(int) SIZE];
        try (Image i = Fixtures.openRw(core, img)) {
            for (int k = 0; k < 80; k++) {
                int len = 1 + r.nextInt(150_000);
                long off = (long) (r.nextDouble() * (SIZE - len));
                if (r.nextInt(5) == 0) {
                    i.writeZeroes(off, len, r.nextBoolean() ? org.blockhaus.api.BlockNode.MAY_UNMAP : 0);
                    Arrays.fill(ref, (int) off, (int) off + len, (byte) 0);
                } else {
                    byte[] d = new byte[len];
                    Arrays.fill(d, (byte) (1 + r.nextInt(250)));
                    i.write(off, ByteBuffer.wrap(d), 0);
                    System.arraycopy(d, 0, ref, (int) off, len);
                }
            }
        }
        // one qemu-io read -P per run of equal bytes
        List<String> args = new ArrayList<>(List.of("-r", "-f", "qcow2"));
        int start = 0;
        for (int p = 1; p <= ref.length; p++) {
            if (p == ref.length || ref[p] != ref[start]) {
                args.add("-c");
                args.add("read -P " + (ref[start] & 0xff) + " " + start + " " + (p - start));
                start = p;
            }
        }
        args.add(img.toString());
        Qemu.Result res = Qemu.io(args.toArray(String[]::new)).ok();
        assertEquals(-1, res.out().indexOf("Pattern verification failed"), res.out());
        assertEquals(0, Qemu.img("check", img.toString()).exit());
    }
}
