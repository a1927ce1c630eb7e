package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;

import java.util.Arrays;
import org.junit.jupiter.api.Test;

/**
 * libzstd through FFM: present on this machine (Debian's libzstd1; the driver falls back to
 * aircompressor elsewhere), and its frames and aircompressor's read each other.
 */
class ZstdNativeTest {
    private static byte[] cluster() {
        byte[] c = new byte[65536];
        for (int i = 0; i < c.length; i++) {
            c[i] = (byte) ((i / 7) % 13 + (i % 4096 == 0 ? 100 : 0));
        }
        return c;
    }

    @Test
    void systemLibzstdIsUsed() {
        assertNotNull(ZstdNative.get(), "libzstd.so.1 should be found through FFM on this machine");
    }

    @Test
    void nativeFramesReadWithAircompressorAndBack() throws Exception {
        byte[] c = cluster();
        ZstdNative z = ZstdNative.get();
        byte[] out = new byte[65535];
        int n = z.compress(c, c.length, out);
        byte[] viaJava = new byte[65536];
        assertEquals(65536, new io.airlift.compress.zstd.ZstdDecompressor().decompress(out, 0, n, viaJava, 0, 65536));
        assertArrayEquals(c, viaJava);

        io.airlift.compress.zstd.ZstdCompressor jc = new io.airlift.compress.zstd.ZstdCompressor();
        byte[] jout = new byte[jc.maxCompressedLength(c.length)];
        int jn = jc.compress(c, 0, c.length, jout, 0, jout.length);
        byte[] viaNative = new byte[65536];
        assertEquals(65536, z.decompress(jout, jn, viaNative));
        assertArrayEquals(c, viaNative);
    }

    @Test
    void incompressibleDataDoesNotFitAndInvalidFramesAreRefused() {
        byte[] random = new byte[65536];
        new java.util.Random(1).nextBytes(random);
        ZstdNative z = ZstdNative.get();
        assertEquals(-1, z.compress(random, random.length, new byte[65535]));
        byte[] garbage = Arrays.copyOf(new byte[] {0x28, (byte) 0xb5, 0x2f, (byte) 0xfd, 1, 2, 3}, 64);
        assertEquals(-1, z.decompress(garbage, garbage.length, new byte[65536]));
    }
}
