package org.blockhaus.nbd.server;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.blockhaus.testkit.Peers;
import org.blockhaus.testkit.TlsDirs;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.nio.channels.SocketChannel;
import java.net.UnixDomainSocketAddress;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code ./blk nbd} in process, against QEMU's own tools: qemu-img, qemu-io, nbdinfo read and
 * write what it serves, and for bad command lines it says what the real qemu-nbd says.
 */
@Timeout(value = 180, unit = TimeUnit.SECONDS)
class NbdCommandTest {
    @TempDir
    Path dir;

    private static String qemuImg() {
        return Peers.require("qemu-img", "qemu-utils");
    }

    private static String qemuIo() {
        return Peers.require("qemu-io", "qemu-utils");
    }

    private static String nbdinfo() {
        return Peers.require("nbdinfo", "libnbd-bin");
    }

    private Path qcow2(String name, String pattern) throws Exception {
        Path img = dir.resolve(name);
        Peers.check(qemuImg(), "create", "-q", "-f", "qcow2", img.toString(), "16M");
        Peers.check(qemuIo(), "-f", "qcow2", "-c", "write -P " + pattern + " 1M 256k", img.toString());
        return img;
    }

    private static String unixUri(String name, Path sock) {
        return "nbd+unix:///" + name + "?socket=" + sock;
    }

    @Test
    void servesQcow2OnAUnixSocketAndExitsAfterTheLastClientLikeQemuNbd() throws Exception {
        Path img = qcow2("disk.qcow2", "0x61");
        Path reference = dir.resolve("ref.raw");
        Peers.check(qemuImg(), "convert", "-f", "qcow2", "-O", "raw", img.toString(), reference.toString());
        Path sock = dir.resolve("s.sock");
        CommandRun r = CommandRun.start("--socket=" + sock, "-x", "disk", "-f", "qcow2", img.toString());
        r.listeningOn(sock);
        // listing exports is no client in qemu-nbd's sense: the server stays
        String list = Peers.check(nbdinfo(), "--list", "--json", unixUri("", sock)).out();
        assertTrue(list.contains("\"export-name\": \"disk\""), list);
        assertTrue(r.isRunning(), "a listing client ended a non-persistent server");
        Peers.Result same = Peers.run(qemuImg(), "compare", "-f", "raw", "-F", "raw", reference.toString(),
                unixUri("disk", sock));
        assertEquals(0, same.exit(), same.out());
        assertTrue(r.await(Duration.ofSeconds(20)), "without --persistent the server ends after its client");
        assertEquals(0, r.code(), r.err());
        assertFalse(Files.exists(sock), "the socket file is removed");
        // the image is closed and unlocked: qemu-img may open it read-write
        Peers.check(qemuImg(), "check", img.toString());
    }

    @Test
    void writesOverTcpReachTheImageAndSigtermFlushesClosesAndUnlocks() throws Exception {
        Path img = qcow2("disk.qcow2", "0x61");
        int port = Peers.freePort();
        CommandRun r = CommandRun.start("-b", "127.0.0.1", "-p", String.valueOf(port), "-x", "d", "-t", "--shared=4",
                img.toString());
        r.listeningOn(port);
        String uri = "nbd://127.0.0.1:" + port + "/d";
        Peers.check(qemuIo(), "-f", "raw", "-c", "write -P 0x7e 3M 128k", "-c", "write -z 1M 64k", uri);
        Peers.check(qemuIo(), "-f", "raw", "-c", "read -P 0x7e 3M 128k", "-c", "read -P 0 1M 64k", uri);
        assertTrue(r.isRunning(), "--persistent keeps serving");
        // a second read-write qemu-nbd on the image is refused by the lock we hold
        Peers.Result locked = Peers.run(Peers.require("qemu-nbd", "qemu-utils"), "-k",
                dir.resolve("q.sock").toString(), img.toString());
        assertEquals(1, locked.exit(), locked.out());
        assertTrue(locked.out().contains("Failed to get \"write\" lock"), locked.out());
        r.close(); // SIGTERM through the launcher: deactivate
        assertEquals(0, r.code(), r.err());
        Peers.check(qemuImg(), "check", img.toString());
        Peers.check(qemuIo(), "-f", "qcow2", "-c", "read -P 0x7e 3M 128k", "-c", "read -P 0 1M 64k",
                "-c", "read -P 0x61 1088k 192k", img.toString());
    }

