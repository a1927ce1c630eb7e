package org.blockhaus.core.impl;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.ConvertOptions;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.api.spi.BlockDriver;
import org.blockhaus.api.spi.DriverDescriptor;
import org.blockhaus.api.spi.OpenContext;
import org.blockhaus.api.spi.ForwardingNode;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

class CoreTest {
    private CoreService core;
    private MemoryDriver mem;

    /** A format that passes everything through, like raw, to build chains in tests. */
    static final class PassDriver implements BlockDriver {
        @Override
        public DriverDescriptor descriptor() {
            return new DriverDescriptor("pass", DriverDescriptor.Kind.FORMAT, "test", List.of(), List.of(), List.of());
        }

        @Override
        public int probe(ByteBuffer head, String filename) {
            return head.remaining() >= 4 && head.getInt(0) == 0x50415353 ? 100 : 0;
        }

        @Override
        public BlockNode open(OpenContext ctx) throws BlockException {
            return new ForwardingNode(ctx.openFile());
        }
    }

    @BeforeEach
    void setUp() {
        core = new CoreService();
        mem = new MemoryDriver();
        core.addDriver(mem);
        core.addDriver(new PassDriver());
    }

    private Image openMem(String name, int size, boolean writable) throws BlockException {
        mem.disks.putIfAbsent(name, new byte[size]);
        return core.open("mem:" + name, Options.of("driver", "mem"), writable ? OpenMode.READ_WRITE : OpenMode.READ_ONLY);
    }

    @Test
    void unalignedWriteIsReadModifyWriteOfWholeBlocks() throws Exception {
        mem.alignment = 512;
        Image img = openMem("a", 4096, true);
        byte[] data = new byte[100];
        java.util.Arrays.fill(data, (byte) 7);
        img.write(1000, ByteBuffer.wrap(data), 0);
        for (String r : mem.requests) {
            String[] p = r.split(" ");
            if (p.length >= 3) {
                assertEquals(0, Long.parseLong(p[1]) % 512, r);
                assertEquals(0, Long.parseLong(p[2]) % 512, r);
            }
        }
        ByteBuffer back = ByteBuffer.allocate(102);
        img.read(999, back);
        assertEquals(0, back.get(0));
        assertEquals(7, back.get(1));
        assertEquals(7, back.get(100));
        assertEquals(0, back.get(101));
    }

    @Test
    void requestsAreSplitAtMaxTransfer() throws Exception {
        mem.maxTransfer = 1024;
        Image img = openMem("b", 8192, true);
        img.write(0, ByteBuffer.allocate(4096), 0);
        assertEquals(4, mem.requests.stream().filter(r -> r.startsWith("write")).count());
        assertTrue(mem.requests.stream().allMatch(r -> !r.startsWith("write") || r.endsWith(" 1024")));
    }

    @Test
    void fuaIsEmulatedWithFlushWhenNotNative() throws Exception {
        Image img = openMem("c", 4096, true);
        img.write(0, ByteBuffer.allocate(512), BlockNode.FUA);
        assertEquals(List.of("write 0 512", "flush"), mem.requests);
    }

    @Test
    void writeZeroesIsEmulatedWhenTheDriverCannot() throws Exception {
        Image img = openMem("d", 4096, true);
        img.write(0, ByteBuffer.wrap(new byte[] {1, 2, 3, 4}), 0);
        img.writeZeroes(1, 2, 0);
        assertArrayEquals(new byte[] {1, 0, 0, 4}, java.util.Arrays.copyOf(mem.disks.get("d"), 4));
    }

    @Test
    void refusesRequestsBeyondTheEndAndWritesToReadOnlyNodes() throws Exception {
        Image ro = openMem("e", 4096, false);
        assertEquals(Reason.OUT_OF_RANGE, assertThrows(BlockException.class,
                () -> ro.read(4000, ByteBuffer.allocate(200))).reason());
        assertEquals(Reason.OUT_OF_RANGE, assertThrows(BlockException.class,
                () -> ro.read(Long.MAX_VALUE - 10, ByteBuffer.allocate(200))).reason());
        assertEquals(Reason.READ_ONLY, assertThrows(BlockException.class,
                () -> ro.write(0, ByteBuffer.allocate(1), 0)).reason());
    }

    @Test
    void probesTheFormatOfTheTopLayer() throws Exception {
        byte[] disk = new byte[4096];
        ByteBuffer.wrap(disk).putInt(0x50415353);
        mem.disks.put("f", disk);
        Image img = core.open("mem:f", null, OpenMode.READ_ONLY);
        assertEquals("pass", img.driverName());
        assertEquals("mem", img.file().driverName());
    }

    @Test
    void fallsBackToRawOnlyWhenRawIsInstalled() throws Exception {
        mem.disks.put("g", new byte[512]);
        BlockException e = assertThrows(BlockException.class, () -> core.open("mem:g", null, OpenMode.READ_ONLY));
        assertTrue(e.getMessage().contains("format"), e.getMessage());
    }

