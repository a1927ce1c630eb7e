package org.blockhaus.protocol.file.impl;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.BlockStatus;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.api.spi.OptionSpec;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Holes, zeroes, discard, allocation and preallocation, each compared with what QEMU 7.2 does to
 * the same file: {@code qemu-img map}, {@code qemu-img info}'s disk size, {@code qemu-io write -z},
 * {@code qemu-img create -o preallocation=...}, and st_blocks from {@code stat}.
 */
class AllocationInteropTest {
    private static final Pattern MAP_LINE = Pattern.compile("\"start\": (\\d+), \"length\": (\\d+), \"depth\": \\d+,"
            + " \"present\": (\\w+), \"zero\": (\\w+), \"data\": (\\w+)(?:, \"offset\": (\\d+))?");

    @TempDir
    Path dir;

    private final FileDriver driver = new FileDriver();


    private org.blockhaus.core.BlockCore blk;

    @BeforeEach
    void setUp() {
        blk = org.blockhaus.core.BlockCore.standalone();
        blk.addDriver(driver);
    }

    /** qemu-img map of a file, one line per extent. */
    private static List<String> qemuMap(Path f) throws Exception {
        String json = Peers.check(Peers.qemuImg(), "map", "--output=json", "-f", "file", f.toString());
        List<String> out = new ArrayList<>();
        Matcher m = MAP_LINE.matcher(json);
        while (m.find()) {
            out.add(extent(Long.parseLong(m.group(1)), Long.parseLong(m.group(2)), m.group(3).equals("true"),
                    m.group(4).equals("true"), m.group(5).equals("true"),
                    m.group(6) == null ? -1 : Long.parseLong(m.group(6))));
        }
        assertFalse(out.isEmpty(), json);
        return out;
    }

    private static String extent(long start, long length, boolean present, boolean zero, boolean data, long offset) {
        return "start=" + start + " length=" + length + " present=" + present + " zero=" + zero + " data=" + data
                + " offset=" + offset;
    }

    /** Our block status over the whole file, merged as qemu-img map merges. */
    private List<String> ourMap(Path f) throws Exception {
        List<String> out = new ArrayList<>();
        try (Image img = blk.open(f.toString(), Options.of("driver", "file"), OpenMode.READ_ONLY)) {
            long size = img.size();
            long start = 0;
            long len = 0;
            int kind = -1;
            for (long at = 0; at < size; ) {
                BlockStatus s = img.blockStatus(at, size - at);
                assertEquals(at, s.hostOffset(), "a file maps 1:1");
                int k = s.flags();
                if (k != kind && kind != -1) {
                    out.add(extent(start, len, (kind & BlockStatus.ALLOCATED) != 0, (kind & BlockStatus.ZERO) != 0,
                            (kind & BlockStatus.DATA) != 0, start));
                    start = at;
                    len = 0;
                }
                kind = k;
                len += s.length();
                at += s.length();
            }
            if (kind != -1) {
                out.add(extent(start, len, (kind & BlockStatus.ALLOCATED) != 0, (kind & BlockStatus.ZERO) != 0,
                        (kind & BlockStatus.DATA) != 0, start));
            }
        }
        return out;
    }

    /** {@code stat -c '%s %b'}: size and 512-byte blocks, as the kernel reports them. */
    private static String sizeAndBlocks(Path f) throws Exception {
        return Peers.check("stat", "-c", "%s %b", f.toString()).trim();
    }

    private static long qemuDiskSize(Path f) throws Exception {
        String json = Peers.check(Peers.qemuImg(), "info", "--output=json", "-f", "file", f.toString());
        Matcher m = Pattern.compile("\"actual-size\": (\\d+)").matcher(json);
        assertTrue(m.find(), json);
        return Long.parseLong(m.group(1));
    }

    /** A 10 MiB sparse file: hole, 128 KiB random, hole, 64 KiB of written zeroes, hole. */
    private Path sparse() throws Exception {
        Path f = dir.resolve("sparse.raw");
        Peers.check("truncate", "-s", "10M", f.toString());
        byte[] rnd = new byte[128 << 10];
        new Random(7).nextBytes(rnd);
        try (BlockNode n = driver.open(TestContext.readWrite(f.toString()))) {
            n.write(1 << 20, ByteBuffer.wrap(rnd), 0);
            n.write(40 * 65536L, ByteBuffer.allocate(65536), 0);
        }
        return f;
    }

    @Test
    void blockStatusAgreesWithQemuImgMap() throws Exception {
        Path f = sparse();
        List<String> expected = qemuMap(f);
        assertEquals(5, expected.size(), expected.toString());
        assertEquals(expected, ourMap(f));
    }

