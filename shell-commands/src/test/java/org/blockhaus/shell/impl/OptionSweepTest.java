package org.blockhaus.shell.impl;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * A sweep of option combinations for every subcommand (beyond the other interop tests): each
 * runs qemu-img and ./blk on copies of the same images and must give the same stdout, stderr,
 * exit code and resulting images. Only the program's help text (ours is our own) and bench's
 * timings are normalised. Every difference collected is reported at once.
 */
class OptionSweepTest extends QemuComparison {
    /** The images every case starts from. */
    private static final List<String> FIXTURES = List.of("c.qcow2", "r.raw", "base.qcow2", "top.qcow2", "s.qcow2",
            "odd.raw", "small.raw");

    @BeforeEach
    void images() throws Exception {
        sh("qemu-img", "create", "-q", "-f", "qcow2", "c.qcow2", "64M");
        sh("qemu-io", "-c", "write -P 1 0 1M", "-c", "write -z 2M 64k", "c.qcow2");
        sh("qemu-img", "create", "-q", "-f", "raw", "r.raw", "64M");
        sh("qemu-io", "-f", "raw", "-c", "write -P 5 0 3M", "-c", "write -P 6 20M 100k", "r.raw");
        sh("qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "32M");
        sh("qemu-io", "-c", "write -P 7 0 4M", "base.qcow2");
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2");
        sh("qemu-io", "-c", "write -P 8 1M 1M", "-c", "write -z 3M 512k", "top.qcow2");
        sh("qemu-img", "create", "-q", "-f", "qcow2", "s.qcow2", "16M");
        sh("qemu-io", "-c", "write -P 1 0 1M", "s.qcow2");
        sh("qemu-img", "snapshot", "-c", "first", "s.qcow2");
        sh("qemu-io", "-c", "write -P 2 0 2M", "s.qcow2");
        sh("qemu-img", "snapshot", "-c", "second-with-a-long-name", "s.qcow2");
        sh("qemu-img", "snapshot", "-c", "third", "s.qcow2");
        // qemu-img cannot save VM state: give two snapshots a date, a VM clock, a state size and
        // an instruction count as a running QEMU would, so the table's columns are exercised
        patchSnapshot(dir.resolve("s.qcow2"), 0, 1_700_000_000L, 3_723_456_000_000L, 123_456_789L, 42);
        patchSnapshot(dir.resolve("s.qcow2"), 2, 86_400L * 365 * 40, 90_061_001_000_000L, 5L << 30, -1);
        sh("truncate", "-s", "1000000", "odd.raw");
        sh("qemu-io", "-f", "raw", "-c", "write -P 9 5000 3", "odd.raw");
        sh("qemu-img", "create", "-q", "-f", "raw", "small.raw", "1M");
    }

    private static final String[][] INFO = {
        {"info", "-U", "c.qcow2"},
        {"info", "--output=json", "-U", "top.qcow2"},
        {"info", "--backing-chain", "top.qcow2"},
        {"info", "--backing-chain", "--output=json", "top.qcow2"},
        {"info", "--backing-chain", "-f", "qcow2", "top.qcow2"},
        {"info", "-f", "raw", "c.qcow2"},
        {"info", "s.qcow2"},
        {"info", "--output=json", "s.qcow2"},
        {"info", "--force-share", "--output", "json", "odd.raw"},
        {"info", "--out=json", "odd.raw"},
        {"info", "--image-opts", "driver=raw,offset=4096,file.filename=odd.raw"},
        {"info", "--output=json", "--image-opts", "driver=raw,size=4096,offset=512,file.filename=odd.raw"},
        {"info", "--image-opts", "driver=qcow2,file.driver=raw,file.file.filename=top.qcow2"},
        {"info", "--image-opts", "driver=qcow2,l2-cache-size=1M,cache.direct=off,file.filename=top.qcow2"},
        {"info", "--image-opts", "file.filename=top.qcow2"},
        {"info", "--backing-chain", "-U", "top.qcow2", "extra"},
        {"info", "--force-share=1", "c.qcow2"},
        {"info", "-f", "-h"},
        {"info", "-Z", "-h", "c.qcow2"},
    };

    private static final String[][] MAP = {
        {"map", "--output=json", "top.qcow2"},
        {"map", "--start-offset=1000", "--max-length=3000000", "top.qcow2"},
        {"map", "--output=json", "--start-offset=1000", "--max-length=3000000", "top.qcow2"},
        {"map", "--start-offset=100M", "c.qcow2"},
        {"map", "--max-length=0", "c.qcow2"},
        {"map", "--output=json", "--start-offset=65537", "--max-length=1", "c.qcow2"},
        {"map", "--start-offset=x", "c.qcow2"},
        {"map", "--max-length=-1", "c.qcow2"},
        {"map", "--output=json", "odd.raw"},
        {"map", "--start-offset", "1M", "r.raw"},
        {"map", "-U", "--output=json", "s.qcow2"},
        {"map", "--start-offset=1k", "--max-length=1k", "odd.raw"},
        {"map", "--image-opts", "driver=qcow2,file.filename=top.qcow2"},
        {"map", "--start-offset=0x10000", "--max-length=0x20000", "c.qcow2"},
    };

    private static final String[][] COMPARE = {
        {"compare", "-s", "c.qcow2", "r.raw"},
        {"compare", "-s", "top.qcow2", "base.qcow2"},
        {"compare", "top.qcow2", "base.qcow2"},
        {"compare", "small.raw", "odd.raw"},
        {"compare", "-s", "small.raw", "odd.raw"},
        {"compare", "odd.raw", "small.raw"},
        {"compare", "-s", "odd.raw", "small.raw"},
        {"compare", "-f", "raw", "-F", "raw", "small.raw", "odd.raw"},
        {"compare", "-s", "-q", "c.qcow2", "c.qcow2"},
        {"compare", "-f", "qcow2", "-F", "qcow2", "top.qcow2", "s.qcow2"},
        {"compare", "-U", "-s", "base.qcow2", "base.qcow2"},
        {"compare", "s.qcow2", "c.qcow2"},
        {"compare", "--image-opts", "driver=raw,offset=65536,file.filename=r.raw",
            "driver=raw,size=983040,file.filename=r.raw"},
    };

    private static final String[][] CONVERT = {
        {"convert", "-S", "512", "-O", "qcow2", "c.qcow2", "o.qcow2"},
        {"convert", "-S", "513", "-O", "qcow2", "c.qcow2", "o.qcow2"},
        {"convert", "-S", "-1", "-O", "raw", "c.qcow2", "o.raw"},
        {"convert", "-m", "16", "-O", "raw", "c.qcow2", "o.raw"},
        {"convert", "-m", "17", "-O", "raw", "c.qcow2", "o.raw"},
        {"convert", "-m", "-1", "-O", "raw", "c.qcow2", "o.raw"},
        {"convert", "-t", "writeback", "-T", "none", "-O", "raw", "c.qcow2", "o.raw"},
        {"convert", "-t", "directsync", "-O", "qcow2", "c.qcow2", "o.qcow2"},
        {"convert", "-T", "unsafe", "-O", "raw", "c.qcow2", "o.raw"},
        {"convert", "-n", "--target-is-zero", "-O", "raw", "c.qcow2", "r.raw"},
        {"convert", "-B", "base.qcow2", "-O", "qcow2", "top.qcow2", "o.qcow2"},
        {"convert", "-O", "qcow2", "-B", "base.qcow2", "-F", "raw", "top.qcow2", "o.qcow2"},
        {"convert", "-c", "-O", "raw", "c.qcow2", "o.raw"},
        {"convert", "-O", "raw", "small.raw", "odd.raw", "o.raw"},
        {"convert", "-O", "raw", "-o", "preallocation=full", "small.raw", "o.raw"},
        {"convert", "-C", "-O", "raw", "c.qcow2", "o.raw"},
        {"convert", "-O", "raw", "-n", "c.qcow2", "odd.raw"},
        {"convert", "-o", "", "-O", "raw", "c.qcow2", "o.raw"},
        {"convert", "--bitmaps", "-O", "qcow2", "c.qcow2", "o.qcow2"},
        {"convert", "--image-opts", "driver=qcow2,file.filename=top.qcow2,l2-cache-size=1M", "-O", "raw", "o.raw"},
    };

    private static final String[][] CREATE = {
        {"create", "-f", "qcow2", "-u", "-b", "nosuch.qcow2", "-F", "qcow2", "x.qcow2"},
        {"create", "-f", "qcow2", "-u", "-b", "nosuch.qcow2", "x.qcow2"},
        {"create", "-f", "qcow2", "-u", "-b", "base.qcow2", "x.qcow2"},
        {"create", "-f", "qcow2", "-u", "-b", "base.qcow2", "-F", "qcow2", "x.qcow2"},
        {"create", "-f", "qcow2", "-u", "-b", "base.qcow2", "-F", "qcow2", "x.qcow2", "8M"},
        {"create", "-f", "qcow2", "-b", "nosuch.qcow2", "-F", "qcow2", "x.qcow2"},
        {"create", "-f", "qcow2", "-b", "x.qcow2", "-F", "qcow2", "x.qcow2", "1M"},
        {"create", "-f", "qcow2", "-b", "", "-F", "qcow2", "x.qcow2", "1M"},
        {"create", "-f", "raw", "-u", "-b", "base.qcow2", "-F", "qcow2", "x.raw", "1M"},
        {"create", "-f", "qcow2", "x.qcow2", "1.5M"},
        {"create", "-f", "qcow2", "x.qcow2", "1b"},
        {"create", "-f", "qcow2", "-o", "cluster_size=256", "x.qcow2", "1M"},
        {"create", "-f", "qcow2", "-o", "", "x.qcow2", "1M"},
        {"create", "-f", "qcow2", "-o", ",size=1M", "x.qcow2"},
        {"create", "-f", "qcow2", "-o", "size=1M,", "x.qcow2"},
        {"create", "-f", "qcow2", "-o", "?", "x.qcow2"},
        {"create", "-f", "qcow2", "-q", "-u", "-b", "base.qcow2", "-F", "qcow2", "x.qcow2", "1M"},
        {"create", "-f", "qcow2", "-b", "top.qcow2", "-F", "qcow2", "x.qcow2"},
        {"create", "-Z", "-h"},
        {"create", "-h", "-Z"},
        {"create", "-o", "-h", "x.raw", "1M"},
        {"create", "-f", "raw", "x.raw", "0x1b"},
        {"create", "-f", "raw", "x.raw", "0X1E"},
        {"create", "-f", "raw", "x.raw", "0x1.5"},
        {"create", "-f", "raw", "x.raw", "0xffffffffffffffffff"},
        {"create", "-f", "qcow2", "-o", "cluster_size=0x1000", "x.qcow2", "0x100000"},
        {"create", "-f", "raw", "x.raw", " 1M"},
        {"create", "-f", "raw", "x.raw", "1M "},
        {"create", "-f", "raw", "-o", "size=1M ", "x.raw"},
    };

    private static final String[][] AMEND = {
        {"amend", "-f", "qcow2", "-o", "help", "c.qcow2"},
        {"amend", "-o", "help", "c.qcow2"},
        {"amend", "-f", "qcow2", "-o", "help", "nosuch.qcow2"},
        {"amend", "-f", "raw", "-o", "help", "nosuch.qcow2"},
        {"amend", "-f", "bogus", "-o", "help", "c.qcow2"},
        {"amend", "-o", "help", "r.raw"},
        {"amend", "-o", "help,compat=0.10", "c.qcow2"},
        {"amend", "-o", "lazy_refcounts=on,compat=0.10", "c.qcow2"},
        {"amend", "-o", "refcount_bits=8", "c.qcow2"},
        {"amend", "-o", "size=32M", "c.qcow2"},
        {"amend", "-o", "cluster_size=4k", "c.qcow2"},
        {"amend", "-o", "preallocation=off", "c.qcow2"},
        {"amend", "-o", "encrypt.format=luks", "c.qcow2"},
        {"amend", "-o", "encrypt.new-secret=s", "c.qcow2"},
        {"amend", "-o", "data_file=x", "c.qcow2"},
        {"amend", "-o", "data_file_raw=on", "c.qcow2"},
        {"amend", "-o", "data_file_raw=off", "c.qcow2"},
        {"amend", "-o", "backing_file=base.qcow2", "top.qcow2"},
        {"amend", "-o", "backing_fmt=raw", "top.qcow2"},
        {"amend", "-o", "backing_file=base.qcow2,backing_fmt=qcow2", "top.qcow2"},
        {"amend", "-o", "", "c.qcow2"},
        {"amend", "-o", ",", "c.qcow2"},
    };

    private static final String[][] MEASURE = {
        {"measure", "-q", "--size", "1M", "-O", "qcow2"},
        {"measure", "--bogus"},
        {"measure", "-O"},
        {"measure", "--size"},
        {"measure", "--size=1M", "--output"},
        {"measure", "--force-share=1", "--size", "1M"},
        {"measure", "--out=json", "--size", "1M"},
        {"measure", "-O", "qcow2", "-o", "cluster_size=4k", "top.qcow2"},
        {"measure", "-O", "qcow2", "-o", "preallocation=metadata", "--size", "10M"},
        {"measure", "-O", "qcow2", "-o", "extended_l2=on,cluster_size=128k", "--size", "1G"},
        {"measure", "-U", "-O", "qcow2", "c.qcow2"},
        {"measure", "-O", "qcow2", "--size", "0"},
        {"measure", "-o", "", "--size", "1M"},
        {"measure", "-O", "qcow2", "--image-opts", "driver=qcow2,file.filename=top.qcow2"},
        {"measure", "-O", "qcow2", "--size", "0x40000000"},
    };

    private static final String[][] RESIZE = {
        {"resize", "--shrink", "c.qcow2", "32M"},
        {"resize", "-f", "raw", "odd.raw", "1000001"},
        {"resize", "-f", "raw", "--shrink", "odd.raw", "--", "-1"},
        {"resize", "-f", "raw", "odd.raw", "--", "-1"},
        {"resize", "--preallocation=falloc", "-f", "raw", "small.raw", "2M"},
        {"resize", "--preallocation=metadata", "c.qcow2", "+1M"},
        {"resize", "c.qcow2", "+0"},
        {"resize", "-f", "raw", "small.raw", "1.5M"},
        {"resize", "c.qcow2", "1000"},
        {"resize", "top.qcow2", "+1M"},
        {"resize", "-Z"},
        {"resize", "-f"},
        {"resize", "c.qcow2", "-f"},
        {"resize", "c.qcow2", "1M", "--shrink"},
        {"resize", "c.qcow2", "c.qcow2", "1M"},
        {"resize", "-f", "raw", "small.raw", "+0x100000"},
    };

    private static final String[][] DD = {
        {"dd", "if=odd.raw", "of=o.raw", "bs=1000"},
        {"dd", "if=odd.raw", "of=o.raw", "bs=1k", "count=3", "skip=4"},
        {"dd", "if=odd.raw", "of=o.raw", "bs=1k", "count=3", "skip=2"},
        {"dd", "if=c.qcow2", "of=o.raw", "bs=64k", "count=20"},
        {"dd", "-O", "qcow2", "if=c.qcow2", "of=o.qcow2", "bs=1M", "count=2"},
        {"dd", "if=odd.raw", "of=o.raw", "bs=999999"},
        {"dd", "if=odd.raw", "of=o.raw", "skip=1954"},
        {"dd", "if=odd.raw", "of=o.raw", "count=0"},
        {"dd", "if=odd.raw", "of=o.raw", "bs=1", "count=5003"},
        {"dd", "if=top.qcow2", "of=o.raw", "bs=1M", "skip=1"},
        {"dd", "-f", "raw", "-O", "raw", "if=small.raw", "of=o.raw", "bs=4k", "count=1", "skip=255"},
        {"dd", "if=odd.raw", "of=o.raw", "of=p.raw"},
        {"dd", "if=odd.raw", "of=c.qcow2"},
        {"dd", "if=odd.raw", "of=o.raw", "bs=1", "-h"},
    };

    private static final String[][] REBASE = {
        {"rebase", "-u", "-b", "", "top.qcow2"},
        {"rebase", "-b", "", "-p", "top.qcow2"},
        {"rebase", "-u", "-b", "nosuch.qcow2", "top.qcow2"},
        {"rebase", "-b", "nosuch.qcow2", "-F", "qcow2", "top.qcow2"},
        {"rebase", "-b", "c.qcow2", "-F", "qcow2", "top.qcow2"},
        {"rebase", "-b", "c.qcow2", "top.qcow2"},
        {"rebase", "-u", "-F", "qcow2", "top.qcow2"},
        {"rebase", "-u", "top.qcow2"},
        {"rebase", "-c", "-b", "", "top.qcow2"},
        {"rebase", "-b", "base.qcow2", "-F", "raw", "top.qcow2"},
        {"rebase", "-f", "raw", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"},
        {"rebase", "--image-opts", "-b", "", "driver=qcow2,file.filename=top.qcow2"},
    };

    private static final String[][] COMMIT = {
        {"commit", "-b", "base.qcow2", "top.qcow2"},
        {"commit", "-b", "c.qcow2", "top.qcow2"},
        {"commit", "-b", "nosuch.qcow2", "top.qcow2"},
        {"commit", "-q", "-d", "top.qcow2"},
        {"commit", "-t", "none", "top.qcow2"},
        {"commit", "-f", "qcow2", "-b", "base.qcow2", "-d", "top.qcow2"},
        {"commit", "base.qcow2"},
        {"commit", "-f", "raw", "r.raw"},
        {"commit", "-r", "1M", "top.qcow2"},
        {"commit", "top.qcow2", "extra"},
        {"commit", "--image-opts", "driver=qcow2,file.filename=top.qcow2"},
        {"commit", "-d", "--image-opts", "driver=qcow2,file.filename=top.qcow2,cache.direct=off"},
    };

    private static final String[][] SNAPSHOT = {
        {"snapshot", "-l", "s.qcow2"},
        {"snapshot", "-l", "-U", "s.qcow2"},
        {"snapshot", "-c", "new", "s.qcow2"},
        {"snapshot", "-c", "first", "s.qcow2"},
        {"snapshot", "-d", "second-with-a-long-name", "s.qcow2"},
        {"snapshot", "-d", "2", "s.qcow2"},
        {"snapshot", "-a", "1", "s.qcow2"},
        {"snapshot", "-a", "third", "s.qcow2"},
        {"snapshot", "-l", "c.qcow2"},
        {"snapshot", "-l", "-a", "first", "s.qcow2"},
        {"snapshot", "-c", "", "c.qcow2"},
        {"snapshot", "-l", "--image-opts", "driver=qcow2,file.filename=s.qcow2"},
    };

    private static final String[][] BENCH = {
        {"bench", "-c", "10", "-d", "2", "-s", "4k", "c.qcow2"},
        {"bench", "-c", "10", "-w", "--pattern=0x12", "c.qcow2"},
        {"bench", "-c", "10", "-w", "--flush-interval=64", "--no-drain", "c.qcow2"},
        {"bench", "-c", "10", "--no-drain", "c.qcow2"},
        {"bench", "-c", "10", "-w", "--no-drain", "c.qcow2"},
        {"bench", "-c", "-1", "c.qcow2"},
        {"bench", "-c", "10", "-i", "native", "c.qcow2"},
        {"bench", "-c", "10", "-i", "native", "-t", "directsync", "c.qcow2"},
        {"bench", "-c", "10", "-n", "-i", "threads", "c.qcow2"},
        {"bench", "-c", "10", "-S", "0", "-s", "8k", "c.qcow2"},
        {"bench", "-c", "10", "-w", "-U", "c.qcow2"},
        {"bench", "-c", "10", "-w", "--force-share", "c.qcow2"},
        {"bench", "-c", "10", "--no-drain", "--flush-interval=64", "c.qcow2"},
        {"bench", "-c", "10", "-o", "1000", "-f", "raw", "r.raw"},
    };

    @Test
    void everyOptionCombinationOfTheSweepBehavesAsQemuImg() throws Exception {
        List<String> differences = new ArrayList<>();
        for (String[][] group : new String[][][] {INFO, MAP, COMPARE, CONVERT, CREATE, AMEND, MEASURE, RESIZE, DD,
                REBASE, COMMIT, SNAPSHOT, BENCH}) {
            for (String[] c : group) {
                Twin t = twin(FIXTURES, c);
                try {
                    assertSame(normalise(t.theirs()), normalise(t.ours()));
                    assertSameImages(t);
                } catch (AssertionError e) {
                    differences.add(String.join(" ", c) + ": " + e.getMessage());
                }
            }
        }
        assertEquals(List.of(), differences);
    }

    private static final Pattern BENCH_TIME = Pattern.compile("Run completed in [0-9.]+ seconds\\.");

    /** The help text is each tool's own; bench's timings vary from run to run. */
    private static Qemu.Run normalise(Qemu.Run r) {
        String out = r.out();
        if (out.startsWith("qemu-img version") || out.startsWith("blk (Blockhaus)")) {
            out = "<the whole help>\n";
        }
        out = BENCH_TIME.matcher(out).replaceAll("Run completed in <t> seconds.");
        return new Qemu.Run(r.exitCode(), out, r.err());
    }

    /**
     * --image-opts with relative names: the backing file is found next to the image, as qemu
     * resolves it, for every command that opens the chain. Both tools run with the same relative
     * names (from the JVM's working directory, which a JVM cannot change).
     */
    @Test
    void imageOptsWithRelativeNamesFindTheBackingFileNextToTheImage() throws Exception {
        Path cwd = Path.of("").toAbsolutePath();
        String rel = cwd.relativize(dir).toString();
        String top = "driver=qcow2,file.filename=" + rel + "/top.qcow2";
        String[][] cases = {
            {"info", "--image-opts", top},
            {"info", "--backing-chain", "--image-opts", top},
            {"info", "--output=json", "--image-opts", top + ",l2-cache-size=1M"},
            {"info", "--image-opts", "file.filename=" + rel + "/top.qcow2"},
            {"map", "--image-opts", top},
            {"map", "--output=json", "--image-opts", "driver=qcow2,file.driver=raw,file.file.filename=" + rel
                + "/top.qcow2"},
            {"compare", "--image-opts", top, "driver=qcow2,file.filename=" + rel + "/base.qcow2"},
            {"convert", "--image-opts", top, "-O", "raw", rel + "/o.raw"},
            {"rebase", "--image-opts", "-b", "", top},
            {"commit", "--image-opts", top},
            {"commit", "-d", "--image-opts", top + ",cache.direct=off"},
            {"info", "--image-opts", "driver=file,filename=" + rel + "/top.qcow2"},
            {"info", "--output=json", rel + "/top.qcow2"},
        };
        sh("mkdir", "pristine");
        sh("cp", "top.qcow2", "base.qcow2", "pristine/");
        for (String[] c : cases) {
            String[] q = new String[c.length + 1];
            q[0] = "qemu-img";
            System.arraycopy(c, 0, q, 1, c.length);
            restore();
            Qemu.Run theirs = Qemu.run(cwd, q);
            restore();
            Qemu.Run ours = blkRelative(c);
            try {
                assertSame(strip(theirs, rel), strip(ours, rel));
                if (c[0].equals("commit")) {
                    assertEquals(0, Qemu.run(dir, "qemu-img", "compare", "base.qcow2", "pristine/top.qcow2")
                            .exitCode(), "the base holds the top's content");
                }
                if (c[0].equals("convert")) {
                    assertEquals(0, Qemu.run(dir, "qemu-img", "compare", "-f", "raw", "o.raw", "top.qcow2")
                            .exitCode(), "content converted");
                }
            } catch (AssertionError e) {
                throw new AssertionError(String.join(" ", c) + ": " + e.getMessage(), e);
            }
        }
    }

    /** The chain as it was before a case ran, without what a case created. */
    private void restore() throws Exception {
        sh("cp", "pristine/top.qcow2", "pristine/base.qcow2", ".");
        sh("rm", "-f", "o.raw");
    }

    /**
     * commit -p counts committed bytes as qemu-img's mirror job does. How often qemu-img redraws
     * the same value, and in which order concurrent copies finish, varies from run to run; the
     * values it can show do not. One copy operation: exactly qemu-img's sequence. Two (1 MiB of
     * data, then 512 KiB of zeroes): ours shows them in order, qemu-img only values from the same
     * set.
     */
    @Test
    void commitProgressCountsCommittedBytesAsQemuImg() throws Exception {
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "one.qcow2");
        sh("qemu-io", "-c", "write -P 3 1M 512k", "one.qcow2");
        for (int run = 0; run < 3; run++) {
            Twin t = twin(List.of("base.qcow2", "one.qcow2"), "commit", "-p", "one.qcow2");
            assertEquals(List.of("0.00", "100.00"), progressValues(t.theirs().out()), t.theirs().out());
            assertEquals(List.of("0.00", "100.00"), progressValues(t.ours().out()), t.ours().out());
            assertSameImages(t);
        }
        Set<String> possible = Set.of("0.00", "33.33", "66.67", "100.00");
        for (int run = 0; run < 3; run++) {
            Twin t = twin(List.of("base.qcow2", "top.qcow2"), "commit", "-p", "top.qcow2");
            List<String> theirs = progressValues(t.theirs().out());
            assertTrue(possible.containsAll(theirs) && theirs.getFirst().equals("0.00")
                    && theirs.getLast().equals("100.00"), t.theirs().out());
            assertEquals(List.of("0.00", "66.67", "100.00"), progressValues(t.ours().out()), t.ours().out());
            assertEquals(t.theirs().out().lines().toList().getLast(), t.ours().out().lines().toList().getLast());
            assertSameImages(t, false);
        }
    }

    /**
     * create -u and rebase -u record a backing file that does not exist: the same output, and
     * the same image as qemu-img's (which qemu-img can only describe without its backing file).
     */
    @Test
    void unsafeModesRecordAMissingBackingFileAsQemuImg() throws Exception {
        String[][] cases = {
            {"create", "-f", "qcow2", "-u", "-b", "nosuch.qcow2", "-F", "qcow2", "x.qcow2", "1M"},
            {"create", "-f", "qcow2", "-u", "-o", "backing_file=nosuch,backing_fmt=qcow2", "x.qcow2", "1M"},
            {"rebase", "-u", "-b", "nosuch.qcow2", "-F", "qcow2", "top.qcow2"},
        };
        for (String[] c : cases) {
            Twin t = twin(FIXTURES, c);
            assertSame(t.theirs(), t.ours());
            String image = c[c.length - 1].endsWith(".qcow2") ? c[c.length - 1] : c[c.length - 2];
            assertEquals(describeAlone(t.q(), image), describeAlone(t.b(), image), String.join(" ", c));
            // check needs the backing file too: both fail alike
            assertEquals(relative(t.q(), Qemu.run(t.q(), "qemu-img", "check", "-U", image).err()),
                    relative(t.b(), Qemu.run(t.b(), "qemu-img", "check", "-U", image).err()), "check");
        }
    }

    private static String describeAlone(Path base, String image) throws Exception {
        Qemu.Run r = qemuIn(base, "info", "-U", "--output=json", image);
        return r.out().replaceAll("\"actual-size\": \\d+", "") + r.err();
    }

    /**
     * compare -s holds the whole block status against each other, as qemu-img does: a fully
     * allocated copy of a raw image differs from the sparse original (its data runs to the end),
     * a zero cluster differs from a hole in a raw file, a preallocated qcow2 from an empty one.
     */
    @Test
    void strictCompareHoldsTheWholeBlockStatusAsQemuImg() throws Exception {
        sh("cp", "--sparse=never", "r.raw", "full.raw");
        sh("cp", "--sparse=never", "c.qcow2", "cfull.qcow2");
        sh("qemu-img", "create", "-q", "-f", "raw", "e.raw", "64M");
        sh("qemu-img", "create", "-q", "-f", "qcow2", "e.qcow2", "64M");
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-o", "preallocation=full", "pf.qcow2", "64M");
        sh("qemu-img", "convert", "-O", "raw", "c.qcow2", "cr.raw");
        List<String> files = List.of("c.qcow2", "r.raw", "full.raw", "cfull.qcow2", "e.raw", "e.qcow2", "pf.qcow2",
                "cr.raw");
        String[][] pairs = {{"c.qcow2", "r.raw"}, {"c.qcow2", "full.raw"}, {"full.raw", "r.raw"},
            {"cfull.qcow2", "c.qcow2"}, {"e.raw", "e.qcow2"}, {"e.raw", "full.raw"}, {"pf.qcow2", "e.qcow2"},
            {"pf.qcow2", "e.raw"}, {"cr.raw", "c.qcow2"}, {"full.raw", "full.raw"}};
        for (String[] p : pairs) {
            Twin t = twin(files, "compare", "-s", p[0], p[1]);
            assertSame(t.theirs(), t.ours());
        }
    }

    /** The values a progress bar showed, each run of redraws of one value counted once. */
    private static List<String> progressValues(String out) {
        List<String> values = new ArrayList<>();
        Matcher m = Pattern.compile("\\((\\d+\\.\\d\\d)/100%\\)").matcher(out);
        while (m.find()) {
            if (values.isEmpty() || !values.getLast().equals(m.group(1))) {
                values.add(m.group(1));
            }
        }
        return values;
    }

    private Qemu.Run blkRelative(String... args) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        int rc = cli.run(args, System.in, new PrintStream(out, true, StandardCharsets.UTF_8),
                new PrintStream(err, true, StandardCharsets.UTF_8));
        return new Qemu.Run(rc, out.toString(StandardCharsets.UTF_8), err.toString(StandardCharsets.UTF_8));
    }

