package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.Callable;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.Image;
import org.blockhaus.api.Preallocation;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Growing an image (also past its L1 table) and writing from many threads at once. */
class ResizeAndConcurrencyTest {
    @TempDir
    Path dir;

    @Test
    void growsPastTheL1TableAndQemuAgrees() throws Exception {
        Path img = dir.resolve("r.qcow2");
        BlockCore core = Fixtures.core();
        Fixtures.create(core, img, 1 << 20, "cluster_size", "4096"); // one L2 table maps 2 MiB
        byte[] a = new byte[8192];
        Arrays.fill(a, (byte) 0x61);
        try (Image i = Fixtures.openRw(core, img)) {
            i.write(4096, ByteBuffer.wrap(a), 0);
            i.truncate(64 << 20, false, Preallocation.OFF);
            assertEquals(64 << 20, i.size());
            i.write((64 << 20) - 8192, ByteBuffer.wrap(a), 0);
        }
        String info = Qemu.img("info", "--output=json", img.toString()).ok().out();
        assertTrue(info.contains("\"virtual-size\": 67108864"), info);
        assertEquals(0, Qemu.img("check", img.toString()).exit(), Qemu.img("check", img.toString()).out());
        Qemu.io("-r", "-f", "qcow2", "-c", "read -P 0x61 4096 8192", "-c", "read -P 0x61 67100672 8192",
                "-c", "read -P 0 12288 1M", img.toString()).ok();
    }

