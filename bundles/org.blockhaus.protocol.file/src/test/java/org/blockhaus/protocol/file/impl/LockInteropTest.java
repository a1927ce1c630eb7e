package org.blockhaus.protocol.file.impl;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.EnumSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.api.spi.Permission;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Image locking against the real QEMU 7.2: the same lock bytes, the same conflicts, the same
 * words, in both directions. Each QEMU user of an image is modelled by the permissions QEMU
 * gives its file node (read from /proc/locks, see PEERS.md); a matrix of holders and openers
 * run with QEMU on both sides is the oracle that our driver must reproduce on either side.
 */
class LockInteropTest {
    private static final Set<Permission> ALL = Permission.all();
    private static final Permission CR = Permission.CONSISTENT_READ;
    private static final Permission W = Permission.WRITE;

    static final List<QemuRole> OPENERS = List.of(QemuRole.RAW_RW, QemuRole.RAW_RO, QemuRole.QCOW2_RW, QemuRole.QCOW2_RO);

    @TempDir
    Path dir;

    private final FileDriver driver = new FileDriver();

    private Path qcow2() throws Exception {
        Path img = dir.resolve("disk.qcow2");
        Peers.check(Peers.qemuImg(), "create", "-q", "-f", "qcow2", img.toString(), "1M");
        return img;
    }

    private Path raw() throws Exception {
        Path img = dir.resolve("disk.raw");
        Peers.check(Peers.qemuImg(), "create", "-q", "-f", "raw", img.toString(), "1M");
        return img;
    }

    /** The first line of QEMU's lock error in {@code stderr}, e.g. {@code Failed to get "write" lock}. */
    private static String lockLine(String stderr) {
        for (String line : stderr.split("\n")) {
            int i = line.indexOf("Failed to get ");
            if (i >= 0) {
                return line.substring(i);
            }
        }
        return null;
    }

    /** QEMU against QEMU: for every holder and opener, null (opens) or QEMU's lock message. */
    private Map<String, String> oracle(Path img) throws Exception {
        Map<String, String> m = new LinkedHashMap<>();
        for (QemuRole holder : QemuRole.values()) {
            try (Peers.Holder h = holder.holdWithQemu(img)) {
                for (QemuRole opener : OPENERS) {
                    Peers.Result r = opener.openWithQemu(img);
                    String line = r.exit() == 0 ? null : lockLine(r.stderr());
                    if (r.exit() != 0) {
                        assertTrue(line != null, "qemu-io failed for another reason: " + r.stderr());
                        assertTrue(r.stderr().contains("Is another process using the image [" + img + "]?"),
                                r.stderr());
                    }
                    m.put(holder + " held, " + opener + " opens", line);
                }
            }
        }
        return m;
    }

    @Test
    void agreesWithQemuOnEveryConflictWhenQemuHoldsTheImage() throws Exception {
        Path img = qcow2();
        Map<String, String> expected = oracle(img);
        assertTrue(expected.containsValue(null) && expected.values().stream().anyMatch(v -> v != null),
                "the matrix must contain both outcomes: " + expected);
        Map<String, String> ours = new LinkedHashMap<>();
        for (QemuRole holder : QemuRole.values()) {
            try (Peers.Holder h = holder.holdWithQemu(img)) {
                for (QemuRole opener : OPENERS) {
                    String line = null;
                    try (BlockNode n = driver.open(opener.context(img))) {
                        assertTrue(n.size() > 0);
                    } catch (BlockException e) {
                        assertEquals(Reason.LOCKED, e.reason(), e.getMessage());
                        String[] lines = e.getMessage().split("\n");
                        assertEquals("Is another process using the image [" + img + "]?", lines[1]);
                        line = lines[0];
                    }
                    ours.put(holder + " held, " + opener + " opens", line);
                }
            }
        }
        assertEquals(expected, ours);
    }

