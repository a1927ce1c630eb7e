package org.blockhaus.shell.impl;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * The command line against the real qemu-img 7.2 on the same inputs: same output, same exit
 * codes, images that qemu-img agrees with.
 */
class ShellInteropTest extends QemuComparison {
    @Test
    void createPrintsWhatQemuImgPrintsAndQemuImgAgreesWithTheImage() throws Exception {
        Qemu.Run ours = blk("create", "-f", "raw", "a.raw", "10M");
        Qemu.Run theirs = qemu("create", "-f", "raw", "b.raw", "10M");
        assertEquals(theirs.out().replace("b.raw", "a.raw"), ours.out());
        assertEquals(0, ours.exitCode());
        assertEquals(qemu("info", "--output=json", "b.raw").out().replace("b.raw", "a.raw"),
                qemu("info", "--output=json", "a.raw").out());
        assertEquals(0, qemu("compare", "a.raw", "b.raw").exitCode());
    }

    @ParameterizedTest
    @ValueSource(strings = {"off", "falloc", "full"})
    void eachPreallocationModeAllocatesWhatQemuImgAllocates(String mode) throws Exception {
        Qemu.Run ours = blk("create", "-f", "raw", "-o", "preallocation=" + mode, "a.raw", "3M");
        Qemu.Run theirs = qemu("create", "-f", "raw", "-o", "preallocation=" + mode, "b.raw", "3M");
        assertEquals(theirs.out().replace("b.raw", "a.raw"), ours.out());
        assertEquals(Qemu.blocks(dir.resolve("b.raw")), Qemu.blocks(dir.resolve("a.raw")));
        assertEquals(Files.size(dir.resolve("b.raw")), Files.size(dir.resolve("a.raw")));
    }

    @Test
    void infoMatchesQemuImgFieldForFieldAndLineForLine() throws Exception {
        qemu("create", "-f", "raw", "a.raw", "1G");
        Qemu.ok(dir, "qemu-io", "-f", "raw", "-c", "write -P 7 64k 1M", "a.raw");
        assertSame(qemu("info", "--output=json", "a.raw"), blk("info", "--output=json", "a.raw"));
        assertSame(qemu("info", "a.raw"), blk("info", "a.raw"));
        assertSame(qemu("info", "-f", "raw", "--output", "json", "a.raw"),
                blk("info", "-f", "raw", "--output", "json", "a.raw"));
    }

    @Test
    void mapMatchesQemuImgOnASparseFile() throws Exception {
        qemu("create", "-f", "raw", "a.raw", "64M");
        Qemu.ok(dir, "qemu-io", "-f", "raw", "-c", "write -P 1 1M 1M", "-c", "write -P 2 8M 64k", "-c",
                "write -P 3 63M 1M", "a.raw");
        assertSame(qemu("map", "--output=json", "a.raw"), blk("map", "--output=json", "a.raw"));
        assertSame(qemu("map", "a.raw"), blk("map", "a.raw"));
        assertSame(qemu("map", "--output=json", "--start-offset=2M", "--max-length=7M", "a.raw"),
                blk("map", "--output=json", "--start-offset=2M", "--max-length=7M", "a.raw"));
    }

    @Test
    void compareSpeaksQemuImgsMessagesAndExitCodes() throws Exception {
        qemu("create", "-f", "raw", "a.raw", "4M");
        qemu("create", "-f", "raw", "b.raw", "4M");
        qemu("create", "-f", "raw", "c.raw", "8M");
        assertSame(qemu("compare", "a.raw", "b.raw"), blk("compare", "a.raw", "b.raw"));
        assertSame(qemu("compare", "a.raw", "c.raw"), blk("compare", "a.raw", "c.raw"));
        assertSame(qemu("compare", "-s", "a.raw", "c.raw"), blk("compare", "-s", "a.raw", "c.raw"));
        Qemu.ok(dir, "qemu-io", "-f", "raw", "-c", "write -P 9 1000k 3", "b.raw");
        assertSame(qemu("compare", "a.raw", "b.raw"), blk("compare", "a.raw", "b.raw"));
        Qemu.ok(dir, "qemu-io", "-f", "raw", "-c", "write -P 9 6M 1", "c.raw");
        assertSame(qemu("compare", "a.raw", "c.raw"), blk("compare", "a.raw", "c.raw"));
        assertSame(qemu("compare", "a.raw", "nofile"), blk("compare", "a.raw", "nofile"));
    }

    @Test
    void convertGivesAnImageQemuImgCallsIdenticalAndAsSparse() throws Exception {
        qemu("create", "-f", "raw", "src.raw", "32M");
        Qemu.ok(dir, "qemu-io", "-f", "raw", "-c", "write -P 5 0 3M", "-c", "write -z 3M 1M", "-c",
                "write -P 6 20M 100k", "src.raw");
        Qemu.Run ours = blk("convert", "-f", "raw", "-O", "raw", "src.raw", "ours.raw");
        assertEquals(0, ours.exitCode(), ours.err());
        qemu("convert", "-f", "raw", "-O", "raw", "src.raw", "theirs.raw");
        assertSame(new Qemu.Run(0, "Images are identical.\n", ""), qemu("compare", "ours.raw", "theirs.raw"));
        assertEquals(Qemu.blocks(dir.resolve("theirs.raw")), Qemu.blocks(dir.resolve("ours.raw")));
        Qemu.Run progress = blk("convert", "-p", "-O", "raw", "src.raw", "p.raw");
        assertTrue(progress.out().startsWith("    (0.00/100%)\r"), progress.out());
        assertTrue(progress.out().endsWith("    (100.00/100%)\r\n"), progress.out());
    }

    @Test
    void badInputFailsAsQemuImgFailsAndCreatesNothing() throws Exception {
        Files.createDirectory(dir.resolve("sub"));
        qemu("create", "-f", "raw", "a.raw", "1M");
        String[][] cases = {
            {"create", "-f", "raw", "x.raw", "10X"},
            {"create", "-f", "raw", "-o", "size=10X", "x.raw"},
            {"create", "-f", "raw", "-o", "preallocation=bogus", "x.raw", "1M"},
            {"create", "-f", "raw", "-b", "a.raw", "x.raw", "1M"},
            {"convert", "-O", "raw", "nofile", "x.raw"},
            {"convert", "-m", "99", "a.raw", "x.raw"},
            {"convert", "-c", "-O", "raw", "a.raw", "x.raw"},
            {"map", "--start-offset=zz", "a.raw"},
            {"map", "--max-length=zz", "a.raw"},
            {"info", "-f"},
            {"create", "-f", "nope", "x.raw", "1M"},
            {"create", "-f", "raw", "-o", "foo=1", "x.raw", "1M"},
            {"create", "-f", "raw", "x.raw"},
            {"info", "nofile"},
            {"info", "sub"},
            {"info", "-f", "nope", "a.raw"},
            {"info", "--output=xml", "a.raw"},
            {"info"},
            {"info", "--bogus", "a.raw"},
            {"bogus"},
        };
        for (String[] c : cases) {
            assertSame(qemu(c), blk(c));
            assertFalse(Files.exists(dir.resolve("x.raw")), String.join(" ", c) + " created a file");
        }
        String json = "json:{bad";
        Qemu.Run theirs = qemu("info", json);
        Qemu.Run ours = blk("info", json);
        assertSame(theirs, ours);
        String[] imageOpts = {"info", "--image-opts", "driver=raw,file.driver=file,file.filename=a.raw,foo=1"};
        assertSame(qemu(imageOpts), blk(imageOpts));
    }
}