    @org.junit.jupiter.params.ParameterizedTest(name = "{0}")
    @org.junit.jupiter.params.provider.ValueSource(strings = {"metadata", "falloc", "full"})
    void growsWithPreallocationLikeQemuImgResize(String mode) throws Exception {
        Path ours = dir.resolve("o.qcow2");
        Path theirs = dir.resolve("t.qcow2");
        for (Path p : new Path[] {ours, theirs}) {
            Qemu.img("create", "-f", "qcow2", "-o", "cluster_size=4k", p.toString(), "3M").ok();
            Qemu.io("-f", "qcow2", "-c", "write -P 1 0 1M", p.toString()).ok();
        }
        Qemu.img("resize", "--preallocation=" + mode, theirs.toString(), "12M").ok();
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRw(core, ours)) {
            i.truncate(12 << 20, false, Preallocation.parse(mode));
        }
        assertEquals(0, Qemu.img("check", ours.toString()).exit());
        String strip = ", \"offset\": \\d+";
        assertEquals(Qemu.img("map", "--output=json", theirs.toString()).ok().out().replaceAll(strip, "")
                        .replaceAll("\"zero\": \\w+, ", ""),
                Qemu.img("map", "--output=json", ours.toString()).ok().out().replaceAll(strip, "")
                        .replaceAll("\"zero\": \\w+, ", ""));
        Qemu.io("-r", "-f", "qcow2", "-c", "read -P 1 0 1M", "-c", "read -P 0 1M 11M", ours.toString()).ok();
    }

    @Test
    void shrinkReleasesWhatLiesPastTheNewEnd() throws Exception {
        Path img = dir.resolve("s.qcow2");
        Qemu.img("create", "-f", "qcow2", "-o", "cluster_size=4k", img.toString(), "16M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 1 0 16M", img.toString()).ok();
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRw(core, img)) {
            i.truncate(3 * (1 << 20) + 1024, false, Preallocation.OFF);
            assertEquals(3 * (1 << 20) + 1024, i.size());
        }
        Qemu.Result check = Qemu.img("check", "--output=json", img.toString());
        assertEquals(0, check.exit(), check.out());
        assertTrue(check.out().contains("\"allocated-clusters\": 769"), check.out());
        Qemu.io("-r", "-f", "qcow2", "-c", "read -P 1 0 3145728", img.toString()).ok();
        try (Image i = Fixtures.openRw(core, img)) {
            i.truncate(8 << 20, false, Preallocation.OFF); // grows again: the old data is gone
        }
        Qemu.io("-r", "-f", "qcow2", "-c", "read -P 0 3149824 1M", img.toString()).ok();
        assertEquals(0, Qemu.img("check", img.toString()).exit());
    }

    /** qemu's qcow2 refuses sizes that are not whole sectors (it does not round them). */
    @Test
    void refusesASizeThatIsNotAMultipleOf512AndChangesNothing() throws Exception {
        Path img = dir.resolve("u.qcow2");
        Qemu.img("create", "-f", "qcow2", img.toString(), "1M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 7 0 1M", img.toString()).ok();
        byte[] before = Files.readAllBytes(img);
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRw(core, img)) {
            for (long bad : new long[] {(1 << 20) + 1, (1 << 20) + 511, 1000, (3L << 40) + 100}) {
                BlockException e = assertThrows(BlockException.class,
                        () -> i.truncate(bad, false, Preallocation.OFF));
                assertEquals("The new size must be a multiple of 512", e.getMessage());
                assertEquals(1 << 20, i.size());
            }
        }
        assertArrayEquals(before, Files.readAllBytes(img));
    }

    /** Bitmaps left in use by a writer that died cannot follow a new size: qemu refuses, so do we. */
    @Test
    void refusesWhileABitmapIsInconsistentWithQemusMessage() throws Exception {
        Path img = dir.resolve("b.qcow2");
        Qemu.img("create", "-q", "-f", "qcow2", img.toString(), "4M").ok();
        Qemu.img("bitmap", "--add", img.toString(), "first").ok();
        Qemu.img("bitmap", "--add", img.toString(), "second").ok();
        BlockCore core = Fixtures.core();
        Image crashed = Fixtures.openRw(core, img);
        crashed.write(0, ByteBuffer.allocate(512), 0);
        crashed.flush(); // the bitmaps are marked in use on disk and never stored: a writer that died now
        Path ours = dir.resolve("ours.qcow2");
        Path theirs = dir.resolve("theirs.qcow2");
        Files.copy(img, ours);
        Files.copy(img, theirs);
        crashed.close();
        byte[] before = Files.readAllBytes(ours);
        for (String size : new String[] {"8M", "2M"}) {
            Qemu.Result q = Qemu.img("resize", "--shrink", theirs.toString(), size);
            assertEquals(1, q.exit(), q.out());
            try (Image i = Fixtures.openRw(core, ours)) {
                BlockException e = assertThrows(BlockException.class,
                        () -> i.truncate(Long.parseLong(size.replace("M", "")) << 20, false, Preallocation.OFF));
                assertEquals(q.err(), "qemu-img: " + e.getMessage() + "\n");
            }
            // neither tool wrote anything: not the refused resize, not opening and closing
            assertArrayEquals(before, Files.readAllBytes(theirs));
            assertArrayEquals(before, Files.readAllBytes(ours));
        }
        assertEquals(0, Qemu.img("check", ours.toString()).exit());
    }

    @Test
    void concurrentWritersToDisjointRangesAllLand() throws Exception {
        Path img = dir.resolve("c.qcow2");
        BlockCore core = Fixtures.core();
        int threads = 8;
        int perThread = 2 << 20;
        Fixtures.create(core, img, (long) threads * perThread, "cluster_size", "16384");
        byte[] ref = new byte[threads * perThread];
        try (Image i = Fixtures.openRw(core, img); ExecutorService pool = Executors.newFixedThreadPool(threads)) {
            List<Future<Void>> done = new ArrayList<>();
            for (int t = 0; t < threads; t++) {
                int id = t;
                done.add(pool.submit((Callable<Void>) () -> {
                    java.util.Random r = new java.util.Random(id);
                    for (int k = 0; k < 200; k++) {
                        int len = 1 + r.nextInt(40_000);
                        int off = r.nextInt(perThread - len);
                        byte[] d = Fixtures.pattern(len, id * 1000L + k);
                        i.write((long) id * perThread + off, ByteBuffer.wrap(d), 0);
                        synchronized (ref) {
                            System.arraycopy(d, 0, ref, id * perThread + off, len);
                        }
                        if (k % 50 == 0) {
                            i.flush();
                        }
                    }
                    return null;
                }));
            }
            for (Future<Void> f : done) {
                f.get();
            }
            assertArrayEquals(ref, Fixtures.readAll(i));
        }
        Path raw = dir.resolve("c.raw");
        Files.write(raw, ref);
        assertEquals(0, Qemu.img("check", img.toString()).exit());
        assertEquals(0, Qemu.img("compare", "-f", "raw", "-F", "qcow2", raw.toString(), img.toString()).exit());
    }

    /**
     * Writers fill interleaved 4 KiB slots of the same 64 KiB clusters over a backing file, so
     * clusters are allocated (copy on write) while other slots of them are being written and read
     * outside the node lock: no slot may lose its data, and a read sees either the backing file's
     * bytes or the slot's final bytes, never a half-allocated cluster.
     */
    @Test
    void partialWritesIntoSharedClustersRaceWithReadsAndLoseNothing() throws Exception {
        Path base = dir.resolve("base.qcow2");
        Path top = dir.resolve("top.qcow2");
        int slots = 2048; // 8 MiB
        Qemu.img("create", "-f", "qcow2", base.toString(), "8M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 0x5a 0 8M", base.toString()).ok();
        Qemu.img("create", "-f", "qcow2", "-b", base.toString(), "-F", "qcow2", top.toString()).ok();
        BlockCore core = Fixtures.core();
        int writers = 8;
        java.util.concurrent.atomic.AtomicBoolean writing = new java.util.concurrent.atomic.AtomicBoolean(true);
        java.util.concurrent.atomic.AtomicInteger torn = new java.util.concurrent.atomic.AtomicInteger();
        try (Image i = Fixtures.openRw(core, top); ExecutorService pool = Executors.newVirtualThreadPerTaskExecutor()) {
            List<Future<Void>> done = new ArrayList<>();
            for (int t = 0; t < writers; t++) {
                int id = t;
                done.add(pool.submit((Callable<Void>) () -> {
                    for (int slot = id; slot < slots; slot += writers) {
                        i.write(slot * 4096L, ByteBuffer.wrap(slotBytes(slot)), 0);
                    }
                    return null;
                }));
            }
            Future<Void> reader = pool.submit((Callable<Void>) () -> {
                java.util.Random r = new java.util.Random(7);
                byte[] backing = new byte[4096];
                Arrays.fill(backing, (byte) 0x5a);
                while (writing.get()) {
                    int slot = r.nextInt(slots);
                    ByteBuffer b = ByteBuffer.allocate(4096);
                    i.read(slot * 4096L, b);
                    if (!Arrays.equals(b.array(), backing) && !Arrays.equals(b.array(), slotBytes(slot))) {
                        torn.incrementAndGet();
                    }
                }
                return null;
            });
            for (Future<Void> f : done) {
                f.get();
            }
            writing.set(false);
            reader.get();
            for (int slot = 0; slot < slots; slot++) {
                ByteBuffer b = ByteBuffer.allocate(4096);
                i.read(slot * 4096L, b);
                assertArrayEquals(slotBytes(slot), b.array(), "slot " + slot);
            }
        }
        assertEquals(0, torn.get(), "reads that saw neither the old nor the new bytes");
        assertEquals(0, Qemu.img("check", top.toString()).exit());
        Qemu.io("-r", "-f", "qcow2", "-c", "read -P " + (7 % 251 + 1) + " 28672 4096", top.toString()).ok();
    }

    private static byte[] slotBytes(int slot) {
        byte[] b = new byte[4096];
        Arrays.fill(b, (byte) (slot % 251 + 1));
        return b;
    }
}