    @Test
    void qemuSeesOurLocksExactlyAsItSeesItsOwn() throws Exception {
        Path img = qcow2();
        Map<String, String> expected = oracle(img);
        Map<String, String> seen = new LinkedHashMap<>();
        for (QemuRole holder : QemuRole.values()) {
            try (BlockNode held = driver.open(holder.context(img))) {
                assertEquals(holder.lockBytes, Peers.lockedBytes(img).size());
                for (QemuRole opener : OPENERS) {
                    Peers.Result r = opener.openWithQemu(img);
                    seen.put(holder + " held, " + opener + " opens", r.exit() == 0 ? null : lockLine(r.stderr()));
                }
            }
        }
        assertEquals(expected, seen);
    }

    @Test
    void refusesWriteWhileQemuIoHoldsQcow2() throws Exception {
        Path img = qcow2();
        BlockCore core = BlockCore.standalone();
        core.addDriver(driver);
        try (Peers.Holder h = QemuRole.QCOW2_RW.holdWithQemu(img)) {
            BlockException e = assertThrows(BlockException.class,
                    () -> driver.open(TestContext.readWrite(img.toString())));
            assertEquals(Reason.LOCKED, e.reason());
            assertEquals("Failed to get \"write\" lock\nIs another process using the image [" + img + "]?",
                    e.getMessage());
            BlockException viaCore = assertThrows(BlockException.class,
                    () -> core.open(img.toString(), Options.of("driver", "file"), OpenMode.READ_WRITE));
            assertEquals(Reason.LOCKED, viaCore.reason());
            // -U: read-only, sharing everything, works as qemu-img info -U does
            try (Image shared = core.open(img.toString(), Options.of("driver", "file"),
                    new OpenMode(false, true, w -> { }))) {
                assertTrue(shared.size() > 0);
            }
        }
    }

    @Test
    void readOnlyOpenOfRawSucceedsWhileQemuIoWritesIt() throws Exception {
        Path img = raw();
        try (Peers.Holder h = QemuRole.RAW_RW.holdWithQemu(img);
                BlockNode n = driver.open(TestContext.readOnly(img.toString()))) {
            assertEquals(1 << 20, n.size());
            assertEquals(0, QemuRole.RAW_RO.openWithQemu(img).exit(), "qemu-io -r opens it too");
        }
    }

    @Test
    void qemuImgInfoIsRefusedWhileWeHoldTheImageAndWorksWithForceShare() throws Exception {
        Path img = qcow2();
        try (BlockNode n = driver.open(QemuRole.QCOW2_RW.context(img))) {
            Peers.Result info = Peers.run(Peers.qemuImg(), "info", img.toString());
            assertEquals(1, info.exit());
            assertEquals("qemu-img: Could not open '" + img + "': Failed to get shared \"write\" lock\n"
                    + "Is another process using the image [" + img + "]?\n", info.stderr());
            Peers.Result forced = Peers.run(Peers.qemuImg(), "info", "-U", img.toString());
            assertEquals(0, forced.exit(), forced.stderr());
            assertTrue(forced.stdout().contains("file format: qcow2"), forced.stdout());
        }
        assertEquals(0, Peers.run(Peers.qemuImg(), "info", img.toString()).exit(), "closing released the locks");
    }

    @Test
    void procLocksShowsTheOfdLockBytesWeHold() throws Exception {
        Path img = qcow2();
        try (BlockNode n = driver.open(QemuRole.QCOW2_RW.context(img))) {
            assertEquals(new TreeSet<>(List.of(100L, 101L, 103L, 201L, 203L)), Peers.lockedBytes(img, "OFDLCK"));
            assertEquals(Set.of(), Peers.lockedBytes(img, "POSIX"));
        }
        assertEquals(Set.of(), Peers.lockedBytes(img));
        try (BlockNode n = driver.open(QemuRole.RAW_RO.context(img))) {
            assertEquals(new TreeSet<>(List.of(100L)), Peers.lockedBytes(img, "OFDLCK"));
        }
    }

