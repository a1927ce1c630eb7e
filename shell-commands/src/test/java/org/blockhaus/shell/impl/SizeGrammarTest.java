package org.blockhaus.shell.impl;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.file.Files;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;

/**
 * One size grammar for every size a user types (the API's Sizes, QEMU's qemu_strtosz): image
 * sizes, size options and resize, against qemu-img 7.2 on the same text. Blanks, signs, hex with
 * and without its deprecated suffix, fractions and their rounding, the edges of the 63- and 64-bit
 * ranges, and text that is not a size; stdout, stderr, exit code and the file's length must match.
 *
 * <p>Differences on purpose, left out of the comparison: a failed create leaves no file behind
 * (qemu-img leaves an empty one), so lengths are compared where qemu-img succeeded; qemu parses
 * the -o string twice and prints the deprecation warning for a suffixed hexadecimal number twice,
 * we once; sizes of 2^63 and more in -o options qemu takes as negative numbers (2^64 - 1 even as
 * "no size") and fails later in unrelated words, where we refuse them as too large; a size that
 * begins with '-' in the image size position qemu-img's getopt reports under the preceding
 * argument's name, we under its own (shell-commands/README.md).
 */
class SizeGrammarTest extends QemuComparison {
    private static final List<String> SIZES = List.of("0", "512", "1k", "1K", "1b", "1B", " 1k", "\t2M", "+1k", "00012",
            "1.5k", "1.k", "1.3k", "0.1k", "1.0000000001k", "5.5555555555555555555555M", "0.00000000001G",
            "7.999999E", "0x10", "0X1f", "0x10k", "0x1.5k", "0x", "1.5", "1.0", "1.50", "1e3", "1.5e3k", "-0", "-1k",
            "1 ", "k", "1kk", "1q", "", "8E", "9223372036854775807", "9223372036854775808", "18446744073709551615",
            "18446744073709551616", "16E", "1.5E", "0x7fffffffffffffff", "0xffffffffffffffff", "0x10000000000000000");
    /** Sizes qemu's option parser takes as negative numbers (see the class comment). */
    private static final List<String> NEGATIVE_IN_QEMU_OPTIONS = List.of("8E", "9223372036854775808",
            "18446744073709551615", "0xffffffffffffffff");

    @Test
    void imageSizesAsQemuImgCreate() throws Exception {
        List<String> differences = new ArrayList<>();
        for (String size : SIZES) {
            if (size.startsWith("-")) {
                continue; // an option to getopt, not a size (see the class comment)
            }
            compare(differences, "create size [" + size + "]", "q.raw", "b.raw",
                    new String[] {"create", "-f", "raw", "q.raw", size},
                    new String[] {"create", "-f", "raw", "b.raw", size});
        }
        assertEquals(List.of(), differences);
    }

    @Test
    void sizeOptionsAsQemuImgCreate() throws Exception {
        List<String> differences = new ArrayList<>();
        for (String size : SIZES) {
            if (NEGATIVE_IN_QEMU_OPTIONS.contains(size)) {
                continue;
            }
            compare(differences, "-o size [" + size + "]", "q.raw", "b.raw",
                    new String[] {"create", "-f", "raw", "-o", "size=" + size, "q.raw"},
                    new String[] {"create", "-f", "raw", "-o", "size=" + size, "b.raw"});
            compare(differences, "-o cluster_size [" + size + "]", "q.qcow2", "b.qcow2",
                    new String[] {"create", "-f", "qcow2", "-o", "cluster_size=" + size, "q.qcow2", "1M"},
                    new String[] {"create", "-f", "qcow2", "-o", "cluster_size=" + size, "b.qcow2", "1M"});
        }
        assertEquals(List.of(), differences);
    }

    @Test
    void resizeSizesAsQemuImgResize() throws Exception {
        List<String> differences = new ArrayList<>();
        for (String size : SIZES) {
            sh("qemu-img", "create", "-f", "raw", "q.raw", "1M");
            sh("qemu-img", "create", "-f", "raw", "b.raw", "1M");
            String grow = size.startsWith("-") || size.startsWith("+") ? size : "+" + size;
            compare(differences, "resize [" + grow + "]", "q.raw", "b.raw",
                    new String[] {"resize", "-f", "raw", "q.raw", grow},
                    new String[] {"resize", "-f", "raw", "b.raw", grow});
        }
        assertEquals(List.of(), differences);
    }

    /** Runs both, notes any difference in output, exit code or resulting file length, then removes both files. */
    private void compare(List<String> differences, String what, String qFile, String bFile, String[] qArgs,
            String[] bArgs) throws Exception {
        Qemu.Run q = qemu(qArgs);
        Qemu.Run b = blk(bArgs);
        String qOut = q.out().replace(qFile, "IMG");
        String bOut = b.out().replace(bFile, "IMG");
        // qemu parses -o strings twice, so its warning for a suffixed hexadecimal number comes twice
        String qErr = q.err().replace(qFile, "IMG").replaceAll("(?m)^(qemu-img: warning: Using a multiplier suffix[^\n]*\n)\\1", "$1");
        String bErr = b.err().replace(bFile, "IMG");
        long qLen = Files.exists(dir.resolve(qFile)) ? Files.size(dir.resolve(qFile)) : -1;
        long bLen = Files.exists(dir.resolve(bFile)) ? Files.size(dir.resolve(bFile)) : -1;
        boolean lengthsDiffer = q.exitCode() == 0 && qLen != bLen; // a failed create leaves no file here
        if (!qOut.equals(bOut) || !qErr.equals(bErr) || q.exitCode() != b.exitCode() || lengthsDiffer) {
            differences.add(what + "\n  qemu-img: rc=" + q.exitCode() + " len=" + qLen + " out=" + qOut + " err=" + qErr
                    + "\n  blk:      rc=" + b.exitCode() + " len=" + bLen + " out=" + bOut + " err=" + bErr);
        }
        Files.deleteIfExists(dir.resolve(qFile));
        Files.deleteIfExists(dir.resolve(bFile));
    }
}