    @Test
    void blockStatusOfAnOddSizedFileAgreesWithQemuImgMap() throws Exception {
        Path data = Files.write(dir.resolve("d1000"), new byte[1000]);
        Files.write(data, "x".repeat(1000).getBytes());
        Path hole = dir.resolve("h1000");
        Peers.check("truncate", "-s", "1000", hole.toString());
        for (Path f : List.of(data, hole)) {
            assertEquals(qemuMap(f), ourMap(f), f.toString());
        }
    }

    @Test
    void allocatedSizeIsQemuImgDiskSize() throws Exception {
        Path f = sparse();
        try (Image img = blk.open(f.toString(), Options.of("driver", "file"), OpenMode.READ_ONLY)) {
            assertEquals(qemuDiskSize(f), img.allocatedSize());
            assertEquals(192 << 10, img.allocatedSize());
        }
    }

    /** Copies a fully allocated 1 MiB file of 0xab twice: one for qemu-io, one for us. */
    private Path[] twoCopies() throws Exception {
        Path base = dir.resolve("base.raw");
        Peers.check(Peers.qemuImg(), "create", "-q", "-f", "raw", base.toString(), "1M");
        Peers.check(Peers.qemuIo(), "-f", "raw", "-c", "write -P 0xab 0 1M", base.toString());
        Path theirs = Files.copy(base, dir.resolve("theirs.raw"), StandardCopyOption.REPLACE_EXISTING);
        Path ours = Files.copy(base, dir.resolve("ours.raw"), StandardCopyOption.REPLACE_EXISTING);
        assertEquals("1048576 2048", sizeAndBlocks(ours));
        return new Path[] {theirs, ours};
    }

    private void assertSameAsQemu(Path theirs, Path ours) throws Exception {
        assertEquals(qemuMap(theirs), ourMap(ours));
        assertEquals(qemuMap(theirs), qemuMap(ours));
        assertEquals(sizeAndBlocks(theirs), sizeAndBlocks(ours));
        assertEquals(0, Peers.run(Peers.qemuImg(), "compare", "-f", "raw", "-F", "raw", theirs.toString(),
                ours.toString()).exit(), "same content");
    }

    /**
     * Large writes reserve their blocks with fallocate first (ext4): into a hole inside the file,
     * right at its end and past it with a gap. The file must end up as plain pwrites leave a twin:
     * same length, same qemu-img map (the gap and everything unwritten stay holes), same blocks,
     * same bytes; small writes go as before.
     */
    @Test
    void largeWritesAllocateOnlyWhatTheyWriteLikeQemuIo() throws Exception {
        Path theirs = dir.resolve("theirs-big.raw");
        Path ours = dir.resolve("ours-big.raw");
        for (Path f : List.of(theirs, ours)) {
            Peers.check("truncate", "-s", "8M", f.toString());
        }
        // offset, length, pattern: inside (hole), at the end, past the end after a 1 MiB gap, small
        long[][] writes = {{1 << 20, 2 << 20, 0x11}, {8 << 20, 1 << 20, 0x22}, {10 << 20, 3 << 20, 0x33},
            {5 << 20, 4096, 0x44}, {(6 << 20) + 512, 300 << 10, 0x55}};
        // the twin gets plain pwrites (qemu's file-posix makes no others for these): qemu-io itself
        // cannot write past the end of a raw image
        try (var ch = java.nio.channels.FileChannel.open(theirs, java.nio.file.StandardOpenOption.WRITE)) {
            for (long[] w : writes) {
                byte[] b = new byte[(int) w[1]];
                java.util.Arrays.fill(b, (byte) w[2]);
                ByteBuffer src = ByteBuffer.wrap(b);
                for (long at = w[0]; src.hasRemaining(); ) {
                    at += ch.write(src, at);
                }
            }
        }
        try (BlockNode n = driver.open(TestContext.readWrite(ours.toString()))) {
            for (long[] w : writes) {
                byte[] b = new byte[(int) w[1]];
                java.util.Arrays.fill(b, (byte) w[2]);
                n.write(w[0], ByteBuffer.wrap(b), 0);
            }
            assertEquals(13L << 20, n.size());
        }
        assertEquals(sizeAndBlocks(theirs), sizeAndBlocks(ours));
        assertEquals(qemuMap(theirs), qemuMap(ours));
        assertArrayEquals(Files.readAllBytes(theirs), Files.readAllBytes(ours));
    }

    @Test
    void writeZeroesAllocatesLikeQemuIoWriteZ() throws Exception {
        Path[] f = twoCopies();
        Peers.check(Peers.qemuIo(), "-f", "raw", "-c", "write -z 64k 128k", f[0].toString());
        try (Image img = blk.open(f[1].toString(), Options.of("driver", "file"), OpenMode.READ_WRITE)) {
            img.writeZeroes(64 << 10, 128 << 10, 0);
        }
        assertSameAsQemu(f[0], f[1]);
    }

