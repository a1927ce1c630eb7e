package org.blockhaus.protocol.nbd;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.core.BlockCore;
import org.blockhaus.testkit.Peers;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * QEMU's reconnect-delay and open-timeout against a qemu-nbd (and an nbdkit) that is killed and
 * started again on the same unix socket: requests wait for the reconnect within the delay and
 * fail quickly after it; opening waits for a server that is not there yet.
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class ReconnectTest {
    @TempDir
    Path dir;
    private final BlockCore core = BlockCore.standalone();
    private final List<Image> open = new ArrayList<>();
    private final List<ProcessHandle> servers = new ArrayList<>();
    private Path img;
    private Path sock;

    ReconnectTest() {
        core.addDriver(new NbdDriver());
    }

    @AfterEach
    void tearDown() throws Exception {
        for (Image i : open) {
            try {
                i.close();
            } catch (BlockException ignored) {
                // assertions decide
            }
        }
        for (ProcessHandle h : servers) {
            stop(h);
        }
    }

    private void image() throws Exception {
        img = dir.resolve("disk.raw");
        sock = dir.resolve("q.sock");
        Peers.check(Peers.require("qemu-img", "qemu-utils"), "create", "-q", "-f", "raw", img.toString(), "4M");
        Peers.check(Peers.require("qemu-io", "qemu-utils"), "-f", "raw", "-c", "write -P 0x3a 1M 256k",
                img.toString());
    }

    /** qemu-nbd on {@code sock}, forked; returns its process (we stop it by this PID only). */
    private ProcessHandle qemuNbd() throws Exception {
        Path pid = Files.createTempFile(dir, "q", ".pid");
        Files.delete(pid);
        Peers.check(Peers.require("qemu-nbd", "qemu-utils"), "--fork", "--persistent", "--shared=8",
                "--pid-file=" + pid, "-f", "raw", "--socket=" + sock, "-x", "disk", img.toString());
        ProcessHandle h = ProcessHandle.of(Long.parseLong(Files.readString(pid).trim())).orElseThrow();
        servers.add(h);
        return h;
    }

    private static void stop(ProcessHandle h) throws Exception {
        h.destroy();
        try {
            h.onExit().get(10, TimeUnit.SECONDS);
        } catch (java.util.concurrent.TimeoutException e) {
            h.destroyForcibly();
        }
    }

    private Image openNbd(long reconnectDelay, long openTimeout) throws BlockException {
        Image i = core.open(null, Options.of("driver", "nbd", "server.type", "unix", "server.path", sock.toString(),
                "export", "disk", "reconnect-delay", String.valueOf(reconnectDelay), "open-timeout",
                String.valueOf(openTimeout)), OpenMode.READ_WRITE);
        open.add(i);
        return i;
    }

    private static byte[] read(Image i, long off, int len) throws BlockException {
        ByteBuffer b = ByteBuffer.allocate(len);
        i.read(off, b);
        return b.array();
    }

    private static byte[] filled(int len, int value) {
        byte[] b = new byte[len];
        Arrays.fill(b, (byte) value);
        return b;
    }

    @Test
    void requestsWaitForTheReconnectWithinTheDelay() throws Exception {
        image();
        ProcessHandle first = qemuNbd();
        Image i = openNbd(20, 0);
        assertArrayEquals(filled(65536, 0x3a), read(i, 1 << 20, 65536));
        stop(first);
        // issued while nobody listens: the read and the write must wait, not fail
        CompletableFuture<byte[]> pendingRead = CompletableFuture.supplyAsync(() -> {
            try {
                return read(i, 1 << 20, 262144);
            } catch (BlockException e) {
                throw new IllegalStateException(e);
            }
        });
        CompletableFuture<Void> pendingWrite = CompletableFuture.runAsync(() -> {
            try {
                i.write(3 << 20, ByteBuffer.wrap(filled(131072, 0x4b)), 0);
                i.flush();
            } catch (BlockException e) {
                throw new IllegalStateException(e);
            }
        });
        Thread.sleep(700);
        assertTrue(!pendingRead.isDone() && !pendingWrite.isDone(), "requests must wait for the reconnect");
        qemuNbd();
        assertArrayEquals(filled(262144, 0x3a), pendingRead.get(30, TimeUnit.SECONDS));
        pendingWrite.get(30, TimeUnit.SECONDS);
        byte[] onDisk = Files.readAllBytes(img);
        assertArrayEquals(filled(131072, 0x4b), Arrays.copyOfRange(onDisk, 3 << 20, (3 << 20) + 131072));
    }

    @Test
    void afterTheDelayRequestsFailUntilTheBackgroundReconnectSucceeds() throws Exception {
        image();
        ProcessHandle first = qemuNbd();
        Image i = openNbd(1, 0);
        assertEquals(4 << 20, i.size());
        read(i, 0, 512);
        stop(first);
        long t0 = System.nanoTime();
        BlockException e = assertThrows(BlockException.class, () -> read(i, 0, 512));
        long waited = System.nanoTime() - t0;
        assertEquals(BlockException.Reason.IO, e.reason());
        assertTrue(e.getMessage().contains("reconnect-delay=1 s"), e.getMessage());
        assertTrue(waited < TimeUnit.SECONDS.toNanos(5), "bounded by the delay: " + waited / 1_000_000 + " ms");
        long t1 = System.nanoTime();
        assertThrows(BlockException.class, () -> read(i, 0, 512));
        assertTrue(System.nanoTime() - t1 < TimeUnit.MILLISECONDS.toNanos(500), "after the delay: fail at once");
        qemuNbd();
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
        while (true) {
            try {
                assertArrayEquals(filled(4096, 0x3a), read(i, 1 << 20, 4096));
                break;
            } catch (BlockException again) {
                assertTrue(System.nanoTime() < deadline, "never reconnected: " + again.getMessage());
                Thread.sleep(100);
            }
        }
    }

    @Test
    void withoutReconnectDelayALostServerFailsAtOnceAsInQemu() throws Exception {
        image();
        ProcessHandle first = qemuNbd();
        Image i = openNbd(0, 0);
        read(i, 0, 512);
        stop(first);
        long t0 = System.nanoTime();
        assertThrows(BlockException.class, () -> read(i, 0, 512));
        assertTrue(System.nanoTime() - t0 < TimeUnit.SECONDS.toNanos(2));
        qemuNbd();
        Thread.sleep(300);
        assertThrows(BlockException.class, () -> read(i, 0, 512), "no reconnecting with reconnect-delay=0");
    }

    @Test
    void openTimeoutWaitsForAServerThatStartsLater() throws Exception {
        image();
        CompletableFuture<Image> opening = CompletableFuture.supplyAsync(() -> {
            try {
                return openNbd(0, 20);
            } catch (BlockException e) {
                throw new IllegalStateException(e);
            }
        });
        Thread.sleep(800);
        assertTrue(!opening.isDone(), "open must keep trying");
        qemuNbd();
        Image i = opening.get(30, TimeUnit.SECONDS);
        assertArrayEquals(filled(4096, 0x3a), read(i, 1 << 20, 4096));
    }

    @Test
    void openTimeoutEndsWithTheConnectError() throws Exception {
        image();
        long t0 = System.nanoTime();
        BlockException e = assertThrows(BlockException.class, () -> openNbd(0, 1));
        long waited = System.nanoTime() - t0;
        assertTrue(e.getMessage().contains("Failed to connect to '" + sock + "'"), e.getMessage());
        assertTrue(waited >= TimeUnit.MILLISECONDS.toNanos(900) && waited < TimeUnit.SECONDS.toNanos(5),
                "tried for about a second: " + waited / 1_000_000 + " ms");
        long t1 = System.nanoTime();
        assertThrows(BlockException.class, () -> openNbd(0, 0));
        assertTrue(System.nanoTime() - t1 < TimeUnit.MILLISECONDS.toNanos(500), "open-timeout=0: one attempt");
    }

    @Test
    void reconnectsToARestartedNbdkit() throws Exception {
        String nbdkit = Peers.require("nbdkit", "nbdkit");
        sock = dir.resolve("k.sock");
        Path pid1 = dir.resolve("k1.pid");
        Peers.check(nbdkit, "-P", pid1.toString(), "-U", sock.toString(), "memory", "8M");
        ProcessHandle first = adopt(pid1);
        Image i = core.open(null, Options.of("driver", "nbd", "server.type", "unix", "server.path", sock.toString(),
                "reconnect-delay", "20"), OpenMode.READ_WRITE);
        open.add(i);
        i.write(0, ByteBuffer.wrap(filled(4096, 0x11)), 0);
        first.destroyForcibly(); // nbdkit waits for its clients on SIGTERM: kill it outright
        first.onExit().get(10, TimeUnit.SECONDS);
        CompletableFuture<Void> write = CompletableFuture.runAsync(() -> {
            try {
                i.write(8192, ByteBuffer.wrap(filled(4096, 0x22)), 0);
            } catch (BlockException e) {
                throw new IllegalStateException(e);
            }
        });
        Thread.sleep(500);
        Path pid2 = dir.resolve("k2.pid");
        Files.deleteIfExists(sock); // nbdkit leaves its socket file behind and will not replace it
        Peers.check(nbdkit, "-P", pid2.toString(), "-U", sock.toString(), "memory", "8M");
        adopt(pid2);
        write.get(30, TimeUnit.SECONDS);
        // a new nbdkit memory disk: the write after the restart is there, the one before is not
        assertArrayEquals(filled(4096, 0x22), read(i, 8192, 4096));
        assertArrayEquals(new byte[4096], read(i, 0, 4096));
    }

    private ProcessHandle adopt(Path pidFile) throws Exception {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
        while (!Files.exists(pidFile) || Files.readString(pidFile).isBlank()) {
            assertTrue(System.nanoTime() < deadline, "no pid file " + pidFile);
            Thread.sleep(10);
        }
        ProcessHandle h = ProcessHandle.of(Long.parseLong(Files.readString(pidFile).trim())).orElseThrow();
        servers.add(h);
        return h;
    }
}
