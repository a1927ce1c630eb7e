package org.blockhaus.shell.impl;

import java.util.List;
import org.junit.jupiter.api.Test;

/**
 * Bad arguments for every command fail exactly as qemu-img 7.2 fails them: the same message on
 * stderr, the same exit code, and the same files left behind (none, except where qemu-img itself
 * creates one before it fails, as convert does for an invalid -t).
 */
class BadArgumentsTest extends QemuComparison {
    private static final String[][] CASES = {
            {"create"},
            {"create", "-f", "qcow2"},
            {"create", "-f", "qcow2", "x.qcow2"},
            {"create", "-f", "qcow2", "x.qcow2", "1M", "extra"},
            {"create", "-f", "qcow2", "x.qcow2", "-1"},
            {"create", "-f", "qcow2", "--bogus", "x.qcow2", "1M"},
            {"create", "-f", "qcow2", "-o", "cluster_size=3k", "x.qcow2", "1M"},
            {"create", "-f", "qcow2", "-o", "refcount_bits=3", "x.qcow2", "1M"},
            {"create", "-f", "qcow2", "-b", "nosuch.qcow2", "-F", "qcow2", "x.qcow2"},
            {"create", "-f", "qcow2", "-b", "nosuch.qcow2", "-F", "qcow2", "x.qcow2", "1M"},
            {"create", "-f", "qcow2", "-b", "nosuch.qcow2", "-u", "x.qcow2", "1M"},
            {"create", "-f", "qcow2", "-b", "r.raw", "x.qcow2"},
            {"create", "-f", "qcow2", "-b", "r.raw", "-F", "raw", "x.qcow2"},
            {"create", "-f", "qcow2", "-b", "r.raw", "-F", "qcow2", "x.qcow2", "1M"},
            {"create", "-f", "qcow2", "-u", "-b", "c.qcow2", "-F", "raw", "x.qcow2"},
            {"create", "-f", "qcow2", "-F", "raw", "x.qcow2", "1M"},
            {"create", "-f", "qcow2", "-o", "preallocation=metadata", "x.qcow2", "1M"},
            {"create", "-f", "qcow2", "-o", "cluster_size=4k,extended_l2=on", "x.qcow2", "1M"},
            {"create", "-q", "-f", "qcow2", "x.qcow2", "1M"},
            {"create", "-f", "qcow2", "c.qcow2", "1M"},
            {"info"},
            {"info", "-f", "qcow2", "r.raw"},
            {"info", "--backing-chain", "nosuch"},
            {"info", "c.qcow2", "r.raw"},
            {"info", "-z", "c.qcow2"},
            {"check"},
            {"check", "nosuch"},
            {"check", "-f", "raw", "c.qcow2"},
            {"check", "--output=xml", "c.qcow2"},
            {"check", "-r", "leaks", "-U", "c.qcow2"},
            {"check", "-r", "bogus", "c.qcow2"},
            {"compare", "c.qcow2"},
            {"compare", "c.qcow2", "r.raw", "x"},
            {"compare", "-f", "qcow2", "c.qcow2", "r.raw"},
            {"compare", "-F", "raw", "c.qcow2", "r.raw"},
            {"compare", "-f", "raw", "c.qcow2", "r.raw"},
            {"compare", "-U", "c.qcow2", "r.raw"},
            {"compare", "--bogus", "c.qcow2", "r.raw"},
            {"compare", "-s", "c.qcow2", "c.qcow2"},
            {"map"},
            {"map", "nosuch"},
            {"map", "--output=xml", "c.qcow2"},
            {"map", "c.qcow2", "r.raw"},
            {"measure"},
            {"measure", "-O", "qcow2"},
            {"measure", "--size", "1M", "c.qcow2"},
            {"measure", "--size", "x", "-O", "qcow2"},
            {"measure", "-O", "bogus", "--size", "1M"},
            {"measure", "-O", "qcow2", "-o", "cluster_size=3k", "--size", "1M"},
            {"measure", "-O", "qcow2", "-o", "bogus=1", "--size", "1M"},
            {"measure", "--output=xml", "-O", "qcow2", "--size", "1M"},
            {"measure", "-O", "qcow2", "nosuch"},
            {"snapshot"},
            {"snapshot", "c.qcow2"},
            {"snapshot", "-l"},
            {"snapshot", "-c", "s", "-d", "s", "c.qcow2"},
            {"snapshot", "-l", "nosuch"},
            {"snapshot", "-c", "s", "r.raw"},
            {"snapshot", "-d", "s", "r.raw"},
            {"snapshot", "-l", "r.raw"},
            {"snapshot", "-a", "nosuch", "c.qcow2"},
            {"snapshot", "-d", "nosuch", "c.qcow2"},
            {"amend", "-o", "compat=0.10", "r.raw"},
            {"amend", "-o", "compat=0.10", "nosuch"},
            {"amend", "-o", "compat=0.10"},
            {"amend", "c.qcow2"},
            {"amend", "-o", "bogus=1", "c.qcow2"},
            {"commit"},
            {"commit", "c.qcow2"},
            {"commit", "nosuch"},
            {"rebase"},
            {"rebase", "c.qcow2"},
            {"rebase", "-b", "r.raw", "-F", "raw", "nosuch"},
            {"resize"},
            {"resize", "c.qcow2"},
            {"resize", "c.qcow2", "+x"},
            {"resize", "nosuch", "+1M"},
            {"resize", "r.raw", "1M", "2M"},
            {"resize", "c.qcow2", "--", "-100M"},
            {"resize", "--shrink", "c.qcow2", "--", "-100M"},
            {"resize", "--preallocation=bogus", "c.qcow2", "+1M"},
            {"bench"},
            {"bench", "nosuch"},
            {"bench", "-c", "x", "c.qcow2"},
            {"bench", "-d", "x", "c.qcow2"},
            {"bench", "-s", "x", "c.qcow2"},
            {"bench", "-S", "x", "c.qcow2"},
            {"bench", "-o", "x", "c.qcow2"},
            {"bench", "-t", "bogus", "c.qcow2"},
            {"create", "-f", "qcow2", "-o", "size=1M", "x.qcow2", "2M"},
            {"create", "-f", "qcow2", "x.qcow2", "16E"},
            {"resize", "c.qcow2", "16E"},
            {"resize", "c.qcow2", "8E"},
            {"resize", "-f", "raw", "r.raw", "0"},
            {"resize", "--shrink", "-f", "raw", "r.raw", "0"},
            {"resize", "c.qcow2", "+16E"},
            {"measure", "--size", "16E", "-O", "qcow2"},
            {"map", "--max-length=16E", "c.qcow2"},
            {"map", "--start-offset=16E", "c.qcow2"},
            {"convert", "-S", "16E", "-O", "raw", "c.qcow2", "o.raw"},
            {"bench", "-s", "3G", "c.qcow2"},
            {"bench", "-S", "16E", "c.qcow2"},
            {"bench", "-o", "16E", "c.qcow2"},
            {"dd", "if=r.raw", "of=o.raw", "bs=3G"},
            {"dd", "if=r.raw", "of=o.raw", "bs=16E"},
            {"dd", "if=r.raw", "of=o.raw", "count=16E"},
            {"dd", "if=r.raw", "of=o.raw", "skip=16E"},
            {"commit", "-r", "16E", "c.qcow2"},
            {"convert", "-n", "-O", "qcow2", "r.raw", "r.raw", "c.qcow2"},
            {"convert", "-O", "qcow2", "--target-image-opts", "r.raw", "driver=qcow2,file.filename=c.qcow2"},
            {"convert", "-n", "-O", "qcow2", "--target-image-opts", "r.raw", "driver=qcow2,file.filename=c.qcow2"},
            {"convert", "-n", "--target-image-opts", "r.raw", "r.raw", "driver=qcow2,file.filename=c.qcow2"},
            {"bench", "-i", "bogus", "c.qcow2"},
            {"bench", "--pattern=x", "-w", "c.qcow2"},
            {"bench", "--pattern=300", "-w", "c.qcow2"},
            {"bench", "--flush-interval=10", "-c", "10", "c.qcow2"},
            {"bench", "-w", "--flush-interval=10", "-c", "10", "c.qcow2"},
            {"bench", "-c", "10", "-n", "c.qcow2"},
            {"dd"},
            {"dd", "if=r.raw"},
            {"dd", "of=o.raw"},
            {"dd", "if=nosuch", "of=o.raw"},
            {"dd", "if=r.raw", "of=o.raw", "bs=0"},
            {"dd", "if=r.raw", "of=o.raw", "bs=x"},
            {"dd", "if=r.raw", "of=o.raw", "count=x"},
            {"dd", "if=r.raw", "of=o.raw", "skip=x"},
            {"dd", "if=r.raw", "of=o.raw", "foo=1"},
            {"dd", "if=r.raw", "of=o.raw", "skip=1000000"},
            {"dd", "if=r.raw", "of=o.raw", "-O", "bogus"},
            {"dd", "--bogus", "if=r.raw", "of=o.raw"},
            {"dd", "if=c.qcow2", "of=o.raw", "-O"},
            {"convert"},
            {"convert", "c.qcow2"},
            {"convert", "-O", "qcow2", "nosuch", "o.qcow2"},
            {"convert", "-O", "bogus", "c.qcow2", "o.qcow2"},
            {"convert", "-O", "qcow2", "-o", "bogus=1", "c.qcow2", "o.qcow2"},
            {"convert", "-O", "qcow2", "-o", "cluster_size=3k", "c.qcow2", "o.qcow2"},
            {"convert", "-S", "x", "-O", "qcow2", "c.qcow2", "o.qcow2"},
            {"convert", "-S", "100", "-O", "qcow2", "c.qcow2", "o.qcow2"},
            {"convert", "-m", "0", "-O", "qcow2", "c.qcow2", "o.qcow2"},
            {"convert", "-m", "x", "-O", "qcow2", "c.qcow2", "o.qcow2"},
            {"convert", "--target-is-zero", "-O", "qcow2", "c.qcow2", "o.qcow2"},
            {"convert", "-n", "-O", "qcow2", "c.qcow2", "nosuch.qcow2"},
            {"convert", "-n", "-o", "cluster_size=4k", "-O", "qcow2", "c.qcow2", "r.raw"},
            {"convert", "-B", "c.qcow2", "-O", "raw", "c.qcow2", "o.raw"},
            {"convert", "-B", "c.qcow2", "-F", "qcow2", "-O", "raw", "c.qcow2", "o.raw"},
            {"convert", "-O", "qcow2", "-B", "c.qcow2", "c.qcow2", "o.qcow2"},
            {"convert", "-t", "bogus", "-O", "qcow2", "c.qcow2", "o.qcow2"},
            {"convert", "-T", "bogus", "-O", "qcow2", "c.qcow2", "o.qcow2"},
            {"convert", "-l", "x", "-O", "qcow2", "c.qcow2", "o.qcow2"},
            {"convert", "-O", "qcow2", "c.qcow2", "c.qcow2"},
            {"bogus"},
            {"commit", "-t", "bogus", "c.qcow2"},
            {"commit", "-r", "x", "c.qcow2"},
            {"rebase", "-t", "bogus", "-u", "-b", "", "c.qcow2"},
            {"rebase", "-T", "bogus", "-u", "-b", "", "c.qcow2"},
            {"amend", "-t", "bogus", "-o", "compat=1.1", "c.qcow2"},
            {"check", "-T", "bogus", "c.qcow2"},
            {"compare", "-T", "bogus", "c.qcow2", "c.qcow2"},
            {"measure", "-l", "x", "-O", "qcow2", "c.qcow2"},
            {"convert", "-r", "x", "-O", "raw", "c.qcow2", "o.raw"},
            {"convert", "-l", "snapshot.name=x", "-O", "raw", "c.qcow2", "o.raw"},
            {"bench", "-t", "bogus", "c.qcow2"},
            {"create", "-f", "qcow2", "-o", "size=1M", "x.qcow2", "2M"},
            {"create", "-f", "qcow2", "x.qcow2", "16E"},
            {"resize", "c.qcow2", "16E"},
            {"resize", "c.qcow2", "8E"},
            {"resize", "-f", "raw", "r.raw", "0"},
            {"resize", "--shrink", "-f", "raw", "r.raw", "0"},
            {"resize", "c.qcow2", "+16E"},
            {"measure", "--size", "16E", "-O", "qcow2"},
            {"map", "--max-length=16E", "c.qcow2"},
            {"map", "--start-offset=16E", "c.qcow2"},
            {"convert", "-S", "16E", "-O", "raw", "c.qcow2", "o.raw"},
            {"bench", "-s", "3G", "c.qcow2"},
            {"bench", "-S", "16E", "c.qcow2"},
            {"bench", "-o", "16E", "c.qcow2"},
            {"dd", "if=r.raw", "of=o.raw", "bs=3G"},
            {"dd", "if=r.raw", "of=o.raw", "bs=16E"},
            {"dd", "if=r.raw", "of=o.raw", "count=16E"},
            {"dd", "if=r.raw", "of=o.raw", "skip=16E"},
            {"commit", "-r", "16E", "c.qcow2"},
            {"convert", "-n", "-O", "qcow2", "r.raw", "r.raw", "c.qcow2"},
            {"convert", "-O", "qcow2", "--target-image-opts", "r.raw", "driver=qcow2,file.filename=c.qcow2"},
            {"convert", "-n", "-O", "qcow2", "--target-image-opts", "r.raw", "driver=qcow2,file.filename=c.qcow2"},
            {"convert", "-n", "--target-image-opts", "r.raw", "r.raw", "driver=qcow2,file.filename=c.qcow2"},
    };

