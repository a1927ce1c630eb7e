package org.blockhaus.protocol.nullco;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.BlockStatus;
import org.blockhaus.api.DriverInfo;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

class NullDriverTest {
    private BlockCore core;
    private final NullCoDriver nullCo = new NullCoDriver();

    @BeforeEach
    void setUp() {
        core = BlockCore.standalone();
        core.addDriver(nullCo);
        core.addDriver(new NullAioDriver());
    }

    @AfterEach
    void tearDown() {
        core.removeDriverAndClose(nullCo);
    }

    @Test
    void opensNullCoUriWithQemusDefaultSizeOfOneGib() throws Exception {
        try (Image img = core.open("null-co://", Options.of("driver", "null-co"), OpenMode.READ_ONLY)) {
            assertEquals(1073741824L, img.size());
            assertEquals("null-co", img.driverName());
            assertEquals(0, img.allocatedSize());
        }
    }

    @Test
    void driverOptionAloneOpensNullAio() throws Exception {
        try (Image img = core.open(null, Options.of("driver", "null-aio", "size", "1M"), OpenMode.READ_ONLY)) {
            assertEquals(1 << 20, img.size());
            assertEquals("null-aio", img.driverName());
        }
    }

    @Test
    void jsonFilenameWithSizeSuffix() throws Exception {
        try (Image img = core.open("json:{\"driver\":\"null-co\",\"size\":\"64k\"}", null, OpenMode.READ_ONLY)) {
            assertEquals(65536, img.size());
        }
    }

    @Test
    void readsZeroesWithReadZeroesOn() throws Exception {
        try (Image img = open("read-zeroes", "on")) {
            ByteBuffer buf = filled(12345, (byte) 0x5a);
            img.read(777, buf);
            assertFalse(buf.hasRemaining());
            assertArrayEquals(new byte[12345], buf.array());
            BlockStatus st = img.driverNode().blockStatus(0, 4096);
            assertTrue(st.isZero());
        }
    }

    @Test
    void leavesTheBufferAloneWithReadZeroesOffAsQemuDoes() throws Exception {
        try (Image img = open()) {
            ByteBuffer buf = filled(512, (byte) 0x5a);
            img.read(0, buf);
            assertFalse(buf.hasRemaining());
            assertEquals(0x5a, buf.get(100));
            assertTrue(img.driverNode().blockStatus(0, 512).isData());
        }
    }

    @Test
    void dropsWritesAndKeepsReadingZeroes() throws Exception {
        try (Image img = core.open(null, Options.of("driver", "null-co", "read-zeroes", "on"), OpenMode.READ_WRITE)) {
            ByteBuffer data = filled(4096, (byte) 1);
            img.write(4096, data, 0);
            assertFalse(data.hasRemaining());
            img.flush();
            ByteBuffer back = filled(4096, (byte) 7);
            img.read(4096, back);
            assertArrayEquals(new byte[4096], back.array());
        }
    }

    @Test
    void rejectsAnyOtherFilename() {
        BlockException e = assertThrows(BlockException.class,
                () -> core.open("null-co://something", null, OpenMode.READ_ONLY));
        assertEquals(Reason.INVALID_ARGUMENT, e.reason());
        assertTrue(e.getMessage().contains("The only allowed filename for this driver is 'null-co://'"), e.getMessage());
    }

    @Test
    void rejectsUnknownOptions() {
        BlockException e = assertThrows(BlockException.class, () -> open("colour", "blue"));
        assertEquals(Reason.INVALID_ARGUMENT, e.reason());
        assertTrue(e.getMessage().contains("'colour'"), e.getMessage());
    }

    @Test
    void rejectsNegativeLatency() {
        BlockException e = assertThrows(BlockException.class, () -> open("latency-ns", "-1"));
        assertEquals("latency-ns is invalid", e.getMessage());
    }

    @Test
    void waitsLatencyNsPerRequest() throws Exception {
        try (Image img = open("latency-ns", "20000000", "read-zeroes", "on")) {
            long t0 = System.nanoTime();
            img.read(0, ByteBuffer.allocate(512));
            assertTrue(System.nanoTime() - t0 >= 20_000_000L);
        }
    }

    @Test
    void removingTheDriverClosesItsImagesAndTellsTheirUsers() throws Exception {
        Image img = open("read-zeroes", "on");
        List<String> reasons = new CopyOnWriteArrayList<>();
        img.onClose(reasons::add);
        core.removeDriverAndClose(nullCo);
        assertTrue(img.isClosed());
        assertEquals(List.of("driver 'null-co' was removed"), reasons);
        BlockException e = assertThrows(BlockException.class, () -> img.read(0, ByteBuffer.allocate(512)));
        assertEquals(Reason.CLOSED, e.reason());
        assertFalse(core.drivers().stream().map(DriverInfo::name).anyMatch("null-co"::equals));
    }

    @Test
    void describesItselfAsAProtocolWithQemusOptions() {
        var d = nullCo.descriptor();
        assertEquals("protocol", d.kind().qemuName());
        assertEquals(List.of("null-co"), d.protocols());
        assertEquals("1073741824", d.openOption("size").defaultValue());
        assertEquals("off", d.openOption("read-zeroes").defaultValue());
        assertTrue(d.createOptions().isEmpty());
    }

    private Image open(String... keyValues) throws BlockException {
        String[] kv = Arrays.copyOf(keyValues, keyValues.length + 2);
        kv[keyValues.length] = "driver";
        kv[keyValues.length + 1] = "null-co";
        return core.open("null-co://", Options.of(kv), OpenMode.READ_ONLY);
    }

    private static ByteBuffer filled(int n, byte b) {
        byte[] a = new byte[n];
        Arrays.fill(a, b);
        return ByteBuffer.wrap(a);
    }
}