    private static Qemu.Run strip(Qemu.Run r, String rel) {
        return new Qemu.Run(r.exitCode(), r.out().replace(rel + "/", "").replaceAll("\"actual-size\": \\d+", "N"),
                r.err().replace(rel + "/", ""));
    }

    /**
     * Gives snapshot {@code index} of a qcow2 image the facts a running QEMU records (the table
     * entry keeps its length, so the image stays consistent): date, VM clock, VM state size
     * (the 64-bit field of the extra data) and instruction count (-1: none).
     */
    private static void patchSnapshot(Path image, int index, long dateSec, long vmClockNs, long vmStateSize,
            long icount) throws Exception {
        try (FileChannel ch = FileChannel.open(image, StandardOpenOption.READ, StandardOpenOption.WRITE)) {
            ByteBuffer header = ByteBuffer.allocate(72);
            ch.read(header, 0);
            long offset = header.getLong(64);
            for (int i = 0; i <= index; i++) {
                ByteBuffer e = ByteBuffer.allocate(40);
                ch.read(e, offset);
                int idSize = Short.toUnsignedInt(e.getShort(12));
                int nameSize = Short.toUnsignedInt(e.getShort(14));
                int extra = e.getInt(36);
                if (i == index) {
                    e.putInt(16, (int) dateSec).putInt(20, 0).putLong(24, vmClockNs);
                    e.putInt(32, (int) Math.min(vmStateSize, 0xffffffffL));
                    ch.write(e.position(0), offset);
                    ByteBuffer x = ByteBuffer.allocate(extra);
                    ch.read(x, offset + 40);
                    x.putLong(0, vmStateSize);
                    if (extra >= 24) {
                        x.putLong(16, icount);
                    }
                    ch.write(x.position(0), offset + 40);
                    return;
                }
                long len = 40L + extra + idSize + nameSize;
                offset += (len + 7) & ~7L;
            }
        }
    }
}