    @Test
    void aSecondReadWriteServerOnTheSameImageGetsQemusLockMessage() throws Exception {
        Path img = qcow2("disk.qcow2", "0x61");
        Path sock = dir.resolve("a.sock");
        try (CommandRun first = CommandRun.start("-t", "-k", sock.toString(), img.toString()).listeningOn(sock)) {
            CommandRun second = CommandRun.finish("-t", "-k", dir.resolve("b.sock").toString(), img.toString());
            assertEquals(1, second.code());
            assertEquals("qemu-nbd: Failed to blk_new_open '" + img + "': Failed to get \"write\" lock\n"
                    + "Is another process using the image [" + img + "]?\n", second.err());
            // qemu-nbd -r needs a shared lock; a writer does not share "write": refused too, as by qemu
            CommandRun ro = CommandRun.finish("-r", "-k", dir.resolve("c.sock").toString(), img.toString());
            assertEquals(1, ro.code());
            Peers.Result real = Peers.run(Peers.require("qemu-nbd", "qemu-utils"), "-r", "-k",
                    dir.resolve("d.sock").toString(), img.toString());
            assertEquals(real.out(), ro.err(), "same words as qemu-nbd -r against our lock");
        }
    }

    @Test
    void severalNamedExportsFromOneServer() throws Exception {
        Path a = qcow2("a.qcow2", "0x0a");
        Path b = qcow2("b.qcow2", "0x0b");
        Path sock = dir.resolve("m.sock");
        try (CommandRun r = CommandRun.start("-t", "-e", "0", "-k", sock.toString(), "-x", "first", "-D", "A disk",
                a.toString(), "-x", "second", b.toString()).listeningOn(sock)) {
            String list = Peers.check(nbdinfo(), "--list", unixUri("", sock)).out();
            assertTrue(list.contains("export=\"first\""), list);
            assertTrue(list.contains("export=\"second\""), list);
            assertTrue(list.contains("A disk"), list);
            Peers.check(qemuIo(), "-f", "raw", "-c", "read -P 0x0a 1M 256k", unixUri("first", sock));
            Peers.check(qemuIo(), "-f", "raw", "-c", "read -P 0x0b 1M 256k", unixUri("second", sock));
        }
    }

    @Test
    void sharedOneServesOneClientAtATime() throws Exception {
        Path img = qcow2("disk.qcow2", "0x61");
        Path sock = dir.resolve("one.sock");
        try (CommandRun r = CommandRun.start("-t", "--shared=1", "-k", sock.toString(), img.toString())
                .listeningOn(sock)) {
            Peers.check(nbdinfo(), "--size", unixUri("", sock));
            SocketChannel holder = SocketChannel.open(UnixDomainSocketAddress.of(sock));
            Thread.sleep(200); // the server took it: the one slot is busy
            // as with qemu-nbd -e 1: the second client is not served while the first stays
            Peers.Result waiting = Peers.run("timeout", "2", nbdinfo(), "--size", unixUri("", sock));
            assertEquals(124, waiting.exit(), waiting.out());
            holder.close();
            Peers.check(nbdinfo(), "--size", unixUri("", sock));
        }
    }

    @Test
    void readOnlyRefusesWritesAndLeavesTheImageAlone() throws Exception {
        Path img = qcow2("disk.qcow2", "0x61");
        byte[] before = Files.readAllBytes(img);
        Path sock = dir.resolve("ro.sock");
        try (CommandRun r = CommandRun.start("-r", "-t", "-k", sock.toString(), img.toString()).listeningOn(sock)) {
            Peers.Result w = Peers.run(qemuIo(), "-f", "raw", "-c", "write -P 0x33 0 64k", unixUri("", sock));
            assertTrue(w.exit() != 0 || w.out().contains("ermission") || w.out().contains("read-only"), w.out());
            assertFalse(w.out().contains("wrote 65536/65536"), w.out());
            Peers.check(qemuIo(), "-f", "raw", "-r", "-c", "read -P 0x61 1M 256k", unixUri("", sock));
            String json = Peers.check(nbdinfo(), "--json", unixUri("", sock)).out();
            assertTrue(json.contains("\"is_read_only\": true"), json);
            // a read-only server shares the image: real qemu-img info reads it at the same time
            Peers.check(qemuImg(), "info", img.toString());
        }
        assertTrue(java.util.Arrays.equals(before, Files.readAllBytes(img)), "a read-only export changed the file");
    }

