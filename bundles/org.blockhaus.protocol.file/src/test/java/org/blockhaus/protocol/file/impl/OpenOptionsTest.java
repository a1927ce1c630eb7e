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
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** file-posix's open options and open errors, each against what qemu-io says for the same input. */
class OpenOptionsTest {
    /** O_DIRECT as /proc/self/fdinfo shows flags (octal) on x86_64. */
    private static final int O_DIRECT_OCTAL = 040000;

    @TempDir
    Path dir;

    private final FileDriver driver = new FileDriver();

    private Path image() throws Exception {
        Path f = dir.resolve("img.raw");
        Peers.check(Peers.qemuImg(), "create", "-q", "-f", "raw", f.toString(), "1M");
        return f;
    }

    /** What qemu-io says when it cannot open {@code filename} with these file options. */
    private static String qemuIoError(String filename, String fileOptions) throws Exception {
        Peers.Result r = Peers.run(Peers.qemuIo(), "-c", "quit", "--image-opts",
                "driver=file,filename=" + filename + (fileOptions.isEmpty() ? "" : "," + fileOptions));
        assertEquals(1, r.exit(), r.all());
        String prefix = "qemu-io: can't open: ";
        assertTrue(r.stderr().startsWith(prefix), r.stderr());
        return r.stderr().substring(prefix.length()).trim();
    }

    private BlockException openFails(String filename, Options options) {
        return assertThrows(BlockException.class, () -> driver.open(TestContext.readWrite(filename, options)));
    }

    @Test
    void refusesOptionValuesInQemuIosWords() throws Exception {
        Path f = image();
        for (String kv : new String[] {"aio=xyz", "locking=xyz", "aio=native", "pr-manager=pm0"}) {
            String[] p = kv.split("=");
            BlockException e = openFails(f.toString(), Options.of(p[0], p[1]));
            assertEquals(qemuIoError(f.toString(), kv), e.getMessage(), kv);
        }
    }

    @Test
    void acceptsTheOptionsQemuAccepts() throws Exception {
        Path f = image();
        for (String kv : new String[] {"aio=threads", "aio=io_uring", "locking=on", "locking=auto",
                "x-check-cache-dropped=on", "drop-cache=off", "aio-max-batch=4"}) {
            String[] p = kv.split("=");
            assertEquals(0, Peers.run(Peers.qemuIo(), "-c", "quit", "--image-opts",
                    "driver=file,filename=" + f + "," + kv).exit(), kv);
            try (BlockNode n = driver.open(TestContext.readWrite(f.toString(), Options.of(p[0], p[1])))) {
                assertEquals(1 << 20, n.size(), kv);
            }
        }
    }

    @Test
    void missingFileDirectoryAndPermissionDeniedReadAsQemuIo() throws Exception {
        String missing = dir.resolve("nofile").toString();
        assertEquals(qemuIoError(missing, ""), openFails(missing, Options.empty()).getMessage());
        assertEquals(Reason.NOT_FOUND, openFails(missing, Options.empty()).reason());
        assertEquals(qemuIoError(dir.toString(), ""), openFails(dir.toString(), Options.empty()).getMessage());
        // root passes every permission check on files; sysfs still says EACCES to writers of this one
        String denied = "/sys/devices/system/cpu/online";
        BlockException e = openFails(denied, Options.empty());
        assertEquals(qemuIoError(denied, ""), e.getMessage());
        assertEquals("Could not open '" + denied + "': Permission denied", e.getMessage());
        assertEquals(Reason.PERMISSION, e.reason());
    }

    @Test
    void immutableFileIsRefusedForWritingInQemuIosWords() throws Exception {
        Path f = image();
        String chattr = Peers.require("chattr", "e2fsprogs");
        Peers.check(chattr, "+i", f.toString());
        try {
            BlockException e = openFails(f.toString(), Options.empty());
            assertEquals(qemuIoError(f.toString(), ""), e.getMessage());
            assertEquals("Could not open '" + f + "': Operation not permitted", e.getMessage());
            assertEquals(Reason.PERMISSION, e.reason());
            try (BlockNode n = driver.open(TestContext.readOnly(f.toString()))) {
                assertEquals(1 << 20, n.size(), "reading is still allowed");
            }
        } finally {
            Peers.check(chattr, "-i", f.toString());
        }
    }

    @Test
    void cacheDirectOpensWithODirectAndAlignsTo4k() throws Exception {
        Path f = image();
        BlockCore core = BlockCore.standalone();
        core.addDriver(driver);
        byte[] data = new byte[10_000];
        new Random(5).nextBytes(data);
        try (Image img = core.open(f.toString(), Options.of("driver", "file", "cache.direct", "on"),
                OpenMode.READ_WRITE)) {
            FileNode node = (FileNode) img.driverNode();
            assertEquals(4096, img.limits().requestAlignment());
            String fdinfo = Files.readString(Path.of("/proc/self/fdinfo/" + node.nativeFd()));
            int flags = Integer.parseInt(fdinfo.lines().filter(l -> l.startsWith("flags:")).findFirst().orElseThrow()
                    .substring(6).trim(), 8);
            assertEquals(O_DIRECT_OCTAL, flags & O_DIRECT_OCTAL, fdinfo);
            img.write(1234, ByteBuffer.wrap(data), 0); // unaligned: the core does read-modify-write
            img.flush();
            ByteBuffer back = ByteBuffer.allocate(data.length);
            img.read(1234, back);
            assertArrayEquals(data, back.array());
        }
        byte[] onDisk = Files.readAllBytes(f);
        assertArrayEquals(data, java.util.Arrays.copyOfRange(onDisk, 1234, 1234 + data.length));
        Peers.Result r = Peers.run(Peers.qemuIo(), "-f", "raw", "-c", "read -v 1234 4", f.toString());
        String hex = String.format("%02x %02x %02x %02x", data[0], data[1], data[2], data[3]);
        assertTrue(r.stdout().contains(hex), r.stdout() + " should show " + hex);
    }

    @Test
    void cacheDirectWithAioNativeIsAccepted() throws Exception {
        Path f = image();
        try (BlockNode n = driver.open(TestContext.readWrite(f.toString(),
                Options.of("cache.direct", "on", "aio", "native")))) {
            assertEquals(1 << 20, n.size());
        }
    }

    @Test
    void readOnlyOpenUsesAReadOnlyDescriptor() throws Exception {
        Path f = image();
        try (BlockNode n = driver.open(TestContext.readOnly(f.toString()))) {
            String fdinfo = Files.readString(Path.of("/proc/self/fdinfo/" + ((FileNode) n).nativeFd()));
            int flags = Integer.parseInt(fdinfo.lines().filter(l -> l.startsWith("flags:")).findFirst().orElseThrow()
                    .substring(6).trim(), 8);
            assertEquals(0, flags & 3, "O_RDONLY");
            BlockException e = assertThrows(BlockException.class, () -> n.write(0, ByteBuffer.allocate(1), 0));
            assertEquals(Reason.READ_ONLY, e.reason());
        }
    }

    @Test
    void fileColonPrefixWorksThroughTheCore() throws Exception {
        Path f = image();
        BlockCore core = BlockCore.standalone();
        core.addDriver(driver);
        try (Image img = core.open("file:" + f, Options.of("driver", "file"), OpenMode.READ_ONLY)) {
            assertEquals(1 << 20, img.size());
        }
    }
}
