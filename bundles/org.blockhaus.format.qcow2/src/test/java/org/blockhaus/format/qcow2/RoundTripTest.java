package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/** The same image written in turns by this driver and by qemu-io stays consistent for both. */
class RoundTripTest {
    @TempDir
    Path dir;

    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"compat=1.1", "compat=0.10,cluster_size=4096", "refcount_bits=1,cluster_size=512",
        "extended_l2=on"})
    void alternatingWritersAgree(String opts) throws Exception {
        Path img = dir.resolve("r.qcow2");
        BlockCore core = Fixtures.core();
        Fixtures.create(core, img, 8 << 20, opts.replace(',', '=').split("="));
        for (int turn = 0; turn < 4; turn++) {
            try (Image i = Fixtures.openRw(core, img)) {
                i.write(turn * 1_000_003L, ByteBuffer.wrap(Fixtures.pattern(300_000, turn)), 0);
                i.writeZeroes(turn * 2_000_000L + 65536 * 3, 65536 * 2, 0);
            }
            Qemu.io("-f", "qcow2", "-c", "write -P " + (0x40 + turn) + " " + (turn * 1_500_000 + 777) + " 123456",
                    "-c", "discard " + (turn * 65536 * 7) + " 65536", img.toString()).ok();
            Qemu.Result check = Qemu.img("check", img.toString());
            assertEquals(0, check.exit(), "turn " + turn + ": " + check.out() + check.err());
            byte[] expected = Fixtures.qemuRaw(img, dir);
            try (Image i = Fixtures.openRo(core, img)) {
                assertArrayEquals(expected, Fixtures.readAll(i), "turn " + turn);
            }
        }
    }

    @Test
    void acceptsQemusRuntimeOptions() throws Exception {
        Path img = dir.resolve("o.qcow2");
        Qemu.img("create", "-f", "qcow2", img.toString(), "1M").ok();
        BlockCore core = Fixtures.core();
        try (Image i = core.open(img.toString(), Options.of("driver", "qcow2", "l2-cache-size", "1M",
                "refcount-cache-size", "256k", "lazy-refcounts", "on", "pass-discard-request", "off",
                "overlap-check", "all", "cache-clean-interval", "600"), OpenMode.READ_WRITE)) {
            i.write(0, ByteBuffer.allocate(512), 0);
        }
        assertEquals(0, Qemu.img("check", img.toString()).exit());
    }

    @Test
    void probingPicksQcow2AndNothingElse() throws Exception {
        Path img = dir.resolve("p.qcow2");
        Qemu.img("create", "-f", "qcow2", img.toString(), "1M").ok();
        BlockCore core = Fixtures.core();
        try (Image i = core.open(img.toString(), Options.empty(), OpenMode.READ_ONLY)) {
            assertEquals("qcow2", i.driverName());
        }
        Qcow2Driver d = new Qcow2Driver();
        byte[] head = Files.readAllBytes(img);
        assertEquals(100, d.probe(ByteBuffer.wrap(head, 0, 2048), "p.qcow2"));
        head[7] = 1; // version 1 is the older "qcow" format
        assertEquals(0, d.probe(ByteBuffer.wrap(head, 0, 2048), "p.qcow2"));
        assertEquals(0, d.probe(ByteBuffer.wrap(new byte[512]), "x.raw"));
        assertEquals(0, d.probe(ByteBuffer.wrap(new byte[3]), "tiny"));
        assertTrue(d.descriptor().compressedWrites());
    }
}
