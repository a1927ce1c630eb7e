package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Random;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.Image;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * Images this driver creates and writes are accepted by qemu-img 7.2: `check` finds nothing,
 * `compare` against a raw reference says identical, and `qemu-io -r read -P` verifies patterns.
 */
class WritesForQemuTest {
    @TempDir
    Path dir;

    /** Writes the same bytes to the image and to a raw reference file. */
    private static final class Mirror {
        final Image img;
        final byte[] ref;

        Mirror(Image img, byte[] ref) {
            this.img = img;
            this.ref = ref;
        }

        void write(long off, byte[] data) throws Exception {
            img.write(off, ByteBuffer.wrap(data), 0);
            System.arraycopy(data, 0, ref, (int) off, data.length);
        }

        void fill(long off, int len, int value) throws Exception {
            byte[] d = new byte[len];
            Arrays.fill(d, (byte) value);
            write(off, d);
        }

        void zero(long off, int len, int flags) throws Exception {
            img.writeZeroes(off, len, flags);
            Arrays.fill(ref, (int) off, (int) off + len, (byte) 0);
        }
    }

    private void assertQemuAgrees(Path img, byte[] ref) throws Exception {
        Qemu.Result check = Qemu.img("check", "--output=json", img.toString());
        assertEquals(0, check.exit(), "qemu-img check: " + check.out() + check.err());
        assertTrue(!check.out().contains("\"leaks\""), "no leaks: " + check.out());
        Path raw = dir.resolve(img.getFileName() + ".expected.raw");
        Files.write(raw, ref);
        Qemu.Result cmp = Qemu.img("compare", "-f", "raw", "-F", "qcow2", raw.toString(), img.toString());
        assertEquals(0, cmp.exit(), "qemu-img compare: " + cmp.out() + cmp.err());
    }

    private void workload(Mirror m, int clusterSize, long size) throws Exception {
        m.fill(0, 65536, 0xab);
        m.fill(100_000, 3000, 0xcd);                 // unaligned, inside one cluster
        m.fill(clusterSize * 3L - 100, 200, 0x11);     // straddles a cluster boundary
        m.write(size / 2, Fixtures.pattern(300_000, 1));
        m.zero((size / 2 + 65536) & -clusterSize, clusterSize * 2, 0);        // whole clusters: zero flag
        m.zero(size / 2 + 70_001, 999, 0);                                   // partial: zero data
        m.zero(0, clusterSize, BlockNode.MAY_UNMAP);
        m.fill(size - 4096, 4096, 0x42);             // last bytes of the disk
        Random r = new Random(42);
        for (int i = 0; i < 40; i++) {
            int len = 1 + r.nextInt(20_000);
            long off = (long) (r.nextDouble() * (size - len));
            m.write(off, Fixtures.pattern(len, i));
        }
        m.fill(0, 512, 0x7e);
        m.img.flush();
    }

    @ParameterizedTest(name = "{0}")
    @CsvSource({
        "cluster_size=512", "cluster_size=4096", "cluster_size=65536", "cluster_size=2097152",
        "compat=0.10", "compat=0.10;cluster_size=4096", "refcount_bits=1", "refcount_bits=8", "refcount_bits=64",
        "extended_l2=on", "lazy_refcounts=on", "preallocation=metadata", "preallocation=falloc", "preallocation=full", "cluster_size=512;refcount_bits=64"})
    void imageWeCreateAndWritePassesQemuCheckAndCompare(String opts) throws Exception {
        Path img = dir.resolve("w.qcow2");
        int clusterSize = opts.contains("cluster_size=") ? Integer.parseInt(opts.replaceAll(".*cluster_size=(\\d+).*", "$1"))
                : 65536;
        long size = Math.max(6 << 20, clusterSize * 8L);
        BlockCore core = Fixtures.core();
        Fixtures.create(core, img, size, opts.isEmpty() ? new String[0] : opts.replace(';', '=').split("="));
        byte[] ref = new byte[(int) size];
        try (Image i = Fixtures.openRw(core, img)) {
            workload(new Mirror(i, ref), clusterSize, size);
        }
        assertQemuAgrees(img, ref);
        // and we read back what we wrote after a reopen
        try (Image i = Fixtures.openRo(core, img)) {
            assertArrayEquals(ref, Fixtures.readAll(i));
        }
    }

