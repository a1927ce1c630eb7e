package org.blockhaus.protocol.file.impl;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Random;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.api.Preallocation;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The basic promises of the "file" protocol: I/O, size, EOF, errors in QEMU's words. */
class FileDriverTest {
    @TempDir
    Path dir;

    private final FileDriver driver = new FileDriver();

    private static byte[] random(int n, long seed) {
        byte[] b = new byte[n];
        new Random(seed).nextBytes(b);
        return b;
    }

    @Test
    void readsWhatItWrote() throws Exception {
        Path f = Files.write(dir.resolve("a.raw"), new byte[1 << 20]);
        byte[] data = random(70_000, 1);
        try (BlockNode n = driver.open(TestContext.readWrite(f.toString()))) {
            n.write(12_345, ByteBuffer.wrap(data), 0);
            n.flush();
            ByteBuffer back = ByteBuffer.allocate(data.length);
            n.read(12_345, back);
            assertArrayEquals(data, back.array());
        }
        byte[] onDisk = Files.readAllBytes(f);
        assertArrayEquals(data, java.util.Arrays.copyOfRange(onDisk, 12_345, 12_345 + data.length));
    }

    @Test
    void sizeIsRoundedUpToSectorsAndTheTailReadsAsZeroes() throws Exception {
        byte[] content = random(1000, 2);
        Path f = Files.write(dir.resolve("odd.raw"), content);
        try (BlockNode n = driver.open(TestContext.readOnly(f.toString()))) {
            assertEquals(1024, n.size());
            ByteBuffer all = ByteBuffer.allocate(1024);
            all.put(new byte[0]);
            java.util.Arrays.fill(all.array(), (byte) 0x55);
            n.read(0, all);
            assertArrayEquals(content, java.util.Arrays.copyOf(all.array(), 1000));
            assertArrayEquals(new byte[24], java.util.Arrays.copyOfRange(all.array(), 1000, 1024));
        }
    }

    @Test
    void truncateGrowsAndShrinks() throws Exception {
        Path f = Files.write(dir.resolve("t.raw"), random(4096, 3));
        try (BlockNode n = driver.open(TestContext.readWrite(f.toString()))) {
            n.truncate(10 << 20, true, Preallocation.OFF);
            assertEquals(10 << 20, n.size());
            assertEquals(10 << 20, Files.size(f));
            n.truncate(512, true, Preallocation.OFF);
            assertEquals(512, Files.size(f));
        }
    }

    @Test
    void readOnlyNodeRefusesWritesFromItsChannel() throws Exception {
        Path f = Files.write(dir.resolve("ro.raw"), new byte[4096]);
        try (BlockNode n = driver.open(TestContext.readOnly(f.toString()))) {
            assertThrows(BlockException.class, () -> n.write(0, ByteBuffer.allocate(512), 0));
        }
    }

    @Test
    void concurrentWritersEachLandWhereTheyAimed() throws Exception {
        Path f = Files.write(dir.resolve("par.raw"), new byte[0]);
        int chunk = 64 << 10;
        int writers = 64;
        try (BlockNode n = driver.open(TestContext.readWrite(f.toString()))) {
            n.truncate((long) chunk * writers, true, Preallocation.OFF);
            try (var pool = java.util.concurrent.Executors.newVirtualThreadPerTaskExecutor()) {
                for (int i = 0; i < writers; i++) {
                    int id = i;
                    pool.submit(() -> {
                        n.write((long) id * chunk, ByteBuffer.wrap(random(chunk, id)), 0);
                        return null;
                    });
                }
            }
            for (int i = 0; i < writers; i++) {
                ByteBuffer b = ByteBuffer.allocate(chunk);
                n.read((long) i * chunk, b);
                assertArrayEquals(random(chunk, i), b.array(), "chunk " + i);
            }
        }
    }

    @Test
    void missingFileIsReportedInQemuWords() {
        String name = dir.resolve("nofile").toString();
        BlockException e = assertThrows(BlockException.class, () -> driver.open(TestContext.readOnly(name)));
        assertEquals("Could not open '" + name + "': No such file or directory", e.getMessage());
        assertEquals(Reason.NOT_FOUND, e.reason());
    }

    @Test
    void directoryIsRefusedAsQemuDoes() {
        String name = dir.toString();
        BlockException ro = assertThrows(BlockException.class, () -> driver.open(TestContext.readOnly(name)));
        assertEquals("'file' driver requires '" + name + "' to be a regular file", ro.getMessage());
        BlockException rw = assertThrows(BlockException.class, () -> driver.open(TestContext.readWrite(name)));
        assertEquals("Could not open '" + name + "': Is a directory", rw.getMessage());
    }

    @Test
    void filePrefixIsStripped() throws Exception {
        assertEquals(Options.of("filename", "/x/y.img"), driver.parseFilename("file:/x/y.img"));
        assertEquals(Options.of("filename", "y.img"), driver.parseFilename("y.img"));
    }

    @Test
    void opensPlainPathsThroughTheCore() throws Exception {
        Path f = Files.write(dir.resolve("core.raw"), random(8192, 4));
        BlockCore core = BlockCore.standalone();
        core.addDriver(driver);
        try (Image img = core.open(f.toString(), Options.of("driver", "file"), OpenMode.READ_WRITE)) {
            assertEquals("file", img.driverName());
            assertEquals(8192, img.size());
            img.write(100, ByteBuffer.wrap(new byte[] {1, 2, 3}), 0); // unaligned: fine, alignment is 1
            ByteBuffer b = ByteBuffer.allocate(3);
            img.read(100, b);
            assertArrayEquals(new byte[] {1, 2, 3}, b.array());
        }
        BlockException e = assertThrows(BlockException.class,
                () -> core.open(dir.resolve("nofile").toString(), Options.of("driver", "file"), OpenMode.READ_ONLY));
        assertTrue(e.getMessage().contains("No such file or directory"), e.getMessage());
    }

    @Test
    void createMakesAFileOfTheGivenSize() throws Exception {
        Path f = dir.resolve("new.raw");
        BlockCore core = BlockCore.standalone();
        core.addDriver(driver);
        core.create(f.toString(), "file", Options.of("size", "1M"), s -> { }, w -> { });
        assertEquals(1 << 20, Files.size(f));
        core.create(f.toString(), "file", Options.of("size", "511"), s -> { }, w -> { });
        assertEquals(512, Files.size(f), "qemu rounds sizes up to 512 bytes");
    }
}
