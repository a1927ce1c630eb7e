package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Random;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * zlib-compressed clusters as qemu-img makes them: every cluster qemu-img convert -c compresses
 * is compared byte for byte with what our Compression produces for the same input (text, a
 * repeated byte, mixed, random that does not compress, a partial last cluster zero-padded as
 * qemu pads it), and a whole image we compress is about qemu's size (packing runs on into the
 * next cluster as qemu's does), checks clean and reads equal.
 */
class CompressedLikeQemuTest {
    @TempDir
    Path dir;

    @Test
    void clustersAreDeflatedExactlyAsQemuDeflatesThem() throws Exception {
        assertNotNull(ZlibNative.get(), "libz must be usable here (zlib1g, native access)");
        for (int clusterBits : new int[] {12, 16, 21}) {
            int cs = 1 << clusterBits;
            byte[] input = input(cs * 12 + cs / 3, new Random(clusterBits));
            Path raw = Files.write(dir.resolve("in" + clusterBits + ".raw"), input);
            Path img = dir.resolve("q" + clusterBits + ".qcow2");
            Qemu.img("convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=" + cs, raw.toString(),
                    img.toString()).ok();
            Compression ours = new Compression(clusterBits, Qcow2Header.COMPRESSION_ZLIB);
            int compared = 0;
            try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "r")) {
                long[] l2 = l2Entries(f, clusterBits);
                for (int k = 0; k * (long) cs < input.length; k++) {
                    byte[] cluster = new byte[cs]; // the last one zero-padded, as qemu pads it
                    System.arraycopy(input, k * cs, cluster, 0, Math.min(cs, input.length - k * cs));
                    byte[] mine = ours.compress(cluster, cs);
                    long w = k < l2.length ? l2[k] : 0;
                    if ((w & (1L << 62)) == 0) {
                        assertNull(mine, "qemu stored cluster " + k + " uncompressed, we compressed it");
                        continue;
                    }
                    assertNotNull(mine, "qemu compressed cluster " + k + ", we did not");
                    int x = 62 - (clusterBits - 8);
                    long off = w & ((1L << x) - 1);
                    long sectors = ((w >>> x) & ((1L << (62 - x)) - 1)) + 1;
                    long room = sectors * 512 - (off & 511);
                    assertTrue(mine.length <= room && mine.length > room - 512, "cluster " + k + ": ours "
                            + mine.length + " bytes, qemu's descriptor " + room);
                    byte[] theirs = new byte[mine.length];
                    f.seek(off);
                    f.readFully(theirs);
                    assertArrayEquals(theirs, mine, "cluster " + k + " of " + cs);
                    compared++;
                }
            }
            assertTrue(compared >= 6, "compressed clusters compared for " + cs + ": " + compared);
        }
    }

    @Test
    void compressedImagesAreAsSmallAsQemusAndRead() throws Exception {
        byte[] input = input(64 * 65536 + 777, new Random(3));
        Path raw = Files.write(dir.resolve("in.raw"), input);
        Path theirs = dir.resolve("q.qcow2");
        Path ours = dir.resolve("b.qcow2");
        Qemu.img("convert", "-q", "-c", "-f", "raw", "-O", "qcow2", raw.toString(), theirs.toString()).ok();
        BlockCore core = Fixtures.core();
        long size = input.length + (512 - input.length % 512);
        Fixtures.create(core, ours, size);
        try (var img = Fixtures.openRw(core, ours)) {
            for (int at = 0; at < input.length; at += 65536) {
                int n = (int) Math.min(65536, size - at); // the last cluster: what the image has of it
                byte[] c = new byte[n];
                System.arraycopy(input, at, c, 0, Math.min(n, input.length - at));
                img.write(at, ByteBuffer.wrap(c), org.blockhaus.api.BlockNode.COMPRESSED);
            }
        }
        assertEquals(0, Qemu.img("check", ours.toString()).exit());
        assertEquals(0, Qemu.img("compare", "-f", "raw", "-F", "qcow2", raw.toString(), ours.toString()).exit());
        long q = Files.size(theirs);
        long b = Files.size(ours);
        assertTrue(Math.abs(q - b) <= 4096, "file sizes: qemu " + q + ", ours " + b);
    }

    /** Text, runs of one byte, random bytes (incompressible) and mixtures, cluster-sized pieces apart. */
    private static byte[] input(int len, Random rnd) {
        byte[] b = new byte[len];
        String text = "Blockhaus compresses clusters as qemu does; the quick brown fox jumps over the lazy dog. ";
        for (int i = 0; i < len; ) {
            int kind = rnd.nextInt(8) == 0 ? 2 : new int[] {0, 1, 3}[rnd.nextInt(3)]; // random now and then
            int n = Math.min(len - i, 1000 + rnd.nextInt(40000));
            for (int j = 0; j < n; j++) {
                b[i + j] = switch (kind) {
                    case 0 -> (byte) text.charAt((i + j) % text.length());
                    case 1 -> (byte) 0x5a;
                    case 2 -> (byte) rnd.nextInt(256);
                    case 3 -> (byte) (rnd.nextInt(8) == 0 ? rnd.nextInt(256) : text.charAt(j % 7));
                    default -> (byte) text.charAt((i + j) % text.length());
                };
            }
            i += n;
        }
        return b;
    }

    /** The L2 entries of the first L2 table (the test images are small enough for one). */
    private static long[] l2Entries(RandomAccessFile f, int clusterBits) throws Exception {
        f.seek(40);
        long l1 = f.readLong();
        f.seek(l1);
        long l2 = f.readLong() & 0x00fffffffffffe00L;
        long[] out = new long[(1 << clusterBits) / 8];
        f.seek(l2);
        for (int i = 0; i < out.length; i++) {
            out[i] = f.readLong();
        }
        return out;
    }
}