    @Test
    void everyBadCommandLineFailsAsQemuImgFailsAndLeavesTheSameFiles() throws Exception {
        sh("qemu-img", "create", "-q", "-f", "qcow2", "c.qcow2", "64M");
        sh("qemu-io", "-c", "write -P 1 0 1M", "c.qcow2");
        sh("qemu-img", "create", "-q", "-f", "raw", "r.raw", "64M");
        sh("qemu-io", "-f", "raw", "-c", "write -P 5 0 3M", "-c", "write -P 6 20M 100k", "r.raw");
        for (String[] c : CASES) {
            try {
                assertSameEffect(List.of("c.qcow2", "r.raw"), c);
            } catch (AssertionError e) {
                throw new AssertionError(String.join(" ", c) + ": " + e.getMessage(), e);
            }
        }
    }

    /** qcow2 create options qemu-img refuses, with its messages (and its "Formatting" line first); measure too. */
    @Test
    void badQcow2CreateOptionsFailAsQemuImg() throws Exception {
        sh("qemu-img", "create", "-q", "-f", "qcow2", "c.qcow2", "64M");
        String[] options = {
            "compat=0.10,lazy_refcounts=on", "compat=9", "compat=", "compat=v2,lazy_refcounts=on", "cluster_size=1000",
            "cluster_size=256", "cluster_size=4M", "cluster_size=0", "cluster_size=abc", "compat=0.10,refcount_bits=8",
            "refcount_bits=3", "refcount_bits=128", "refcount_bits=0", "compat=0.10,extended_l2=on",
            "extended_l2=on,cluster_size=8k", "compression_type=lz4", "compat=0.10,compression_type=zstd",
            "preallocation=foo", "lazy_refcounts=maybe", "data_file_raw=on", "compat=0.10,data_file=x.raw",
            "compat=v3", "compat=0.10,refcount_bits=16", "extended_l2=on,cluster_size=2M",
        };
        StringBuilder failures = new StringBuilder();
        for (String o : options) {
            String[] c = {"create", "-f", "qcow2", "-o", o, "x.qcow2", "1M"};
            try {
                assertSameEffect(List.of("c.qcow2"), c);
            } catch (AssertionError e) {
                failures.append(String.join(" ", c)).append(": ").append(e.getMessage()).append("\n");
            }
        }
        for (String o : options) {
            String[] c = {"measure", "-O", "qcow2", "-o", o, "--size", "1M"};
            try {
                assertSameEffect(List.of("c.qcow2"), c);
            } catch (AssertionError e) {
                failures.append(String.join(" ", c)).append(": ").append(e.getMessage()).append("\n");
            }
        }
        if (failures.length() > 0) {
            throw new AssertionError(failures.toString());
        }
    }

