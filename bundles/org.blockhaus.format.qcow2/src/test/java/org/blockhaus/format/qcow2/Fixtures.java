package org.blockhaus.format.qcow2;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.api.spi.CheckResult;
import org.blockhaus.core.BlockCore;
import org.blockhaus.format.raw.RawDriver;
import org.blockhaus.protocol.file.impl.FileDriver;

/** A standalone core with file, raw and qcow2, so tests go through the core's I/O contract. */
final class Fixtures {
    private Fixtures() {
    }

    static BlockCore core() {
        BlockCore core = BlockCore.standalone();
        core.addDriver(new FileDriver());
        core.addDriver(new RawDriver());
        core.addDriver(new Qcow2Driver());
        return core;
    }

    static Image openRw(BlockCore core, Path p) throws BlockException {
        return core.open(p.toString(), Options.of("driver", "qcow2"), OpenMode.READ_WRITE);
    }

    static Image openRo(BlockCore core, Path p) throws BlockException {
        return core.open(p.toString(), Options.of("driver", "qcow2"), OpenMode.READ_ONLY);
    }

    static String create(BlockCore core, Path p, long size, String... opts) throws BlockException {
        Options o = Options.of(opts).with("size", Long.toString(size));
        List<String> summary = new ArrayList<>();
        core.create(p.toString(), "qcow2", o, summary::add, w -> { });
        return summary.isEmpty() ? null : summary.get(0);
    }

    /** Reads a whole image through the core. */
    static byte[] readAll(Image img) throws BlockException {
        long size = img.size();
        byte[] out = new byte[Math.toIntExact(size)];
        int chunk = 1 << 20;
        for (long off = 0; off < size; off += chunk) {
            int n = (int) Math.min(chunk, size - off);
            img.read(off, ByteBuffer.wrap(out, (int) off, n));
        }
        return out;
    }

    /** What qemu reads: `qemu-img convert -O raw`. */
    static byte[] qemuRaw(Path img, Path dir) throws Exception {
        Path raw = dir.resolve(img.getFileName() + ".ref.raw");
        Qemu.img("convert", "-O", "raw", img.toString(), raw.toString()).ok();
        return Files.readAllBytes(raw);
    }

    static byte[] pattern(int len, long seed) {
        byte[] b = new byte[len];
        java.util.Random r = new java.util.Random(seed);
        r.nextBytes(b);
        return b;
    }

    /** st_blocks (512-byte units) of a file, as stat(1) reports them. */
    static String blocks(Path f) throws Exception {
        Process p = new ProcessBuilder("stat", "-c", "%b", f.toString()).start();
        String out = new String(p.getInputStream().readAllBytes()).trim();
        if (p.waitFor() != 0) {
            throw new AssertionError("stat failed for " + f);
        }
        return out;
    }

    /** A file's data and holes as qemu-img map of the file protocol reports them. */
    static String fileMap(Path f) {
        return Qemu.img("map", "-f", "file", "--output=json", f.toString()).ok().out().replaceAll("\\s+", " ").trim();
    }

    /** A count from qemu-img check --output=json (0 where the field is absent). */
    static long checkField(String json, String name) {
        java.util.regex.Matcher m = java.util.regex.Pattern.compile("\"" + name + "\": (\\d+)").matcher(json);
        return m.find() ? Long.parseLong(m.group(1)) : 0;
    }

    /** qemu-img check's counts from --output=json, in the order {@link #checkCounts(CheckResult)} gives ours. */
    static String checkCounts(String json) {
        return "corruptions=" + checkField(json, "corruptions") + " leaks=" + checkField(json, "leaks")
                + " corruptions-fixed=" + checkField(json, "corruptions-fixed") + " leaks-fixed="
                + checkField(json, "leaks-fixed") + " check-errors=" + checkField(json, "check-errors");
    }

    static String checkCounts(CheckResult r) {
        return "corruptions=" + r.corruptions() + " leaks=" + r.leaks() + " corruptions-fixed=" + r.corruptionsFixed()
                + " leaks-fixed=" + r.leaksFixed() + " check-errors=" + r.checkErrors();
    }

    /**
     * qemu-img check's finding lines: its stderr without empty lines and without what qemu's close
     * prints after check ("qcow2_free_clusters failed: ...", freeing a cluster past the end of the
     * file or an old table entry's), which is not a finding.
     */
    static List<String> checkLines(String stderr) {
        List<String> out = new ArrayList<>();
        for (String l : stderr.split("\n")) {
            if (!l.isEmpty() && !l.startsWith("qcow2_free_clusters failed: ")) {
                out.add(l);
            }
        }
        return out;
    }
}
