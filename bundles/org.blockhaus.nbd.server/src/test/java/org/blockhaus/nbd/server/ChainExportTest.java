package org.blockhaus.nbd.server;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.blockhaus.testkit.Peers;
import java.net.InetSocketAddress;
import java.net.UnixDomainSocketAddress;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.core.BlockCore;
import org.blockhaus.format.qcow2.Qcow2Driver;
import org.blockhaus.format.raw.RawDriver;
import org.blockhaus.protocol.file.impl.FileDriver;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * What qemu-nbd is for: a real chain (qcow2 over file, with a raw backing file) opened by the
 * core and served; QEMU's tools read and write it through us, then check the image on disk.
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class ChainExportTest {
    private static final int MIB = 1 << 20;

    @TempDir
    Path dir;

    private static BlockCore core() {
        BlockCore core = BlockCore.standalone();
        core.addDriver(new FileDriver());
        core.addDriver(new RawDriver());
        core.addDriver(new Qcow2Driver());
        return core;
    }

    private static String qemuImg() {
        return Peers.require("qemu-img", "qemu-utils");
    }

    private static String nbdinfo() {
        return Peers.require("nbdinfo", "libnbd-bin");
    }

    private static String qemuIo() {
        return Peers.require("qemu-io", "qemu-utils");
    }

    @Test
    void servesAQcow2ChainThatQemuReadsWritesAndChecks() throws Exception {
        Path base = dir.resolve("base.raw");
        Path top = dir.resolve("top.qcow2");
        Peers.check(qemuImg(), "create", "-q", "-f", "raw", base.toString(), "16M");
        Peers.check(qemuIo(), "-f", "raw", "-c", "write -P 0x41 0 1M", base.toString());
        Peers.check(qemuImg(), "create", "-q", "-f", "qcow2", "-b", base.toString(), "-F", "raw", top.toString());
        Peers.check(qemuIo(), "-f", "qcow2", "-c", "write -P 0x42 4M 512k", top.toString());
        Path reference = dir.resolve("reference.raw");
        Peers.check(qemuImg(), "convert", "-f", "qcow2", "-O", "raw", top.toString(), reference.toString());

        BlockCore core = core();
        Path sock = dir.resolve("chain.sock");
        try (Image image = core.open(top.toString(), Options.of("driver", "qcow2"), OpenMode.READ_WRITE);
                NbdServer.Running r = NbdServer.standalone().start(image, "disk", UnixDomainSocketAddress.of(sock),
                        false)) {
            String uri = r.uri("disk");
            Peers.Result same = Peers.run(qemuImg(), "compare", "-f", "raw", "-F", "raw", reference.toString(), uri);
            assertEquals(0, same.exit(), same.out());
            // base:allocation: backing data shows as data, the unwritten rest as holes
            String map = Peers.check(Peers.require("nbdinfo", "libnbd-bin"), "--map", uri).out();
            List<String> lines = map.lines().map(String::trim).map(l -> l.replaceAll("\\s+", " ")).toList();
            assertTrue(lines.getFirst().startsWith("0 1048576 0 data"), map);
            assertTrue(lines.stream().anyMatch(l -> l.startsWith("4194304 524288 0 data")), map);
            assertTrue(lines.stream().anyMatch(l -> l.contains("hole,zero")), map);
            // both contexts exactly as qemu-nbd -A reports them for a copy of the same chain
            Path copy = dir.resolve("copy.qcow2");
            Files.copy(top, copy);
            try (Peers peers = new Peers()) {
                Path qsock = dir.resolve("q.sock");
                peers.qemuNbd(dir, "-r", "-A", "-f", "qcow2", "--socket=" + qsock, "-x", "disk", copy.toString());
                String qemuUri = "nbd+unix:///disk?socket=" + qsock;
                for (String context : List.of("base:allocation", "qemu:allocation-depth")) {
                    String ours = Peers.check(nbdinfo(), "--map=" + context, uri).out();
                    String theirs = Peers.check(nbdinfo(), "--map=" + context, qemuUri).out();
                    assertEquals(theirs, ours, context);
                }
            }
            Peers.check(qemuIo(), "-f", "raw", "-c", "write -P 0x43 8M 1M", "-c", "write -P 0x44 100 10",
                    "-c", "write -z 4M 64k", "-c", "flush", uri);
        }
        Peers.Result check = Peers.run(qemuImg(), "check", top.toString());
        assertEquals(0, check.exit(), check.out());
        Peers.Result reads = Peers.check(qemuIo(), "-r", "-f", "qcow2", "-c", "read -P 0x41 0 100", "-c",
                "read -P 0x44 100 10", "-c", "read -P 0x41 110 1048466", "-c", "read -P 0 4M 64k", "-c",
                "read -P 0x42 4259840 458752", "-c", "read -P 0x43 8M 1M", top.toString());
        assertFalse(reads.out().contains("Pattern verification failed"), reads.out());
        byte[] baseBytes = Files.readAllBytes(base);
        assertEquals(16 * MIB, baseBytes.length);
        assertEquals(0x41, baseBytes[100], "the backing file was not written");
        assertEquals(0, baseBytes[8 * MIB + 5], "the backing file was not written");
    }

    @Test
    void servesARawFileOverTcpToQemuImgConvert() throws Exception {
        Path img = dir.resolve("disk.raw");
        Peers.check(qemuImg(), "create", "-q", "-f", "raw", img.toString(), "8M");
        Peers.check(qemuIo(), "-f", "raw", "-c", "write -P 0x5c 1M 3M", img.toString());
        BlockCore core = core();
        try (Image image = core.open(img.toString(), Options.of("driver", "raw"), OpenMode.READ_ONLY);
                NbdServer.Running r = NbdServer.standalone().start(image, "", new InetSocketAddress("127.0.0.1", 0),
                        false)) {
            // the image was opened read-only, so the export is too, even though nobody said so
            Peers.Result w = Peers.run(qemuIo(), "-f", "raw", "-c", "write 0 4k", r.uri(""));
            assertTrue(w.exit() != 0 && w.out().contains("Permission denied"), w.out());
            Path out = dir.resolve("out.qcow2");
            Peers.check(qemuImg(), "convert", "-O", "qcow2", r.uri(""), out.toString());
            Peers.Result cmp = Peers.run(qemuImg(), "compare", "-f", "raw", "-F", "qcow2", img.toString(),
                    out.toString());
            assertEquals(0, cmp.exit(), cmp.out());
        }
    }
}