    @Test
    void unknownDriverOptionAndProtocolAreErrorsInQemusWords() {
        assertEquals("Unknown driver 'nope'", assertThrows(BlockException.class,
                () -> core.open("x", Options.of("driver", "nope"), OpenMode.READ_ONLY)).getMessage());
        mem.disks.put("h", new byte[512]);
        assertEquals("Block format 'pass' does not support the option 'foo'", assertThrows(BlockException.class,
                () -> core.open("mem:h", Options.of("driver", "pass", "foo", "1"), OpenMode.READ_ONLY)).getMessage());
        assertEquals("Unknown protocol 'zz'", assertThrows(BlockException.class,
                () -> core.open("zz://host/x", null, OpenMode.READ_ONLY)).getMessage());
    }

    @Test
    void jsonFilenamesOpenTheSameChain() throws Exception {
        mem.disks.put("j", new byte[1024]);
        Image img = core.open("json:{\"driver\": \"pass\", \"file\": {\"driver\": \"mem\", \"filename\": \"j\"}}", null,
                OpenMode.READ_ONLY);
        assertEquals("pass", img.driverName());
        assertEquals(1024, img.size());
    }

    @Test
    void removingADriverClosesItsNodesAndEveryNodeAboveThem() throws Exception {
        mem.disks.put("k", new byte[1024]);
        Image img = core.open("mem:k", Options.of("driver", "pass"), OpenMode.READ_ONLY);
        List<String> heard = new ArrayList<>();
        img.onClose(heard::add);
        core.removeDriverAndClose(mem);
        assertTrue(img.isClosed());
        assertTrue(img.file().isClosed());
        assertEquals(List.of("driver 'mem' was removed"), heard);
        assertEquals(Reason.CLOSED, assertThrows(BlockException.class, () -> img.read(0, ByteBuffer.allocate(1)))
                .reason());
        assertFalse(core.drivers().stream().anyMatch(d -> d.name().equals("mem")));
    }

    @Test
    void convertCopiesDataAndSkipsZeroRunsOnZeroTargets() throws Exception {
        byte[] src = new byte[3 << 20];
        java.util.Random r = new java.util.Random(1);
        byte[] chunk = new byte[1 << 20];
        r.nextBytes(chunk);
        System.arraycopy(chunk, 0, src, 0, chunk.length);
        System.arraycopy(chunk, 0, src, 2 << 20, 4096);
        mem.disks.put("src", src);
        mem.disks.put("dst", new byte[3 << 20]);
        Image s = core.open("mem:src", Options.of("driver", "mem"), OpenMode.READ_ONLY);
        Image d = core.open("mem:dst", Options.of("driver", "mem"), OpenMode.READ_WRITE);
        List<Double> progress = new ArrayList<>();
        mem.requests.clear();
        core.convert(List.of(s), d, ConvertOptions.DEFAULT.withTargetIsZero(true), progress::add);
        assertArrayEquals(src, mem.disks.get("dst"));
        long written = mem.requests.stream().filter(q -> q.startsWith("write"))
                .mapToLong(q -> Long.parseLong(q.split(" ")[2])).sum();
        assertEquals((1 << 20) + 4096, written);
        assertEquals(100.0, progress.get(progress.size() - 1));
    }

    @Test
    void backingLoopsAreRefused() throws Exception {
        // a format whose every image names itself as its backing file
        core.addDriver(new BlockDriver() {
            @Override
            public DriverDescriptor descriptor() {
                return new DriverDescriptor("loop", DriverDescriptor.Kind.FORMAT, "t", List.of(), List.of(), List.of());
            }

            @Override
            public BlockNode open(OpenContext ctx) throws BlockException {
                BlockNode f = ctx.openFile();
                ctx.openBacking("mem:l", "loop");
                return new ForwardingNode(f);
            }
        });
        mem.disks.put("l", new byte[512]);
        BlockException e = assertThrows(BlockException.class,
                () -> core.open("mem:l", Options.of("driver", "loop"), OpenMode.READ_ONLY));
        assertTrue(e.getMessage().contains("loop") || e.getMessage().contains("deeper"), e.getMessage());
    }

    @Test
    void anImageGuessedAsRawCannotBeGivenAnotherFormatsHeader() throws Exception {
        core.addDriver(new BlockDriver() {
            @Override
            public DriverDescriptor descriptor() {
                return new DriverDescriptor("raw", DriverDescriptor.Kind.FORMAT, "t", List.of(), List.of(), List.of());
            }

            @Override
            public int probe(ByteBuffer head, String filename) {
                return 1;
            }

            @Override
            public BlockNode open(OpenContext ctx) throws BlockException {
                return new ForwardingNode(ctx.openFile());
            }
        });
        mem.disks.put("z", new byte[4096]);
        List<String> warnings = new ArrayList<>();
        Image img = core.open("mem:z", null, new OpenMode(true, false, warnings::add));
        assertEquals("raw", img.driverName());
        assertTrue(warnings.get(0).contains("probing guessed raw"), warnings.toString());
        img.write(0, ByteBuffer.wrap(new byte[] {1, 2, 3, 4}), 0);
        ByteBuffer header = ByteBuffer.allocate(8).putInt(0x50415353);
        header.flip();
        assertEquals(Reason.PERMISSION, assertThrows(BlockException.class, () -> img.write(0, header, 0)).reason());
        img.write(512, ByteBuffer.allocate(8).putInt(0, 0x50415353), 0); // elsewhere it is just data
    }

