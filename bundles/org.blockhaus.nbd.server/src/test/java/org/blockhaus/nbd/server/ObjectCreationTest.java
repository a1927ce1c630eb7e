package org.blockhaus.nbd.server;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.blockhaus.testkit.Peers;
import org.blockhaus.testkit.TlsDirs;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code blk nbd --object ...}: every object is created (TLS credentials loaded) when defined,
 * before the image opens and whether or not --tls-creds names it, with qemu-nbd's words and exit
 * code for missing directories and files, broken PEM, bad keys.psk lines and wrong endpoints.
 */
@Timeout(value = 180, unit = TimeUnit.SECONDS)
class ObjectCreationTest {
    @TempDir
    Path dir;

    @Test
    void brokenObjectsFailAtCreationAsInQemuNbd() throws Exception {
        String qemuImg = Peers.require("qemu-img", "qemu-utils");
        String qemuNbd = Peers.require("qemu-nbd", "qemu-utils");
        Path img = dir.resolve("a.raw");
        Peers.check(qemuImg, "create", "-q", "-f", "raw", img.toString(), "1M");
        List<String> defs = new ArrayList<>(TlsDirs.make(dir));
        defs.add("secret,id=s0,file=" + dir.resolve("no-such-secret"));
        defs.add("secret,id=s0");
        defs.add("nonesuch,id=x");
        defs.add("secret,id=s0,data=!!!,format=base64");
        defs.add("secret,id=s0,data=abc,format=hex");
        defs.add("secret,id=s0,file=" + dir);
        int failing = 0;
        for (String def : defs) {
            // qemu-img tells which definitions fail at creation; a good one would make qemu-nbd serve
            if (Peers.run(qemuImg, "info", "--object", def, img.toString()).exit() == 0) {
                continue;
            }
            failing++;
            Path sock = dir.resolve("s.sock");
            Peers.Result expected = Peers.run(qemuNbd, "--object", def, "-k", sock.toString(), "-r", "-f", "raw",
                    img.toString());
            Files.deleteIfExists(sock);
            CommandRun ours = CommandRun.finish("--object", def, "-k", sock.toString(), "-r", "-f", "raw",
                    img.toString());
            assertEquals(expected.out(), ours.err(), def);
            assertEquals(expected.exit(), ours.code(), def);
        }
        assertTrue(failing >= 25, "broken definitions compared: " + failing);
    }
}
