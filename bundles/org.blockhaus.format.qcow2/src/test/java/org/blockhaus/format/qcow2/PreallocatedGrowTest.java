package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.file.Path;
import org.blockhaus.api.Image;
import org.blockhaus.api.Preallocation;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * Preallocating grows, found by DifferentialWorkloadTest's preallocated option sets. First, a new
 * cluster the guest uses only in part: qemu's allocation copies on write around
 * the guest range, so the part of the first cluster before the old end keeps what the guest read
 * there (the backing file's data, or zeroes written into the file) and the part of the last
 * cluster past the new end is written with zeroes. Ours mapped both clusters without writing:
 * the old end's cluster then read as zeroes instead of the backing file, and qemu-img map, which
 * asks the file for holes, saw zeroes where qemu's image has written data.
 */
class PreallocatedGrowTest {
    @TempDir
    Path dir;

    private static final long OLD_SIZE = 1000448; // 15 clusters of 64 KiB and 17 KiB
    private static final long GROW = 1048576;

    @ParameterizedTest(name = "{0} backing {1}")
    @CsvSource({"METADATA,false", "METADATA,true", "FALLOC,true", "FULL,true", "FALLOC,false"})
    void growKeepsTheHeadAndZeroesTheTailAsQemu(Preallocation mode, boolean withBacking) throws Exception {
        Path ours = dir.resolve("ours.qcow2");
        Path twin = dir.resolve("twin.qcow2");
        String[] backing = {};
        if (withBacking) {
            Path base = dir.resolve("base.qcow2");
            Qemu.img("create", "-q", "-f", "qcow2", base.toString(), "4M").ok();
            Qemu.io("-f", "qcow2", "-c", "write -P 0x33 0 4M", base.toString()).ok();
            backing = new String[] {"backing_file", base.toString(), "backing_fmt", "qcow2"};
            Qemu.img("create", "-q", "-f", "qcow2", "-b", base.toString(), "-F", "qcow2", twin.toString(),
                    Long.toString(OLD_SIZE)).ok();
        } else {
            Qemu.img("create", "-q", "-f", "qcow2", twin.toString(), Long.toString(OLD_SIZE)).ok();
        }
        BlockCore core = Fixtures.core();
        Fixtures.create(core, ours, OLD_SIZE, backing);
        try (Image img = Fixtures.openRw(core, ours)) {
            img.truncate(OLD_SIZE + GROW, false, mode);
        }
        Qemu.img("resize", "-q", "-f", "qcow2", "--preallocation=" + mode.qemuName(), twin.toString(), "+" + GROW).ok();

        assertEquals(0, Qemu.img("check", ours.toString()).exit());
        assertArrayEquals(Fixtures.qemuRaw(twin, dir), Fixtures.qemuRaw(ours, dir), "contents");
        assertEquals(DifferentialWorkloadTest.map(twin), DifferentialWorkloadTest.map(ours),
                "qemu-img map without host offsets");
    }

    /**
     * Preallocated clusters must read as zeroes even where the allocator finds free clusters that
     * still hold old bytes inside the file (here: a tail of 0xee bytes no cluster references; in
     * DifferentialWorkloadTest seed 7128, an old snapshot table). qemu 7.2 shows those bytes (it
     * neither writes nor reserves anew what lies before the file's old end), so the oracle is
     * qemu-io reading our image, not a twin.
     */
    @ParameterizedTest(name = "{0}")
    @CsvSource({"METADATA", "FALLOC", "FULL"})
    void growOverStaleFreeClustersReadsZeroes(Preallocation mode) throws Exception {
        Path ours = dir.resolve("stale.qcow2");
        Qemu.img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", ours.toString(), "1M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 0x11 0 1M", ours.toString()).ok();
        long end = java.nio.file.Files.size(ours);
        byte[] stale = new byte[2 << 20];
        java.util.Arrays.fill(stale, (byte) 0xee);
        java.nio.file.Files.write(ours, stale, java.nio.file.StandardOpenOption.APPEND);
        assertEquals(0, Qemu.img("check", ours.toString()).exit(), "unreferenced bytes past the end are no error");
        BlockCore core = Fixtures.core();
        try (Image img = Fixtures.openRw(core, ours)) {
            img.truncate((1 << 20) + GROW, false, mode);
        }
        assertEquals(0, Qemu.img("check", ours.toString()).exit());
        Qemu.Result read = Qemu.io("-r", "-f", "qcow2", "-c", "read -P 0x11 0 1M", "-c", "read -P 0 1M " + GROW,
                ours.toString());
        assertEquals(false, read.out().contains("verification failed"), "file was " + end + " bytes: " + read.out());
    }
}
