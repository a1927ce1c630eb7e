package org.blockhaus.protocol.file.impl;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.EnumSet;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.Capabilities.Feature;
import org.blockhaus.api.Options;
import org.blockhaus.api.Preallocation;
import org.blockhaus.api.spi.Permission;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * host_device on a real block device: a loop device made with losetup for each test (and
 * detached in finally). host_cdrom: no CD-ROM drive exists on this machine kind, so only its
 * refusals are tested.
 */
class HostDeviceTest {
    @TempDir
    Path dir;

    private final HostDeviceDriver hostDevice = new HostDeviceDriver();
    private final HostCdromDriver hostCdrom = new HostCdromDriver();

    /** A loop device over an 8 MiB file whose first MiB qemu-io filled with 0x5a. */
    private final class Loop implements AutoCloseable {
        final Path backing;
        final String device;

        Loop() throws Exception {
            backing = dir.resolve("loop.img");
            Peers.check(Peers.qemuImg(), "create", "-q", "-f", "raw", backing.toString(), "8M");
            Peers.check(Peers.qemuIo(), "-f", "raw", "-c", "write -P 0x5a 0 1M", backing.toString());
            device = Peers.check(Peers.losetup(), "-f", "--show", backing.toString()).trim();
            assertTrue(device.startsWith("/dev/loop"), device);
        }

        @Override
        public void close() throws Exception {
            Peers.check(Peers.losetup(), "-d", device);
        }
    }

    @Test
    void readsAndWritesALoopDevice() throws Exception {
        try (Loop loop = new Loop()) {
            try (BlockNode n = hostDevice.open(TestContext.readWrite(loop.device))) {
                assertEquals(8 << 20, n.size(), "BLKGETSIZE64");
                assertFalse(n.hasZeroInit());
                ByteBuffer b = ByteBuffer.allocate(4096);
                n.read(0, b);
                byte[] expected = new byte[4096];
                java.util.Arrays.fill(expected, (byte) 0x5a);
                assertArrayEquals(expected, b.array());
                n.write(2 << 20, ByteBuffer.wrap("blockhaus".getBytes()), 0);
                n.flush();
            }
            Peers.Result r = Peers.run(Peers.qemuIo(), "-f", "raw", "-c", "read -P 0x62 2M 1", loop.device);
            assertEquals(0, r.exit(), r.all());
            assertTrue(r.stdout().contains("read 1/1 bytes"), r.stdout());
        }
    }

    @Test
    void writeZeroesAndDiscardZeroTheDevice() throws Exception {
        try (Loop loop = new Loop(); BlockNode n = hostDevice.open(TestContext.readWrite(loop.device))) {
            assertTrue(n.capabilities().isNative(Feature.WRITE_ZEROES));
            n.writeZeroes(0, 64 << 10, 0);
            n.writeZeroes(64 << 10, 64 << 10, BlockNode.MAY_UNMAP);
            n.flush();
            assertEquals(0, Peers.run(Peers.qemuIo(), "-f", "raw", "-c", "read -P 0 0 128k", loop.device).exit());
            assertEquals(0, Peers.run(Peers.qemuIo(), "-f", "raw", "-c", "read -P 0x5a 128k 64k", loop.device).exit());
        }
    }

    @Test
    void cacheDirectAlignsToTheLogicalBlockSize() throws Exception {
        try (Loop loop = new Loop(); BlockNode n = hostDevice.open(TestContext.readWrite(loop.device,
                Options.of("cache.direct", "on")))) {
            String ss = Peers.check("blockdev", "--getss", loop.device).trim();
            assertEquals(Integer.parseInt(ss), n.limits().requestAlignment());
            ByteBuffer b = ByteBuffer.allocate(512);
            n.read(512, b);
            assertEquals(0x5a, b.get(0));
        }
    }

    @Test
    void devicesCannotBeResized() throws Exception {
        try (Loop loop = new Loop(); BlockNode n = hostDevice.open(TestContext.readWrite(loop.device))) {
            assertEquals("Cannot grow device files", assertThrows(BlockException.class,
                    () -> n.truncate(16 << 20, false, Preallocation.OFF)).getMessage());
            assertEquals("Cannot resize device files", assertThrows(BlockException.class,
                    () -> n.truncate(4 << 20, true, Preallocation.OFF)).getMessage());
            n.truncate(8 << 20, true, Preallocation.OFF);
        }
    }

