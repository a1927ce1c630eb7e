package org.blockhaus.nbd.server;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.blockhaus.testkit.Peers;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.blockhaus.nbd.server.impl.ServeCommands;
import org.blockhaus.nbd.server.impl.ServeCommands.ExportInfo;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * blk:serve, blk:exports and blk:unserve as the Gogo shell calls them: serve returns at once with
 * the export's address while the server runs on; unserve and bundle stop release the image.
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class ServeCommandsTest {
    @TempDir
    Path dir;

    private Path image() throws Exception {
        Path img = dir.resolve("disk.qcow2");
        Peers.check(Peers.require("qemu-img", "qemu-utils"), "create", "-q", "-f", "qcow2", img.toString(), "8M");
        return img;
    }

    @Test
    void serveReturnsTheExportAndUnserveReleasesTheImage() throws Exception {
        Path img = image();
        Path sock = dir.resolve("shell.sock");
        ServeCommands shell = new ServeCommands(CommandRun.core());
        List<ExportInfo> served = shell.serve("-t", "-k", sock.toString(), "-x", "disk", img.toString());
        assertEquals(1, served.size());
        ExportInfo e = served.getFirst();
        assertEquals("disk", e.name);
        assertEquals("nbd+unix:///disk?socket=" + sock, e.uri);
        assertEquals(sock.toString(), e.address);
        Peers.check(Peers.require("qemu-io", "qemu-utils"), "-f", "raw", "-c", "write -P 0x5c 0 64k", e.uri);
        Peers.check(Peers.require("qemu-img", "qemu-utils"), "info", e.uri);
        assertEquals(List.of("disk"), shell.exports().stream().map(x -> x.name).toList());
        // the image is ours while served: qemu-img may not open it for writing
        Peers.Result locked = Peers.run(Peers.require("qemu-img", "qemu-utils"), "check", img.toString());
        assertTrue(locked.exit() != 0 && locked.out().contains("lock"), locked.out());

        List<ExportInfo> stopped = shell.unserve("disk");
        assertEquals("disk", stopped.getFirst().name);
        assertFalse(stopped.getFirst().running);
        assertTrue(shell.exports().isEmpty());
        assertFalse(Files.exists(sock));
        Peers.check(Peers.require("qemu-img", "qemu-utils"), "check", img.toString());
        Peers.check(Peers.require("qemu-io", "qemu-utils"), "-f", "qcow2", "-c", "read -P 0x5c 0 64k",
                img.toString());
        assertThrows(IllegalArgumentException.class, () -> shell.unserve("disk"));
    }

    @Test
    void bundleStopStopsEveryServer() throws Exception {
        Path img = image();
        ServeCommands shell = new ServeCommands(CommandRun.core());
        int port = Peers.freePort();
        ExportInfo tcp = shell.serve("-t", "-r", "-b", "127.0.0.1", "-p", String.valueOf(port), img.toString())
                .getFirst();
        assertEquals("127.0.0.1:" + port, tcp.address);
        assertEquals("nbd://127.0.0.1:" + port + "/", tcp.uri);
        ExportInfo unix = shell.serve("-t", "-r", "-k", dir.resolve("u.sock").toString(), "-x", "u",
                img.toString()).getFirst();
        assertEquals(2, shell.exports().size());
        Peers.check(Peers.require("nbdinfo", "libnbd-bin"), "--size", unix.uri);
        shell.deactivate();
        assertTrue(shell.exports().isEmpty());
        Peers.Result gone = Peers.run(Peers.require("nbdinfo", "libnbd-bin"), "--size", tcp.uri);
        assertTrue(gone.exit() != 0, gone.out());
        Peers.check(Peers.require("qemu-img", "qemu-utils"), "check", img.toString());
    }

    @Test
    void serveExportsADirtyBitmapAndRefusesAnUnknownOne() throws Exception {
        Path img = image();
        String qemuImg = Peers.require("qemu-img", "qemu-utils");
        Peers.check(qemuImg, "bitmap", "--add", img.toString(), "b0");
        Peers.check(Peers.require("qemu-io", "qemu-utils"), "-f", "qcow2", "-c", "write 1M 64k", img.toString());
        ServeCommands shell = new ServeCommands(CommandRun.core());
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> shell.serve("-r", "-k",
                dir.resolve("x.sock").toString(), "-B", "b1", img.toString()));
        assertEquals("Bitmap 'b1' is not found", e.getMessage());
        ExportInfo served = shell.serve("-t", "-r", "-k", dir.resolve("b.sock").toString(), "--bitmap=b0",
                img.toString()).getFirst();
        String map = Peers.check(Peers.require("nbdinfo", "libnbd-bin"), "--map=qemu:dirty-bitmap:b0", served.uri)
                .out();
        assertEquals("         0     1048576    0  clean\n   1048576       65536    1  dirty\n"
                + "   1114112     7274496    0  clean\n", map);
        shell.deactivate();
    }

    @Test
    void badArgumentsAreShellErrorsWithQemuNbdsWords() {
        ServeCommands shell = new ServeCommands(CommandRun.core());
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> shell.serve("--cache=bad", "x.qcow2"));
        assertEquals("Invalid cache mode `bad'", e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> shell.serve("-k", dir.resolve("s").toString(),
                dir.resolve("missing.qcow2").toString()));
        assertTrue(e.getMessage().startsWith("Failed to blk_new_open"), e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> shell.serve("--fork", "x.qcow2"));
    }
}