    @Test
    void persistentServesSequentialClients() throws Exception {
        Path img = qcow2("disk.qcow2", "0x61");
        Path sock = dir.resolve("p.sock");
        try (CommandRun r = CommandRun.start("--persistent", "-k", sock.toString(), img.toString())
                .listeningOn(sock)) {
            for (int i = 0; i < 3; i++) {
                Peers.check(qemuImg(), "info", unixUri("", sock));
            }
            assertTrue(r.isRunning());
        }
    }

    @Test
    void allocationDepthOnlyWithDashAAndAsQemuNbdReportsIt() throws Exception {
        Path base = dir.resolve("base.raw");
        Path top = dir.resolve("top.qcow2");
        Peers.check(qemuImg(), "create", "-q", "-f", "raw", base.toString(), "4M");
        Peers.check(qemuIo(), "-f", "raw", "-c", "write -P 1 0 1M", base.toString());
        Peers.check(qemuImg(), "create", "-q", "-f", "qcow2", "-b", base.toString(), "-F", "raw", top.toString());
        Peers.check(qemuIo(), "-f", "qcow2", "-c", "write -P 2 2M 512k", top.toString());
        Path sock = dir.resolve("a.sock");
        String ours;
        try (CommandRun r = CommandRun.start("-A", "-r", "-t", "-k", sock.toString(), top.toString())
                .listeningOn(sock)) {
            ours = Peers.check(nbdinfo(), "--map=qemu:allocation-depth", unixUri("", sock)).out();
        }
        try (CommandRun r = CommandRun.start("-r", "-t", "-k", sock.toString(), top.toString()).listeningOn(sock)) {
            String list = Peers.check(nbdinfo(), "--list", "--json", unixUri("", sock)).out();
            assertFalse(list.contains("qemu:allocation-depth"), "offered without -A: " + list);
        }
        Path qsock = dir.resolve("q.sock");
        try (Peers peers = new Peers()) {
            peers.qemuNbd(dir, "-A", "-r", "-k", qsock.toString(), top.toString());
            String theirs = Peers.check(nbdinfo(), "--map=qemu:allocation-depth", unixUri("", qsock)).out();
            assertEquals(theirs, ours);
        }
    }

    @Test
    void tlsCredentialsFromAnObject() throws Exception {
        Path img = qcow2("disk.qcow2", "0x61");
        Path creds = TlsDirs.x509(dir.resolve("tls"), "Test CA");
        int port = Peers.freePort();
        try (CommandRun r = CommandRun.start("-t", "-b", "127.0.0.1", "-p", String.valueOf(port), "-x", "disk",
                "--object", "tls-creds-x509,id=tls0,endpoint=server,dir=" + creds + ",verify-peer=off",
                "--tls-creds=tls0", img.toString()).listeningOn(port)) {
            String size = Peers.check(nbdinfo(), "--size", "nbds://127.0.0.1:" + port + "/disk?tls-certificates="
                    + creds).out();
            assertEquals("16777216", size.trim());
            Peers.Result plain = Peers.run(nbdinfo(), "--size", "nbd://127.0.0.1:" + port + "/disk");
            assertNotEquals(0, plain.exit(), plain.out());
        }
    }