    @Test
    void lockingOffTakesNoLocksAndIgnoresOthers() throws Exception {
        Path img = qcow2();
        try (Peers.Holder h = QemuRole.QCOW2_RW.holdWithQemu(img)) {
            TreeSet<Long> qemus = Peers.lockedBytes(img);
            TestContext ctx = TestContext.readWrite(img.toString(), Options.of("locking", "off"));
            try (BlockNode n = driver.open(ctx)) {
                assertEquals(qemus, Peers.lockedBytes(img));
            }
        }
        try (BlockNode n = driver.open(TestContext.readWrite(img.toString(), Options.of("locking", "off")))) {
            assertEquals(Set.of(), Peers.lockedBytes(img));
        }
    }

    @Test
    void twoNodesInOneJvmLockEachOtherOutAsTwoQemuProcessesWould() throws Exception {
        Path img = qcow2();
        try (BlockNode first = driver.open(QemuRole.QCOW2_RW.context(img))) {
            BlockException e = assertThrows(BlockException.class, () -> driver.open(QemuRole.RAW_RW.context(img)));
            assertEquals(Reason.LOCKED, e.reason());
            try (BlockNode reader = driver.open(QemuRole.RAW_RO.context(img))) {
                assertTrue(reader.size() > 0, "a reader that shares everything may join");
            }
        }
        try (BlockNode again = driver.open(QemuRole.RAW_RW.context(img))) {
            assertTrue(again.size() > 0, "closing the first node released its locks");
        }
    }

    @Test
    void badLockingValueIsRefusedInQemuWords() {
        BlockException e = assertThrows(BlockException.class, () -> driver.open(
                TestContext.readWrite(dir.resolve("x").toString(), Options.of("locking", "xyz"))));
        assertEquals("invalid parameter value: xyz", e.getMessage());
    }

    @Test
    void posixFallbackLocksConflictWithQemuBothWays() throws Exception {
        Path img = qcow2();
        try (Peers.Holder h = QemuRole.QCOW2_RW.holdWithQemu(img);
                FileChannel ch = FileChannel.open(img, StandardOpenOption.READ, StandardOpenOption.WRITE)) {
            BlockException e = assertThrows(BlockException.class, () -> PosixDriver.posixLock(ch, true,
                    img.toString(), EnumSet.of(CR, W), ALL));
            assertEquals(Reason.LOCKED, e.reason());
            assertTrue(e.getMessage().startsWith("Failed to get \"write\" lock\n"), e.getMessage());
        }
        try (FileChannel ch = FileChannel.open(img, StandardOpenOption.READ, StandardOpenOption.WRITE);
                ImageLock lock = PosixDriver.posixLock(ch, true, img.toString(), QemuRole.QCOW2_RW.perm,
                        QemuRole.QCOW2_RW.shared)) {
            assertEquals(new TreeSet<>(List.of(100L, 101L, 103L, 201L, 203L)), Peers.lockedBytes(img, "POSIX"));
            Peers.Result info = Peers.run(Peers.qemuImg(), "info", img.toString());
            assertNotEquals(0, info.exit());
            assertTrue(info.stderr().contains("Failed to get shared \"write\" lock"), info.stderr());
        }
    }

    @Test
    void createRefusesAFileQemuIsUsingAndLeavesItAlone() throws Exception {
        Path img = qcow2();
        long before = Files.size(img);
        BlockCore core = BlockCore.standalone();
        core.addDriver(driver);
        try (Peers.Holder h = QemuRole.QCOW2_RW.holdWithQemu(img)) {
            BlockException e = assertThrows(BlockException.class,
                    () -> core.create(img.toString(), "file", Options.of("size", "1M"), s -> { }, w -> { }));
            assertEquals(Reason.LOCKED, e.reason());
            assertTrue(e.getMessage().endsWith("Failed to get \"write\" lock\nIs another process using the image ["
                    + img + "]?"), e.getMessage());
        }
        assertEquals(before, Files.size(img));
        assertEquals(0, Peers.run(Peers.qemuImg(), "check", "-q", img.toString()).exit());
    }
}