    @Test
    void qemuSeesOurLocksOnADevice() throws Exception {
        try (Loop loop = new Loop()) {
            // held as a qcow2 image on the device would be: nobody else may write
            TestContext held = new TestContext(loop.device, Options.empty(), false,
                    EnumSet.of(Permission.CONSISTENT_READ, Permission.WRITE, Permission.RESIZE),
                    EnumSet.of(Permission.CONSISTENT_READ, Permission.WRITE_UNCHANGED));
            try (BlockNode n = hostDevice.open(held)) {
                Peers.Result r = Peers.run(Peers.qemuIo(), "-f", "raw", "-c", "quit", loop.device);
                assertEquals(1, r.exit());
                assertTrue(r.stderr().contains("Failed to get \"write\" lock\nIs another process using the image ["
                        + loop.device + "]?"), r.stderr());
            }
            assertEquals(0, Peers.run(Peers.qemuIo(), "-f", "raw", "-c", "quit", loop.device).exit());
        }
    }

    @Test
    void characterDevicesOpenWithTheSizeQemuReports() throws Exception {
        for (String dev : new String[] {"/dev/null", "/dev/zero"}) {
            String info = Peers.check(Peers.qemuImg(), "info", "--output=json", "--image-opts",
                    "driver=host_device,filename=" + dev);
            java.util.regex.Matcher m = java.util.regex.Pattern.compile("\"virtual-size\": (\\d+)").matcher(info);
            assertTrue(m.find(), info);
            try (BlockNode n = hostDevice.open(TestContext.readOnly(dev))) {
                assertEquals(Long.parseLong(m.group(1)), n.size(), dev);
            }
        }
    }

    @Test
    void hostDeviceRefusesRegularFilesAsQemuDoes() throws Exception {
        Path f = Files.write(dir.resolve("plain.raw"), new byte[4096]);
        BlockException e = assertThrows(BlockException.class, () -> hostDevice.open(TestContext.readOnly(f.toString())));
        Peers.Result q = Peers.run(Peers.qemuIo(), "-c", "quit", "--image-opts", "driver=host_device,filename=" + f);
        assertEquals("qemu-io: can't open: " + e.getMessage() + "\n", q.stderr());
        assertEquals("'host_device' driver requires '" + f + "' to be either a character or block device",
                e.getMessage());
    }

    @Test
    void fileDriverRefusesDevicesAsQemuDoes() throws Exception {
        try (Loop loop = new Loop()) {
            BlockException e = assertThrows(BlockException.class,
                    () -> new FileDriver().open(TestContext.readOnly(loop.device)));
            assertEquals("'file' driver requires '" + loop.device + "' to be a regular file", e.getMessage());
        }
    }

    @Test
    void hostCdromRefusesRegularFilesAndMissingDevices() throws Exception {
        Path f = Files.write(dir.resolve("disc.iso"), new byte[4096]);
        BlockException e = assertThrows(BlockException.class, () -> hostCdrom.open(TestContext.readOnly(f.toString())));
        Peers.Result q = Peers.run(Peers.qemuIo(), "-r", "-c", "quit", "--image-opts", "driver=host_cdrom,filename=" + f);
        assertEquals("qemu-io: can't open: " + e.getMessage() + "\n", q.stderr());
        String missing = "/dev/blockhaus-no-such-cdrom";
        BlockException m = assertThrows(BlockException.class, () -> hostCdrom.open(TestContext.readOnly(missing)));
        assertEquals(Reason.NOT_FOUND, m.reason());
        assertEquals("Could not open '" + missing + "': No such file or directory", m.getMessage());
    }

    @Test
    void devicePrefixesAreStripped() throws Exception {
        assertEquals(Options.of("filename", "/dev/loop7"), hostDevice.parseFilename("host_device:/dev/loop7"));
        assertEquals(Options.of("filename", "/dev/sr0"), hostCdrom.parseFilename("host_cdrom:/dev/sr0"));
    }
}