    @Test
    void discardIsIgnoredByDefaultAndUnmapsWithDiscardUnmap() throws Exception {
        for (boolean unmap : new boolean[] {false, true}) {
            Path img = dir.resolve("t" + unmap + ".qcow2");
            Peers.check(qemuImg(), "create", "-q", "-f", "qcow2", img.toString(), "16M");
            Peers.check(qemuIo(), "-f", "qcow2", "-c", "write -P 0x44 0 2M", img.toString());
            Path sock = dir.resolve("t" + unmap + ".sock");
            List<String> args = new ArrayList<>(List.of("-t", "-k", sock.toString()));
            if (unmap) {
                args.add("--discard=unmap");
            }
            args.add(img.toString());
            try (CommandRun r = CommandRun.start(args.toArray(String[]::new)).listeningOn(sock)) {
                Peers.check(qemuIo(), "-f", "raw", "-c", "discard 0 2M", unixUri("", sock));
            }
            String map = Peers.check(qemuImg(), "map", "--output=json", "-f", "qcow2", img.toString()).out();
            boolean stillData = map.lines().anyMatch(l -> l.contains("\"start\": 0,") && l.contains("\"data\": true"));
            assertEquals(!unmap, stillData, "discard " + (unmap ? "unmap" : "ignore") + ": " + map);
            // the same through qemu-nbd: with --discard=unmap the freed clusters leave the file too
            Path twin = dir.resolve("q" + unmap + ".qcow2");
            Peers.check(qemuImg(), "create", "-q", "-f", "qcow2", twin.toString(), "16M");
            Peers.check(qemuIo(), "-f", "qcow2", "-c", "write -P 0x44 0 2M", twin.toString());
            try (Peers peers = new Peers()) {
                Path q = dir.resolve("q" + unmap + ".sock");
                List<String> qargs = new ArrayList<>(List.of("-t", "-f", "qcow2", "-k", q.toString()));
                if (unmap) {
                    qargs.add("--discard=unmap");
                }
                qargs.add(twin.toString());
                peers.qemuNbd(dir, qargs.toArray(String[]::new));
                Peers.check(qemuIo(), "-f", "raw", "-c", "discard 0 2M", unixUri("", q));
            }
            long theirs = Long.parseLong(Peers.check("stat", "-c", "%b", twin.toString()).out().trim());
            long ours = Long.parseLong(Peers.check("stat", "-c", "%b", img.toString()).out().trim());
            assertTrue(Math.abs(theirs - ours) <= 16, "allocated blocks after discard " + unmap + ": qemu-nbd "
                    + theirs + ", ours " + ours);
        }
    }

    @Test
    void detectZeroesTurnsZeroWritesIntoZeroClusters() throws Exception {
        for (String mode : List.of("off", "on")) {
            Path img = dir.resolve("z" + mode + ".qcow2");
            Peers.check(qemuImg(), "create", "-q", "-f", "qcow2", img.toString(), "16M");
            Peers.check(qemuIo(), "-f", "qcow2", "-c", "write -P 0x44 0 2M", img.toString());
            Path sock = dir.resolve("z" + mode + ".sock");
            try (CommandRun r = CommandRun.start("-t", "--detect-zeroes=" + mode, "-k", sock.toString(),
                    img.toString()).listeningOn(sock)) {
                Peers.check(qemuIo(), "-f", "raw", "-c", "write -P 0 0 2M", unixUri("", sock));
            }
            Peers.check(qemuIo(), "-f", "qcow2", "-c", "read -P 0 0 2M", img.toString());
            String map = Peers.check(qemuImg(), "map", "--output=json", "-f", "qcow2", img.toString()).out();
            boolean zero = map.lines().anyMatch(l -> l.contains("\"start\": 0,") && l.contains("\"zero\": true"));
            assertEquals(mode.equals("on"), zero, "--detect-zeroes=" + mode + ": " + map);
        }
    }

    @Test
    void offsetServesTheImageFromThereAsQemuNbdDoes() throws Exception {
        Path img = dir.resolve("o.raw");
        Peers.check(qemuImg(), "create", "-q", "-f", "raw", img.toString(), "4M");
        Peers.check(qemuIo(), "-f", "raw", "-c", "write -P 9 1M 1M", img.toString());
        Path sock = dir.resolve("o.sock");
        String ours;
        try (CommandRun r = CommandRun.start("-r", "-t", "-f", "raw", "-o", "1048576", "-k", sock.toString(),
                img.toString()).listeningOn(sock)) {
            ours = Peers.check(nbdinfo(), "--size", unixUri("", sock)).out();
            Peers.check(qemuIo(), "-f", "raw", "-r", "-c", "read -P 9 0 1M", "-c", "read -P 0 1M 2M",
                    unixUri("", sock));
        }
        try (Peers peers = new Peers()) {
            Path q = dir.resolve("q.sock");
            peers.qemuNbd(dir, "-r", "-f", "raw", "-o", "1048576", "-k", q.toString(), img.toString());
            assertEquals(Peers.check(nbdinfo(), "--size", unixUri("", q)).out(), ours);
        }
    }