    @ParameterizedTest(name = "{0}")
    @CsvSource({"preallocation=full", "preallocation=metadata;cluster_size=4096", "preallocation=falloc;cluster_size=512"})
    void preallocatedImagesMapEveryClusterLikeQemu(String opts) throws Exception {
        Path ours = dir.resolve("full.qcow2");
        BlockCore core = Fixtures.core();
        Fixtures.create(core, ours, 5 << 20, opts.replace(';', '=').split("="));
        String map = Qemu.img("map", "--output=json", ours.toString()).ok().out();
        for (String line : map.split("\n")) {
            if (line.contains("\"start\"")) {
                assertTrue(line.contains("\"present\": true") && line.contains("\"data\": true"), map);
            }
        }
        String check = Qemu.img("check", "--output=json", ours.toString()).out();
        assertTrue(check.contains("\"allocated-clusters\": " + (5 << 20) / (opts.contains("4096") ? 4096
                : opts.contains("512") ? 512 : 65536)), check);
        assertEquals(0, Qemu.img("check", ours.toString()).exit());
        if (opts.contains("full")) {
            // full preallocation writes the data clusters: the file occupies about its size
            assertTrue(Files.size(ours) >= 5 << 20);
            assertTrue(ours.toFile().length() > 0);
        }
    }

    @Test
    void qemuIoVerifiesPatternsWeWrote() throws Exception {
        Path img = dir.resolve("p.qcow2");
        BlockCore core = Fixtures.core();
        Fixtures.create(core, img, 4 << 20);
        try (Image i = Fixtures.openRw(core, img)) {
            byte[] a = new byte[65536];
            Arrays.fill(a, (byte) 0xab);
            i.write(0, ByteBuffer.wrap(a), 0);
            byte[] b = new byte[5000];
            Arrays.fill(b, (byte) 0x3c);
            i.write(1_000_000, ByteBuffer.wrap(b), BlockNode.FUA);
        }
        Qemu.io("-r", "-f", "qcow2", "-c", "read -P 0xab 0 64k", "-c", "read -P 0x3c 1000000 5000",
                "-c", "read -P 0 64k 934464", "-c", "read -P 0 1005000 64k", img.toString()).ok();
    }

    @Test
    void copyOnWriteFromBackingChainMadeByQemu() throws Exception {
        Path base = dir.resolve("base.qcow2");
        Qemu.img("create", "-f", "qcow2", base.toString(), "4M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 0x61 0 4M", base.toString()).ok();
        Path mid = dir.resolve("mid.qcow2");
        Qemu.img("create", "-f", "qcow2", "-o", "compat=0.10", "-b", "base.qcow2", "-F", "qcow2", mid.toString()).ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 0x62 1M 100k", mid.toString()).ok();
        Path top = dir.resolve("top.qcow2");
        BlockCore core = Fixtures.core();
        Fixtures.create(core, top, 4 << 20, "backing_file", "mid.qcow2", "backing_fmt", "qcow2");
        byte[] ref = Fixtures.qemuRaw(mid, dir);
        try (Image i = Fixtures.openRw(core, top)) {
            Mirror m = new Mirror(i, ref);
            m.fill(1_040_000, 2000, 0x63);         // partial cluster: the rest comes from mid
            m.fill(3_000_000, 10, 0x64);           // partial cluster: the rest comes from base
            m.zero(2 << 20, 65536, 0);             // zero flag hides the backing data
            m.img.discard(0, 65536);
            Arrays.fill(ref, 0, 65536, (byte) 0); // v3 discard over a backing file reads as zeroes
        }
        assertQemuAgrees(top, ref);
        Qemu.Result info = Qemu.img("info", "--output=json", top.toString()).ok();
        assertTrue(info.out().contains("\"backing-filename-format\": \"qcow2\""), info.out());
    }

    @ParameterizedTest(name = "{0}")
    @CsvSource({"0.10", "1.1"})
    void zeroWritesHideTheBackingFile(String compat) throws Exception {
        Path base = dir.resolve("base.raw");
        Files.write(base, Fixtures.pattern(2 << 20, 77));
        Path top = dir.resolve("top.qcow2");
        BlockCore core = Fixtures.core();
        Fixtures.create(core, top, 2 << 20, "compat", compat, "backing_file", "base.raw", "backing_fmt", "raw");
        byte[] ref = Files.readAllBytes(base);
        try (Image i = Fixtures.openRw(core, top)) {
            Mirror m = new Mirror(i, ref);
            m.zero(65536, 65536 * 3, BlockNode.MAY_UNMAP);  // whole clusters
            m.zero(1_000_000, 5000, 0);                      // inside one cluster
            m.zero(2 * 65536 * 8 - 100, 300, 0);             // across a cluster boundary
        }
        assertQemuAgrees(top, ref);
    }