    @Test
    void writeZeroesWithUnmapPunchesAHoleLikeQemuIoWriteZU() throws Exception {
        Path[] f = twoCopies();
        Peers.check(Peers.qemuIo(), "-f", "raw", "-c", "write -z -u 64k 128k", f[0].toString());
        try (Image img = blk.open(f[1].toString(), Options.of("driver", "file"), OpenMode.READ_WRITE)) {
            img.writeZeroes(64 << 10, 128 << 10, BlockNode.MAY_UNMAP);
            ByteBuffer back = ByteBuffer.allocate(128 << 10);
            img.read(64 << 10, back);
            assertArrayEquals(new byte[128 << 10], back.array());
        }
        assertSameAsQemu(f[0], f[1]);
        assertEquals("1048576 1792", sizeAndBlocks(f[1]));
    }

    @Test
    void discardPunchesAHoleLikeQemuIoDiscard() throws Exception {
        Path[] f = twoCopies();
        Peers.check(Peers.qemuIo(), "-f", "raw", "-c", "discard 256k 64k", f[0].toString());
        try (Image img = blk.open(f[1].toString(), Options.of("driver", "file"), OpenMode.READ_WRITE)) {
            img.discard(256 << 10, 64 << 10);
        }
        assertSameAsQemu(f[0], f[1]);
    }

    @Test
    void preallocationModesAllocateLikeQemuImg() throws Exception {
        for (String mode : List.of("off", "falloc", "full")) {
            for (String size : List.of("0", "511", "2048", "1M", "10M", "1073741825")) {
                Path theirs = dir.resolve("q-" + mode + "-" + size);
                Path ours = dir.resolve("b-" + mode + "-" + size);
                Peers.check(Peers.qemuImg(), "create", "-q", "-f", "file", "-o", "preallocation=" + mode,
                        theirs.toString(), size);
                blk.create(ours.toString(), "file", Options.of("size", size, "preallocation", mode), s -> { },
                        w -> { });
                assertEquals(sizeAndBlocks(theirs), sizeAndBlocks(ours), mode + " " + size);
                assertEquals(qemuDiskSize(theirs), qemuDiskSize(ours), mode + " " + size);
                Files.delete(theirs);
                Files.delete(ours);
            }
        }
    }

    @Test
    void createEmptiesAnExistingFileFirst() throws Exception {
        Path f = Files.write(dir.resolve("old.raw"), new byte[3 << 20]);
        blk.create(f.toString(), "file", Options.of("size", "1M"), s -> { }, w -> { });
        assertEquals("1048576 8", sizeAndBlocks(f));
    }

    @Test
    void badPreallocationValueCreatesNothing() {
        Path f = dir.resolve("never.raw");
        for (String bad : List.of("bogus", "metadata")) {
            BlockException e = assertThrows(BlockException.class, () -> blk.create(f.toString(), "file",
                    Options.of("size", "1M", "preallocation", bad), s -> { }, w -> { }));
            assertEquals(Reason.INVALID_ARGUMENT, e.reason());
            // qemu-img: "<file>: invalid parameter value: bogus"; the core may add the file name
            assertTrue(e.getMessage().endsWith(bad.equals("bogus") ? "invalid parameter value: bogus"
                    : "Unsupported preallocation mode: metadata"), e.getMessage());
            assertFalse(Files.exists(f));
        }
    }

    @Test
    void createOptionsHaveQemuImgsHelpTexts() throws Exception {
        String help = Peers.check(Peers.qemuImg(), "create", "-f", "file", "-o", "help");
        for (OptionSpec s : driver.descriptor().createOptions()) {
            String line = "  " + s.name() + "=<" + s.type().label() + ">";
            assertTrue(help.contains(line), line + " in\n" + help);
            assertTrue(help.contains("- " + s.help() + "\n"), s.help() + " in\n" + help);
        }
        assertEquals(4, driver.descriptor().createOptions().size());
    }

    @Test
    void resizeWithPreallocationAllocatesLikeQemuImgResize() throws Exception {
        for (String mode : List.of("off", "falloc", "full")) {
            Path theirs = dir.resolve("rq-" + mode);
            Path ours = dir.resolve("rb-" + mode);
            Peers.check(Peers.qemuImg(), "create", "-q", "-f", "raw", theirs.toString(), "1M");
            Peers.check(Peers.qemuImg(), "create", "-q", "-f", "raw", ours.toString(), "1M");
            Peers.check(Peers.qemuImg(), "resize", "-q", "-f", "raw", "--preallocation=" + mode, theirs.toString(),
                    "5M");
            try (Image img = blk.open(ours.toString(), Options.of("driver", "file"), OpenMode.READ_WRITE)) {
                img.truncate(5 << 20, true, org.blockhaus.api.Preallocation.parse(mode));
                assertEquals(5 << 20, img.size());
            }
            assertEquals(sizeAndBlocks(theirs), sizeAndBlocks(ours), mode);
        }
    }
}
