package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.BlockService;
import org.blockhaus.api.ConvertOptions;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/** Compressed clusters we write (convert -c) are read by qemu; they pass check and compare. */
class CompressedWritesTest {
    @TempDir
    Path dir;

    /** Zeroes, text-like data, incompressible noise and repeats further apart than 4 KiB. */
    static byte[] mixedData(int size) {
        byte[] d = new byte[size];
        byte[] noise = Fixtures.pattern(size, 5);
        byte[] block = Fixtures.pattern(6000, 6);
        for (int i = 0; i < size; i++) {
            int region = (i >>> 16) % 4;
            d[i] = switch (region) {
                case 0 -> 0;
                case 1 -> (byte) ("qcow2 compressed cluster ".charAt(i % 25) + (i >>> 12) % 3);
                case 2 -> noise[i];
                default -> block[i % 6000];
            };
        }
        return d;
    }

    private void assertQemuAgrees(Path img, byte[] data) throws Exception {
        Qemu.Result check = Qemu.img("check", "--output=json", img.toString());
        assertEquals(0, check.exit(), check.out() + check.err());
        Matcher m = Pattern.compile("\"compressed-clusters\": (\\d+)").matcher(check.out());
        assertTrue(m.find() && Long.parseLong(m.group(1)) > 0, check.out());
        Path raw = dir.resolve("expected.raw");
        Files.write(raw, data);
        Qemu.Result cmp = Qemu.img("compare", "-f", "raw", "-F", "qcow2", raw.toString(), img.toString());
        assertEquals(0, cmp.exit(), cmp.out() + cmp.err());
    }

    @ParameterizedTest(name = "{0}")
    @CsvSource({"cluster_size=65536", "cluster_size=4096", "cluster_size=2097152", "compat=0.10", "cluster_size=512",
        "extended_l2=on", "compression_type=zstd"})
    void compressedWritesAreReadByQemu(String opt) throws Exception {
        Path img = dir.resolve("c.qcow2");
        int size = 6 << 20;
        byte[] data = mixedData(size);
        BlockCore core = Fixtures.core();
        Fixtures.create(core, img, size, opt.split("="));
        try (Image i = Fixtures.openRw(core, img)) {
            for (int off = 0; off < size; off += 2 << 20) {
                i.write(off, ByteBuffer.wrap(data, off, 2 << 20), BlockNode.COMPRESSED);
            }
        }
        assertQemuAgrees(img, data);
        try (Image i = Fixtures.openRo(core, img)) {
            assertArrayEquals(data, Fixtures.readAll(i));
        }
    }

    @ParameterizedTest(name = "parallel={0}")
    @CsvSource({"1", "8"})
    void convertDashCThroughTheCore(int parallel) throws Exception {
        Path src = dir.resolve("src.raw");
        byte[] data = mixedData(12 << 20);
        Files.write(src, data);
        Path img = dir.resolve("out.qcow2");
        BlockCore core = Fixtures.core();
        Fixtures.create(core, img, data.length);
        try (Image in = core.open(src.toString(), Options.of("driver", "raw"), BlockService.OpenMode.READ_ONLY);
                Image out = Fixtures.openRw(core, img)) {
            core.convert(List.of(in), out, ConvertOptions.DEFAULT.withCompress(true).withTargetIsZero(true)
                    .withParallel(parallel), BlockService.Progress.NONE);
        }
        assertQemuAgrees(img, data);
        // qemu-img compresses the same clusters: allocation agrees cluster for cluster
        Path theirs = dir.resolve("theirs.qcow2");
        Qemu.img("convert", "-c", "-O", "qcow2", src.toString(), theirs.toString()).ok();
        assertEquals(field(Qemu.img("check", "--output=json", theirs.toString()).out(), "allocated-clusters"),
                field(Qemu.img("check", "--output=json", img.toString()).out(), "allocated-clusters"));
        assertEquals(field(Qemu.img("check", "--output=json", theirs.toString()).out(), "compressed-clusters"),
                field(Qemu.img("check", "--output=json", img.toString()).out(), "compressed-clusters"));
    }

    private static long field(String json, String name) {
        Matcher m = Pattern.compile("\"" + name + "\": (\\d+)").matcher(json);
        return m.find() ? Long.parseLong(m.group(1)) : 0;
    }
}