    @Test
    void newRefcountBlocksCountThemselvesAndTheTableGrows() throws Exception {
        // 512-byte clusters with 64-bit refcounts: a block covers 64 clusters, the first table 4096.
        Path img = dir.resolve("g.qcow2");
        BlockCore core = Fixtures.core();
        long size = 8 << 20;
        Fixtures.create(core, img, size, "cluster_size", "512", "refcount_bits", "64");
        byte[] ref = new byte[(int) size];
        try (Image i = Fixtures.openRw(core, img)) {
            Mirror m = new Mirror(i, ref);
            for (long off = 0; off < size; off += 1 << 20) {
                m.write(off, Fixtures.pattern(1 << 20, off));
            }
        }
        assertQemuAgrees(img, ref);
    }

    @Test
    void extendedL2WritesAllocateOnlyTouchedSubclustersLikeQemu() throws Exception {
        Path base = dir.resolve("base.raw");
        Files.write(base, Fixtures.pattern(2 << 20, 8));
        Path ours = dir.resolve("ours.qcow2");
        Path theirs = dir.resolve("theirs.qcow2");
        BlockCore core = Fixtures.core();
        Fixtures.create(core, ours, 2 << 20, "extended_l2", "on", "backing_file", "base.raw", "backing_fmt", "raw");
        Qemu.img("create", "-f", "qcow2", "-o", "extended_l2=on", "-b", "base.raw", "-F", "raw", theirs.toString())
                .ok();
        long[][] writes = {{100, 3000}, {65536 + 2048, 2048}, {131072 + 1000, 10_000}, {300_000, 70_000},
            {65536 + 8192, 100}};
        byte[] ref = Fixtures.qemuRaw(base, dir);
        try (Image i = Fixtures.openRw(core, ours)) {
            Mirror m = new Mirror(i, ref);
            for (long[] w : writes) {
                m.fill(w[0], (int) w[1], 0x5c);
                Qemu.io("-f", "qcow2", "-c", "write -P 0x5c " + w[0] + " " + w[1], theirs.toString()).ok();
            }
        }
        assertQemuAgrees(ours, ref);
        // same subclusters allocated: the maps agree on what comes from where (offsets aside)
        assertEquals(Qemu.img("map", "--output=json", theirs.toString()).ok().out().replaceAll(", \"offset\": \\d+", ""),
                Qemu.img("map", "--output=json", ours.toString()).ok().out().replaceAll(", \"offset\": \\d+", ""));
    }

    @Test
    void tinyMetadataCachesStillLeaveAConsistentImage() throws Exception {
        Path img = dir.resolve("t.qcow2");
        BlockCore core = Fixtures.core();
        long size = 8 << 20;
        Fixtures.create(core, img, size, "cluster_size", "512", "refcount_bits", "64");
        byte[] ref = new byte[(int) size];
        Refcounts.maxBlocksForTests = 16;
        try (Image i = core.open(img.toString(), org.blockhaus.api.Options.of("driver", "qcow2", "l2-cache-size",
                "2048"), org.blockhaus.api.BlockService.OpenMode.READ_WRITE)) {
            Mirror m = new Mirror(i, ref);
            java.util.Random r = new java.util.Random(3);
            for (int k = 0; k < 300; k++) {
                int len = 1 + r.nextInt(100_000);
                long off = (long) (r.nextDouble() * (size - len));
                m.write(off, Fixtures.pattern(len, k));
                if (k % 40 == 0) {
                    m.zero(off & -512, 4096, BlockNode.MAY_UNMAP);
                    i.flush();
                }
            }
        } finally {
            Refcounts.maxBlocksForTests = 0;
        }
        assertQemuAgrees(img, ref);
    }