    private static final String IMAGE_OPTS = "driver=qcow2,file.driver=file,file.filename=c.qcow2";

    /** --image-opts, --object and -q wherever qemu-img takes them: same output, same images. */
    @Test
    void imageOptsObjectsAndQuietWorkForEveryCommandThatTakesThem() throws Exception {
        sh("qemu-img", "create", "-q", "-f", "qcow2", "c.qcow2", "64M");
        sh("qemu-io", "-c", "write -P 1 0 1M", "c.qcow2");
        String[][] cases = {
            {"check", "--image-opts", IMAGE_OPTS},
            {"map", "--image-opts", IMAGE_OPTS},
            {"info", "--image-opts", IMAGE_OPTS},
            {"measure", "-O", "qcow2", "--image-opts", IMAGE_OPTS},
            {"snapshot", "-l", "--image-opts", IMAGE_OPTS},
            {"amend", "-o", "compat=1.1", "--image-opts", IMAGE_OPTS},
            {"commit", "--image-opts", IMAGE_OPTS},
            {"rebase", "-u", "-b", "", "--image-opts", IMAGE_OPTS},
            {"resize", "--image-opts", IMAGE_OPTS, "+1M"},
            {"dd", "--image-opts", "if=" + IMAGE_OPTS, "of=o.raw"},
            {"compare", "--image-opts", IMAGE_OPTS, IMAGE_OPTS},
            {"convert", "--image-opts", "-O", "raw", IMAGE_OPTS, "o.raw"},
            {"check", "--object", "secret,id=s,data=x", "c.qcow2"},
            {"info", "--object", "secret,id=s", "c.qcow2"},
            {"info", "--object", "secret,id=s,data=x,file=y", "c.qcow2"},
            {"info", "--object", "iothread,id=i", "c.qcow2"},
            {"create", "-q", "-f", "qcow2", "o.qcow2", "1M"},
            {"check", "-q", "--output=json", "c.qcow2"},
            {"compare", "-q", "c.qcow2", "c.qcow2"},
            {"convert", "-q", "-O", "raw", "c.qcow2", "o.raw"},
            {"resize", "-q", "c.qcow2", "+1M"},
            {"snapshot", "-q", "-l", "c.qcow2"},
            {"amend", "-q", "-o", "lazy_refcounts=on", "c.qcow2"},
            {"rebase", "-q", "-u", "-b", "", "c.qcow2"},
            {"commit", "-q", "c.qcow2"},
            {"info", "-q", "c.qcow2"},
            {"map", "-q", "c.qcow2"},
            {"dd", "-q", "if=c.qcow2", "of=o.raw"},
        };
        for (String[] c : cases) {
            try {
                assertSameEffect(List.of("c.qcow2"), c);
            } catch (AssertionError e) {
                throw new AssertionError(String.join(" ", c) + ": " + e.getMessage(), e);
            }
        }
    }
}
