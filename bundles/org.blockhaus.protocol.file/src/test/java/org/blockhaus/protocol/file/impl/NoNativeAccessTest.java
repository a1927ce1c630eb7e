package org.blockhaus.protocol.file.impl;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.EnumSet;
import java.util.List;
import java.util.Set;
import java.util.TreeSet;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.BlockStatus;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.api.Preallocation;
import org.blockhaus.api.spi.Permission;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The driver in a JVM that denies native access: plain FileChannel I/O, POSIX locks with QEMU's
 * warning (which QEMU still sees), and the core emulating what needs fallocate.
 */
class NoNativeAccessTest {
    private static final String POSIX_WARNING = "File lock requested but OFD locking syscall is unavailable,"
            + " falling back to POSIX file locks.\nDue to the implementation, locks can be lost unexpectedly.";
    private static final TestContext.Perms QCOW2_RW = new TestContext.Perms(
            EnumSet.of(Permission.CONSISTENT_READ, Permission.WRITE, Permission.RESIZE),
            EnumSet.of(Permission.CONSISTENT_READ, Permission.WRITE_UNCHANGED));

    @TempDir
    Path dir;

    private final PosixDriver driver = new FileDriver().withoutNativeAccess();

    private Path qcow2() throws Exception {
        Path img = dir.resolve("disk.qcow2");
        Peers.check(Peers.qemuImg(), "create", "-q", "-f", "qcow2", img.toString(), "1M");
        return img;
    }

    @Test
    void fallsBackToPosixLocksWithQemusWarningAndQemuSeesThem() throws Exception {
        Path img = qcow2();
        TestContext ctx = QCOW2_RW.context(img.toString(), false);
        try (BlockNode n = driver.open(ctx)) {
            assertEquals(List.of(POSIX_WARNING), ctx.warnings);
            assertEquals(new TreeSet<>(List.of(100L, 101L, 103L, 201L, 203L)), Peers.lockedBytes(img, "POSIX"));
            Peers.Result info = Peers.run(Peers.qemuImg(), "info", img.toString());
            assertEquals(1, info.exit());
            assertTrue(info.stderr().contains("Failed to get shared \"write\" lock"), info.stderr());
            n.truncate(2 << 20, false, Preallocation.OFF);
            assertEquals(2 << 20, n.size());
            assertEquals(5, Peers.lockedBytes(img, "POSIX").size(), "growing the file kept our locks");
        }
        assertEquals(Set.of(), Peers.lockedBytes(img));
    }

    @Test
    void seesQemusOfdLocks() throws Exception {
        Path img = qcow2();
        try (Peers.Holder h = QemuRole.QCOW2_RW.holdWithQemu(img)) {
            BlockException e = assertThrows(BlockException.class,
                    () -> driver.open(TestContext.readWrite(img.toString())));
            assertEquals(Reason.LOCKED, e.reason());
            assertEquals("Failed to get \"write\" lock\nIs another process using the image [" + img + "]?",
                    e.getMessage());
        }
    }

    @Test
    void lockingOffNeedsNoWarningAndTakesNoLocks() throws Exception {
        Path img = qcow2();
        TestContext ctx = TestContext.readWrite(img.toString(), Options.of("locking", "off"));
        try (BlockNode n = driver.open(ctx)) {
            assertEquals(List.of(), ctx.warnings);
            assertEquals(Set.of(), Peers.lockedBytes(img));
        }
    }

    @Test
    void ioWorksAndTheCoreEmulatesWhatNeedsFallocate() throws Exception {
        Path f = Files.write(dir.resolve("plain.raw"), new byte[64 << 10]);
        Files.write(f, new byte[] {9, 9, 9, 9}, java.nio.file.StandardOpenOption.WRITE);
        BlockCore core = BlockCore.standalone();
        core.addDriver(driver);
        try (Image img = core.open(f.toString(), Options.of("driver", "file"), OpenMode.READ_WRITE)) {
            assertEquals(-1, img.allocatedSize());
            BlockStatus s = img.blockStatus(0, img.size());
            assertEquals(BlockStatus.DATA | BlockStatus.ALLOCATED, s.flags());
            assertEquals(64 << 10, s.length());
            img.writeZeroes(0, 4096, BlockNode.MAY_UNMAP); // written as zero buffers by the core
            ByteBuffer b = ByteBuffer.allocate(4);
            img.read(0, b);
            assertArrayEquals(new byte[4], b.array());
        }
    }

    @Test
    void createsFilesOfTheRightSize() throws Exception {
        Path f = dir.resolve("new.raw");
        BlockCore core = BlockCore.standalone();
        core.addDriver(driver);
        core.create(f.toString(), "file", Options.of("size", "3M"), s -> { }, w -> { });
        assertEquals(3 << 20, Files.size(f));
        BlockException e = assertThrows(BlockException.class, () -> core.create(f.toString(), "file",
                Options.of("size", "3M", "preallocation", "falloc"), s -> { }, w -> { }));
        assertEquals(Reason.UNSUPPORTED, e.reason());
    }
}