    /** The same command lines given to the real qemu-nbd: same stderr, same exit code. */
    @Test
    void badCommandLinesGetQemuNbdsMessagesAndExitCodes() throws Exception {
        Path img = qcow2("disk.qcow2", "0x61");
        String sock = dir.resolve("x.sock").toString();
        String f = img.toString();
        List<String[]> cases = List.of(
                new String[] {"--bogus", f}, new String[] {"--bogus=1", f}, new String[] {"-Z", f},
                new String[] {}, new String[] {f, f},
                new String[] {"-k", sock, dir.resolve("missing.qcow2").toString()},
                new String[] {"-p", "abc", f}, new String[] {"-p", "-1", f},
                new String[] {"-e", "x", f}, new String[] {"--shared=-1", f},
                new String[] {"--cache=bad", f}, new String[] {"-n", "--cache=none", f},
                new String[] {"--discard=bad", f}, new String[] {"--detect-zeroes=bad", f},
                new String[] {"--detect-zeroes=unmap", f}, new String[] {"--aio=bad", f},
                new String[] {"--image-opts", "-f", "qcow2", f}, new String[] {"--port"}, new String[] {"-x"},
                new String[] {"--fork=1", f}, new String[] {"--s", f}, new String[] {"-o", "abc", f},
                new String[] {"-o", "1M", f}, new String[] {"-k", sock, "-o", "99999999999", f},
                new String[] {"-k", sock, "-f", "bogus", f}, new String[] {"--tls-creds=foo", "-k", sock, f},
                new String[] {"--object", "foo,id=x", f}, new String[] {"--object", "secret,id=s", f},
                new String[] {"--tls-authz=x", f},
                new String[] {"-k", sock, "--pid-file=" + dir.resolve("no/such/dir/p.pid"), f});
        Peers.require("qemu-nbd", "qemu-utils");
        String qemuNbd = "qemu-nbd"; // by name, as scripts call it: getopt's messages start with argv[0]
        List<String> mismatches = new ArrayList<>();
        for (String[] args : cases) {
            List<String> cmd = new ArrayList<>(List.of("timeout", "20", qemuNbd));
            cmd.addAll(List.of(args));
            Process p = new ProcessBuilder(cmd).directory(dir.toFile()).start();
            String theirErr = new String(p.getErrorStream().readAllBytes(), StandardCharsets.UTF_8);
            p.waitFor();
            CommandRun ours = CommandRun.finish(args);
            if (p.exitValue() != ours.code() || !theirErr.equals(ours.err())) {
                mismatches.add(String.join(" ", args) + "\n  qemu-nbd (" + p.exitValue() + "): " + theirErr
                        + "  blk nbd  (" + ours.code() + "): " + ours.err());
            }
            Files.deleteIfExists(Path.of(sock));
        }
        assertTrue(mismatches.isEmpty(), String.join("\n", mismatches));
    }

    @Test
    void helpListsQemuNbdsOptions() throws Exception {
        CommandRun r = CommandRun.finish("--help");
        assertEquals(0, r.code());
        for (String opt : List.of("--port=PORT", "--bind=IFACE", "--socket=PATH", "--shared=NUM", "--persistent",
                "--export-name=NAME", "--allocation-depth", "--read-only", "--cache=MODE", "--discard=MODE",
                "--fork", "--pid-file=PATH", "--tls-creds=ID", "--image-opts", "--object")) {
            assertTrue(r.out().contains(opt), opt + " missing from --help");
        }
    }

    @Test
    void forkNeedsTheLauncherInProcess() throws Exception {
        CommandRun r = CommandRun.finish("--fork", "-k", dir.resolve("f.sock").toString(), "x.qcow2");
        assertEquals(1, r.code());
        assertTrue(r.err().contains("--fork works only from the blk launcher"), r.err());
    }
}
