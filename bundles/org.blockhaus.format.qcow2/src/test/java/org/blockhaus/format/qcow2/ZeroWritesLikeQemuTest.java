package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.Image;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.api.io.TempDir;

/**
 * Write-zeroes and discard leave the same mapping as qemu's: the same qemu-io command sequence is
 * run by qemu-io on one copy and through our driver on another, and `qemu-img map --output=json`
 * must agree (host offsets aside, only whether there is one).
 */
class ZeroWritesLikeQemuTest {
    @TempDir
    Path dir;

    static final String[] COMMANDS = {
        "write -P 1 0 1M", "write -z 0 128k", "write -z -u 128k 128k", "write -z 1M 256k",
        "write -z -u 1536k 64k", "discard 2M 64k", "write -z 3M 4k", "write -z 3100k 100k", "discard 512k 64k",
        "write -z 3500k 1k", "write -z -u 640k 4k", "write -z 704k 64k", "discard 800k 96k", "write -P 2 2560k 200k",
        "write -z -u 2560k 128k", "write -z 2700k 64k",
    };

    @ParameterizedTest(name = "{0} extended_l2={1} cluster={2} backing={3}")
    @CsvSource({
        "0.10, off, 64k, false", "0.10, off, 64k, true", "1.1, off, 64k, false", "1.1, off, 64k, true",
        "1.1, on, 64k, false", "1.1, on, 64k, true", "1.1, off, 4k, false", "1.1, on, 32k, true",
    })
    void zeroWritesMapLikeQemu(String compat, String extL2, String cluster, boolean backing) throws Exception {
        Path base = dir.resolve("base.qcow2");
        String opts = "compat=" + compat + ",extended_l2=" + extL2 + ",cluster_size=" + cluster;
        if (backing) {
            Qemu.img("create", "-q", "-f", "qcow2", base.toString(), "4M").ok();
            Qemu.io("-f", "qcow2", "-c", "write -P 9 0 4M", base.toString()).ok();
            opts += ",backing_file=" + base + ",backing_fmt=qcow2";
        }
        Path theirs = dir.resolve("theirs.qcow2");
        Path ours = dir.resolve("ours.qcow2");
        for (Path p : new Path[] {theirs, ours}) {
            Qemu.img("create", "-q", "-f", "qcow2", "-o", opts, p.toString(), "4M").ok();
        }
        List<String> args = new ArrayList<>(List.of("-f", "qcow2"));
        for (String c : COMMANDS) {
            args.add("-c");
            args.add(c);
        }
        args.add(theirs.toString());
        Qemu.io(args.toArray(String[]::new)).ok();
        try (Image i = Fixtures.openRw(Fixtures.core(), ours)) {
            for (String c : COMMANDS) {
                run(i, c);
            }
        }
        assertEquals(0, Qemu.img("check", ours.toString()).exit());
        Qemu.Result same = Qemu.img("compare", theirs.toString(), ours.toString());
        assertEquals(0, same.exit(), same.out() + same.err());
        try (Image i = Fixtures.openRo(Fixtures.core(), theirs)) {
            org.junit.jupiter.api.Assertions.assertArrayEquals(Fixtures.qemuRaw(theirs, dir), Fixtures.readAll(i),
                    "we read qemu's zeroed image as qemu does");
        }
        String a = map(theirs);
        String b = map(ours);
        if (!a.equals(b)) {
            List<String> al = a.lines().toList();
            List<String> bl = b.lines().toList();
            StringBuilder d = new StringBuilder("maps differ (qemu | ours):\n");
            for (int k = 0; k < Math.max(al.size(), bl.size()); k++) {
                String x = k < al.size() ? al.get(k) : "";
                String y = k < bl.size() ? bl.get(k) : "";
                d.append(x.equals(y) ? "  " : "! ").append(x).append("\n").append(x.equals(y) ? "" : "| " + y + "\n");
            }
            throw new AssertionError(d.toString());
        }
    }

    private static String map(Path p) {
        return Qemu.img("map", "--output=json", p.toString()).ok().out().replaceAll("\"offset\": \\d+", "\"offset\": N");
    }

    /** Our side of one qemu-io command: write -P, write -z [-u], discard. */
    private static void run(Image i, String command) throws Exception {
        List<String> w = new ArrayList<>(Arrays.asList(command.split(" ")));
        String op = w.remove(0);
        boolean zero = w.remove("-z");
        boolean unmap = w.remove("-u");
        int pattern = 0;
        if (w.get(0).equals("-P")) {
            pattern = Integer.parseInt(w.get(1));
            w = w.subList(2, w.size());
        }
        long off = size(w.get(0));
        long len = size(w.get(1));
        if (op.equals("discard")) {
            i.discard(off, len);
        } else if (zero) {
            i.writeZeroes(off, len, unmap ? BlockNode.MAY_UNMAP : 0);
        } else {
            byte[] b = new byte[(int) len];
            Arrays.fill(b, (byte) pattern);
            i.write(off, ByteBuffer.wrap(b), 0);
        }
    }

    private static long size(String s) {
        long unit = switch (s.charAt(s.length() - 1)) {
            case 'k' -> 1024;
            case 'M' -> 1 << 20;
            default -> 1;
        };
        return Long.parseLong(unit == 1 ? s : s.substring(0, s.length() - 1)) * unit;
    }
}
