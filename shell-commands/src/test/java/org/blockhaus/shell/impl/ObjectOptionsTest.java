package org.blockhaus.shell.impl;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;

/**
 * {@code --object tls-creds-x509|tls-creds-psk}: the shell takes QEMU's user-creatable TLS
 * objects into the core's object registry for the length of one command (as a qemu-img process
 * has them), and refuses bad definitions with qemu-img's words. The TLS itself is tested with the
 * nbd bundles.
 */
class ObjectOptionsTest extends QemuComparison {
    private Path keys() throws Exception {
        Path k = Files.createDirectories(dir.resolve("k"));
        Qemu.ok(dir, "psktool", "-u", "alice", "-p", k.resolve("keys.psk").toString());
        return k;
    }

    @Test
    void tlsObjectsLastOneCommandAsInAQemuImgProcess() throws Exception {
        Path k = keys();
        qemu("create", "-f", "raw", "a.raw", "1M");
        String object = "tls-creds-psk,id=tls0,endpoint=client,dir=" + k + ",username=alice";
        Qemu.Run first = blk("info", "--object", object, "a.raw");
        assertSame(qemu("info", "--object", object, "a.raw"), first);
        // the same id again in the next command of this shell: no "duplicate" error
        assertSame(first, blk("info", "--object", object, "a.raw"));
        assertEquals(0, first.exitCode(), first.err());
    }

    @Test
    void badTlsObjectsGetQemuImgsMessages() throws Exception {
        Path k = keys();
        qemu("create", "-f", "raw", "a.raw", "1M");
        String psk = "tls-creds-psk,id=tls0,endpoint=client,dir=" + k + ",username=alice";
        String[][] cases = {
            {"--object", psk + ",bogus=1"},
            {"--object", "tls-creds-psk,id=tls0,endpoint=cli,dir=" + k},
            {"--object", psk, "--object", "tls-creds-x509,id=tls0,dir=" + k},
            {"--object", "tls-creds-x509,dir=" + k},
            {"--object", "tls-creds-x509,id=a,dir=" + k + ",verify-peer=maybe"},
        };
        for (String[] c : cases) {
            String[] args = new String[c.length + 2];
            args[0] = "info";
            System.arraycopy(c, 0, args, 1, c.length);
            args[args.length - 1] = "a.raw";
            assertSame(qemu(args), blk(args));
        }
    }

    /**
     * Objects are created when defined, used or not (here nothing uses them), so broken
     * credentials fail at once without a "Could not open" prefix: the same stderr and exit code as
     * qemu-img for each mistake qemu-img's users make.
     */
    @Test
    void objectsAreCheckedWhenDefinedWithQemuImgsWords() throws Exception {
        qemu("create", "-f", "raw", "a.raw", "1M");
        java.util.List<String> cases = new java.util.ArrayList<>();
        for (String def : org.blockhaus.testkit.TlsDirs.make(dir)) {
            cases.add(def);
        }
        cases.add("secret,id=s0");
        cases.add("secret,id=s0,file=" + dir.resolve("no-such-secret"));
        cases.add("secret,id=s0,data=x,file=" + dir.resolve("no-such-secret"));
        cases.add("nonesuch,id=x");
        cases.add("secret,id=s0,data=x,format=base64");
        cases.add("secret,id=s0,data=YWJ,format=base64");
        cases.add("secret,id=s0,data=!!!,format=base64");
        cases.add("secret,id=s0,data=abc,format=hex");
        cases.add("secret,id=s0,data=abc,bogus=1");
        cases.add("secret,id=s0,file=" + dir);
        for (String def : cases) {
            Qemu.Run expected = qemu("info", "--object", def, "a.raw");
            assertSame(expected, blk("info", "--object", def, "a.raw"));
        }
        // one id twice in a command is refused; in the next command of this shell the id is free again
        String[] twice = {"info", "--object", "secret,id=s0,data=a", "--object", "secret,id=s0,data=b", "a.raw"};
        assertSame(qemu(twice), blk(twice));
        String[] once = {"info", "--object", "secret,id=s0,data=a", "a.raw"};
        assertSame(qemu(once), blk(once));
        assertSame(qemu(once), blk(once));
    }
}