    @Test
    void aProtocolThatClaimsAPlainNameGetsIt() throws Exception {
        core.addDriver(new BlockDriver() {
            @Override
            public DriverDescriptor descriptor() {
                return new DriverDescriptor("dev", DriverDescriptor.Kind.PROTOCOL, "t", List.of(), List.of(),
                        List.of());
            }

            @Override
            public int probeDevice(String filename) {
                return filename.startsWith("/fake-dev/") ? 100 : 0;
            }

            @Override
            public BlockNode open(OpenContext ctx) throws BlockException {
                return mem.open(ctx);
            }
        });
        mem.disks.put("/fake-dev/sda", new byte[512]);
        assertEquals("dev", core.open("/fake-dev/sda", Options.of("driver", "pass"), OpenMode.READ_ONLY).file()
                .driverName());
        BlockException e = assertThrows(BlockException.class,
                () -> core.open("/elsewhere/x", Options.of("driver", "pass"), OpenMode.READ_ONLY));
        assertTrue(e.getMessage().contains("file"), e.getMessage());
    }

    @Test
    void probingOpensTheProtocolOnceThenGivesItTheFormatsPermissions() throws Exception {
        List<String> events = new ArrayList<>();
        core.addDriver(new BlockDriver() {
            @Override
            public DriverDescriptor descriptor() {
                return new DriverDescriptor("locky", DriverDescriptor.Kind.PROTOCOL, "t", List.of("locky:"),
                        List.of(), List.of());
            }

            @Override
            public BlockNode open(OpenContext ctx) throws BlockException {
                events.add("open " + ctx.permissions());
                BlockNode inner = mem.open(ctx);
                return new org.blockhaus.api.spi.PermissionAwareNode() {
                    @Override public long size() throws BlockException { return inner.size(); }
                    @Override public void read(long o, ByteBuffer d) throws BlockException { inner.read(o, d); }
                    @Override public void write(long o, ByteBuffer s, int f) throws BlockException { inner.write(o, s, f); }
                    @Override public void close() throws BlockException { inner.close(); }

                    @Override
                    public void updatePermissions(java.util.Set<org.blockhaus.api.spi.Permission> p,
                            java.util.Set<org.blockhaus.api.spi.Permission> shared) {
                        events.add("update " + new java.util.TreeSet<>(p) + " sharing " + new java.util.TreeSet<>(shared));
                    }
                };
            }

            @Override
            public org.blockhaus.api.Options parseFilename(String filename) {
                return org.blockhaus.api.Options.of("filename", filename.substring(6));
            }
        });
        byte[] disk = new byte[4096];
        ByteBuffer.wrap(disk).putInt(0x50415353);
        mem.disks.put("p", disk);
        Image img = core.open("locky:p", null, OpenMode.READ_WRITE);
        assertEquals("pass", img.driverName());
        assertEquals(List.of("open [CONSISTENT_READ]",
                "update [CONSISTENT_READ, WRITE, RESIZE] sharing [CONSISTENT_READ, WRITE_UNCHANGED]"), events);
    }

    @Test
    void noFlushDropsTheStoragesFlushButNotTheFormats() throws Exception {
        mem.disks.put("nf", new byte[4096]);
        Image img = core.open("mem:nf", Options.of("driver", "pass", "cache.no-flush", "on"), OpenMode.READ_WRITE);
        mem.requests.clear();
        img.write(0, ByteBuffer.allocate(512), BlockNode.FUA);
        img.flush();
        img.close();
        assertEquals(List.of("write 0 512", "close"), mem.requests);
    }

    @Test
    void anAlignedWriteIsNeverLostToAConcurrentReadModifyWrite() throws Exception {
        mem.alignment = 512;
        mem.readDelayMillis = 2;
        Image img = openMem("rmw", 4096, true);
        Thread rmwWriter = Thread.ofPlatform().start(() -> {
            try {
                for (int i = 0; i < 20; i++) {
                    img.write(0, ByteBuffer.wrap(new byte[] {(byte) i, 1, 2}), 0); // bytes 0..2: RMW of block 0
                }
            } catch (BlockException e) {
                throw new IllegalStateException(e);
            }
        });
        Thread.sleep(5);
        byte[] block = new byte[512];
        java.util.Arrays.fill(block, (byte) 9);
        img.write(0, ByteBuffer.wrap(block), 0); // aligned, lands while the RMW loop runs
        rmwWriter.join();
        byte[] disk = mem.disks.get("rmw");
        for (int i = 3; i < 512; i++) {
            assertEquals(9, disk[i], "byte " + i + " of the aligned write was lost");
        }
    }
}
