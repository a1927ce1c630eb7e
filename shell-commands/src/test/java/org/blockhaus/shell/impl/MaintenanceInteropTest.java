package org.blockhaus.shell.impl;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import org.junit.jupiter.api.Test;

/** resize, measure, check, snapshot, amend, bench and dd against qemu-img on raw images. */
class MaintenanceInteropTest extends QemuComparison {
    @Test
    void resizeGrowsAndShrinksOnlyWhenAskedLikeQemuImg() throws Exception {
        qemu("create", "-f", "raw", "a.raw", "1M");
        qemu("create", "-f", "raw", "b.raw", "1M");
        assertSame(qemu("resize", "-f", "raw", "a.raw", "2M"), blk("resize", "-f", "raw", "b.raw", "2M"));
        assertSame(qemu("resize", "-f", "raw", "a.raw", "--", "-1M"), blk("resize", "-f", "raw", "b.raw", "--", "-1M"));
        assertSame(qemu("resize", "-f", "raw", "--shrink", "a.raw", "--", "-512k"),
                blk("resize", "-f", "raw", "--shrink", "b.raw", "--", "-512k"));
        assertSame(qemu("resize", "-f", "raw", "a.raw", "+1M"), blk("resize", "-f", "raw", "b.raw", "+1M"));
        assertEquals(Files.size(dir.resolve("a.raw")), Files.size(dir.resolve("b.raw")));
        assertSame(qemu("resize", "-f", "raw", "a.raw", "10X"), blk("resize", "-f", "raw", "b.raw", "10X"));
    }

    @org.junit.jupiter.params.ParameterizedTest
    @org.junit.jupiter.params.provider.ValueSource(strings = {"off", "falloc", "full", "metadata", "bogus"})
    void resizeWithPreallocationAllocatesWhatQemuImgAllocates(String mode) throws Exception {
        qemu("create", "-f", "raw", "a.raw", "1M");
        qemu("create", "-f", "raw", "b.raw", "1M");
        assertSame(qemu("resize", "-f", "raw", "--preallocation=" + mode, "a.raw", "+3M"),
                blk("resize", "-f", "raw", "--preallocation=" + mode, "b.raw", "+3M"));
        assertEquals(Files.size(dir.resolve("a.raw")), Files.size(dir.resolve("b.raw")));
        assertEquals(Qemu.blocks(dir.resolve("a.raw")), Qemu.blocks(dir.resolve("b.raw")));
        assertSame(qemu("resize", "-f", "raw", "--preallocation=" + mode, "--shrink", "a.raw", "1M"),
                blk("resize", "-f", "raw", "--preallocation=" + mode, "--shrink", "b.raw", "1M"));
    }

    @Test
    void measureOfRawMatchesQemuImg() throws Exception {
        qemu("create", "-f", "raw", "a.raw", "3M");
        assertSame(qemu("measure", "-O", "raw", "a.raw"), blk("measure", "-O", "raw", "a.raw"));
        assertSame(qemu("measure", "--output=json", "-O", "raw", "a.raw"),
                blk("measure", "--output=json", "-O", "raw", "a.raw"));
        assertSame(qemu("measure", "--size", "1G", "-O", "raw"), blk("measure", "--size", "1G", "-O", "raw"));
        assertSame(qemu("measure", "-O", "raw"), blk("measure", "-O", "raw"));
        assertSame(qemu("measure", "--size", "1G", "-O", "raw", "a.raw"),
                blk("measure", "--size", "1G", "-O", "raw", "a.raw"));
    }

    @Test
    void checkOfAFormatWithoutChecksExitsWith63() throws Exception {
        qemu("create", "-f", "raw", "a.raw", "1M");
        assertSame(qemu("check", "-f", "raw", "a.raw"), blk("check", "-f", "raw", "a.raw"));
        assertSame(qemu("check", "-f", "raw", "--output=json", "a.raw"),
                blk("check", "-f", "raw", "--output=json", "a.raw"));
    }

    @Test
    void snapshotListOfRawIsEmptyAndAmendIsRefused() throws Exception {
        qemu("create", "-f", "raw", "a.raw", "1M");
        assertSame(qemu("snapshot", "-l", "-f", "raw", "a.raw"), blk("snapshot", "-l", "-f", "raw", "a.raw"));
        assertSame(qemu("amend", "-f", "raw", "-o", "size=5M", "a.raw"), blk("amend", "-f", "raw", "-o", "size=5M",
                "a.raw"));
    }

    @Test
    void ddCopiesTheSameBytesAsQemuImgDd() throws Exception {
        qemu("create", "-f", "raw", "src.raw", "3M");
        Qemu.ok(dir, "qemu-io", "-f", "raw", "-c", "write -P 3 0 1M", "-c", "write -P 4 2M 100k", "src.raw");
        assertSame(qemu("dd", "-f", "raw", "if=src.raw", "of=q1.raw", "bs=4k", "count=300", "skip=200"),
                blk("dd", "-f", "raw", "if=src.raw", "of=b1.raw", "bs=4k", "count=300", "skip=200"));
        assertEquals(-1, Files.mismatch(dir.resolve("q1.raw"), dir.resolve("b1.raw")));
        assertSame(qemu("dd", "-f", "raw", "if=src.raw", "of=q2.raw"), blk("dd", "-f", "raw", "if=src.raw",
                "of=b2.raw"));
        assertEquals(-1, Files.mismatch(dir.resolve("q2.raw"), dir.resolve("b2.raw")));
        assertSame(qemu("dd", "-f", "raw", "if=src.raw"), blk("dd", "-f", "raw", "if=src.raw"));
    }

    @Test
    void benchReportsLikeQemuImgAndWritesThePattern() throws Exception {
        qemu("create", "-f", "raw", "a.raw", "1M");
        Qemu.Run theirs = qemu("bench", "-f", "raw", "-c", "1000", "-d", "4", "-s", "8k", "a.raw");
        Qemu.Run ours = blk("bench", "-f", "raw", "-c", "1000", "-d", "4", "-s", "8k", "a.raw");
        assertEquals(theirs.out().lines().findFirst(), ours.out().lines().findFirst());
        assertTrue(ours.out().lines().skip(1).findFirst().orElse("").matches("Run completed in \\d+\\.\\d{3} seconds\\."),
                ours.out());
        Qemu.Run w = blk("bench", "-f", "raw", "-w", "--pattern=165", "-c", "64", "-s", "4k", "a.raw");
        assertEquals(0, w.exitCode(), w.err());
        Qemu.ok(dir, "qemu-io", "-f", "raw", "-r", "-c", "read -P 165 0 256k", "a.raw");
    }

    @Test
    void objectsDefineSecretsAndUnknownObjectTypesAreRefused() throws Exception {
        qemu("create", "-f", "raw", "a.raw", "1M");
        Qemu.Run ours = blk("info", "--object", "secret,id=sec0,data=letmein", "-f", "raw", "a.raw");
        assertEquals(0, ours.exitCode(), ours.err());
        Qemu.Run bad = blk("info", "--object", "iothread,id=io0", "-f", "raw", "a.raw");
        assertEquals(1, bad.exitCode());
        assertTrue(bad.err().contains("iothread"), bad.err());
    }
}