    @Test
    void overwritesCompressedClustersMadeByQemu() throws Exception {
        Path raw = dir.resolve("src.raw");
        byte[] data = new byte[2 << 20];
        for (int i = 0; i < data.length; i++) {
            data[i] = (byte) (i / 1000);
        }
        Files.write(raw, data);
        Path img = dir.resolve("c.qcow2");
        Qemu.img("convert", "-c", "-O", "qcow2", raw.toString(), img.toString()).ok();
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRw(core, img)) {
            Mirror m = new Mirror(i, data);
            m.fill(10_000, 100, 0xee);         // partial: decompress, modify, store uncompressed
            m.fill(65536 * 5, 65536, 0xef);     // whole cluster
            m.zero(65536 * 9, 65536, 0);
        }
        assertQemuAgrees(img, data);
    }

    @Test
    void writesToImageWithInternalSnapshotKeepTheSnapshot() throws Exception {
        Path img = dir.resolve("s.qcow2");
        Qemu.img("create", "-f", "qcow2", img.toString(), "2M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 0x10 0 2M", img.toString()).ok();
        Qemu.img("snapshot", "-c", "snap1", img.toString()).ok();
        BlockCore core = Fixtures.core();
        byte[] ref = new byte[2 << 20];
        Arrays.fill(ref, (byte) 0x10);
        try (Image i = Fixtures.openRw(core, img)) {
            assertEquals("snap1", ((org.blockhaus.api.spi.SnapshotNode) i.driverNode()).snapshots().get(0).name());
            Mirror m = new Mirror(i, ref);
            m.fill(4096, 100, 0x20);
            m.fill(1 << 20, 65536, 0x21);
        }
        assertQemuAgrees(img, ref);
        Qemu.img("snapshot", "-a", "snap1", img.toString()).ok();
        Qemu.io("-r", "-f", "qcow2", "-c", "read -P 0x10 0 2M", img.toString()).ok();
        assertEquals(0, Qemu.img("check", img.toString()).exit());
    }

    @ParameterizedTest(name = "[{index}] {0}")
    @CsvSource({
        "''", "compat=0.10", "cluster_size=4096;lazy_refcounts=on;refcount_bits=8",
        "extended_l2=on;preallocation=metadata;compression_type=zstd"})
    void formattingLineMatchesQemuImg(String opts) throws Exception {
        Path ours = dir.resolve("ours.qcow2");
        Path theirs = dir.resolve("theirs.qcow2");
        String o = opts.replace(';', ',');
        Qemu.Result q = o.isEmpty() ? Qemu.img("create", "-f", "qcow2", theirs.toString(), "1048576")
                : Qemu.img("create", "-f", "qcow2", "-o", o, theirs.toString(), "1048576");
        String expected = q.ok().out().trim().replaceFirst("^Formatting '[^']*', ", "");
        BlockCore core = Fixtures.core();
        String summary = Fixtures.create(core, ours, 1 << 20, o.isEmpty() ? new String[0] : o.replace(',', '=').split("="));
        assertEquals(expected, summary);
    }

    @Test
    void backingFileWithoutFormatIsRefusedLikeQemuImg() throws Exception {
        Files.write(dir.resolve("b.raw"), new byte[1 << 20]);
        Path theirs = dir.resolve("theirs.qcow2");
        Qemu.Result q = Qemu.img("create", "-f", "qcow2", "-b", "b.raw", theirs.toString());
        assertEquals(1, q.exit());
        BlockCore core = Fixtures.core();
        Path ours = dir.resolve("ours.qcow2");
        org.blockhaus.api.BlockException e = org.junit.jupiter.api.Assertions.assertThrows(
                org.blockhaus.api.BlockException.class, () -> core.create(ours.toString(), "qcow2",
                        org.blockhaus.api.Options.of("backing_file", "b.raw"), s -> { }, w -> { }));
        // qemu-img prints "qemu-img: <file>: <message>"; the core may put the file name in front too
        assertEquals(q.err().trim().replaceFirst("^qemu-img: [^:]*: ", ""),
                e.getMessage().replaceFirst("^" + java.util.regex.Pattern.quote(ours.toString()) + ": ", ""));
        assertTrue(!Files.exists(ours), "a failed create leaves no file");
    }

    @Test
    void formattingLineWithBackingMatchesQemuImg() throws Exception {
        Files.write(dir.resolve("b.raw"), new byte[1 << 20]);
        Path theirs = dir.resolve("theirs.qcow2");
        String expected = Qemu.img("create", "-f", "qcow2", "-o", "compat=0.10", "-b", "b.raw", "-F", "raw",
                theirs.toString()).ok().out().trim().replaceFirst("^Formatting '[^']*', ", "");
        BlockCore core = Fixtures.core();
        java.util.List<String> summary = new java.util.ArrayList<>();
        core.create(dir.resolve("ours.qcow2").toString(), "qcow2", org.blockhaus.api.Options.of("compat", "0.10",
                "backing_file", "b.raw", "backing_fmt", "raw"), summary::add, w -> { });
        assertEquals(expected, summary.get(0));
    }
}
