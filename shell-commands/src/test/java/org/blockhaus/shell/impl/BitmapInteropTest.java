package org.blockhaus.shell.impl;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.file.Path;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;

/**
 * qemu-img bitmap and convert --bitmaps: the same commands on copies of the same images give the
 * same output, exit code, info (flags, names, granularities) and the same bits, read from both
 * results by qemu-nbd -B and nbdinfo.
 */
class BitmapInteropTest extends QemuComparison {

    /** What qemu says a bitmap holds, "offset+length" per dirty range. */
    private static String dirty(Path img, String bitmap) throws Exception {
        Qemu.Run r = Qemu.run(img.getParent(), "nbdinfo", "--json", "--map=qemu:dirty-bitmap:" + bitmap, "--", "[",
                "qemu-nbd", "-r", "-f", "qcow2", "-B", bitmap, img.toString(), "]");
        if (r.exitCode() != 0) {
            return "error: " + r.err().lines().filter(l -> l.startsWith("qemu-nbd")).findFirst().orElse(r.err());
        }
        StringBuilder sb = new StringBuilder();
        Matcher m = Pattern.compile("\"offset\": (\\d+), \"length\": (\\d+), \"type\": 1").matcher(r.out());
        while (m.find()) {
            sb.append(m.group(1)).append('+').append(m.group(2)).append(' ');
        }
        return sb.toString();
    }

    private void assertSameBits(Twin t, String file, String... bitmaps) throws Exception {
        for (String b : bitmaps) {
            assertEquals(dirty(t.q().resolve(file), b), dirty(t.b().resolve(file), b), "bitmap " + b + " of " + file);
        }
    }

    /** An image qemu made, with two bitmaps and writes seen by one of them. */
    private void image(String name) throws Exception {
        sh("qemu-img", "create", "-q", "-f", "qcow2", name, "16M");
        sh("qemu-img", "bitmap", "--add", "-g", "4k", name, "a");
        sh("qemu-img", "bitmap", "--add", "--disable", name, "off");
        sh("qemu-io", "-f", "qcow2", "-c", "write 1M 8k", "-c", "write 10M 1k", name);
    }

    @Test
    void bitmapCommandsAsQemuImg() throws Exception {
        image("d.qcow2");
        String[][] cases = {
            {"bitmap", "--add", "d.qcow2", "new"},
            {"bitmap", "--add", "-g", "512", "--disable", "d.qcow2", "n512"},
            {"bitmap", "--add", "-g", "1M", "--add", "d.qcow2", "twice"},
            {"bitmap", "--add", "-g", "0", "d.qcow2", "dflt"},
            {"bitmap", "--add", "d.qcow2", "a"},
            {"bitmap", "--remove", "d.qcow2", "a"},
            {"bitmap", "--remove", "d.qcow2", "nope"},
            {"bitmap", "--clear", "d.qcow2", "a"},
            {"bitmap", "--disable", "d.qcow2", "a"},
            {"bitmap", "--enable", "d.qcow2", "off"},
            {"bitmap", "--disable", "--add", "d.qcow2", "p"},
            {"bitmap", "--merge", "a", "d.qcow2", "off"},
            {"bitmap", "--add", "--merge", "a", "d.qcow2", "copy"},
            {"bitmap", "--merge", "nope", "d.qcow2", "off"},
            {"bitmap", "--add", "-g", "1000", "d.qcow2", "z"},
            {"bitmap", "--add", "-g", "abc", "d.qcow2", "z"},
            {"bitmap", "--remove", "-g", "4k", "d.qcow2", "a"},
            {"bitmap", "--merge", "a", "-F", "qcow2", "d.qcow2", "off"},
            {"bitmap", "--clear", "-b", "d.qcow2", "d.qcow2", "a"},
            {"bitmap", "d.qcow2", "a"},
            {"bitmap", "--add", "d.qcow2"},
            {"bitmap", "--add", "d.qcow2", "a", "b"},
            {"bitmap", "--bogus", "d.qcow2", "a"},
            {"bitmap", "--add", "nofile.qcow2", "a"},
            {"bitmap", "--add", "-f", "qcow2", "d.qcow2", "fmt"},
            {"bitmap", "--add", "--image-opts", "driver=qcow2,file.filename=d.qcow2", "opts"},
            {"bitmap", "--add", "--image-opts", "-f", "qcow2", "driver=qcow2,file.filename=d.qcow2", "opts"},
            {"bitmap", "--add", "--object", "secret,id=s0,data=x", "d.qcow2", "obj"},
            {"bitmap", "--granularity=8k", "--add", "d.qcow2", "long"},
            {"bitmap", "-g8k", "--add", "d.qcow2", "short"},
            {"info", "d.qcow2"},
            {"info", "--output=json", "d.qcow2"},
        };
        for (String[] c : cases) {
            Twin t = assertSameEffect(List.of("d.qcow2"), c);
            assertSameBits(t, "d.qcow2", "a", "off", "copy");
        }
    }

    @Test
    void gogoCommandChangesTheImageAsTheCommandLine() throws Exception {
        image("g.qcow2");
        BlkCommands commands = new BlkCommands();
        commands.core = org.blockhaus.core.BlockCore.standalone();
        commands.core.addDriver(new org.blockhaus.format.raw.RawDriver());
        commands.core.addDriver(TestDrivers.file());
        commands.core.addDriver(TestDrivers.qcow2());
        String g = dir.resolve("g.qcow2").toString();
        assertEquals("", ((Results.Text) commands.bitmap(null, "--add", "-g", "512", g, "gogo")).text());
        commands.bitmap(null, "--merge", "a", g, "gogo");
        assertEquals(dirty(dir.resolve("g.qcow2"), "a"), // 4k-aligned ranges look the same at 512
                dirty(dir.resolve("g.qcow2"), "gogo"));
    }

    /** Commands that write an image with bitmaps dirty the same bits as qemu-img's (or refuse alike). */
    @Test
    void writingCommandsDirtyTheSameBits() throws Exception {
        image("base.qcow2");
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2");
        sh("qemu-img", "bitmap", "--add", "-g", "512", "top.qcow2", "t");
        sh("qemu-io", "-f", "qcow2", "-c", "write -P 3 3M 5k", "-c", "write -z 6M 64k", "top.qcow2");
        sh("qemu-img", "create", "-q", "-f", "qcow2", "other.qcow2", "16M");
        sh("qemu-io", "-f", "qcow2", "-c", "write -P 9 7M 3k", "other.qcow2");
        sh("qemu-img", "snapshot", "-c", "s1", "top.qcow2");
        List<String> files = List.of("base.qcow2", "top.qcow2", "other.qcow2");
        String[][] cases = {
            {"commit", "-q", "top.qcow2"},
            {"rebase", "-q", "-b", "other.qcow2", "-F", "qcow2", "top.qcow2"},
            {"convert", "-n", "-O", "qcow2", "other.qcow2", "base.qcow2"},
            {"resize", "base.qcow2", "20M"}, // top has a snapshot: see the README on resize
            {"resize", "--shrink", "base.qcow2", "10486272"},
            {"snapshot", "-a", "s1", "top.qcow2"},
            {"snapshot", "-d", "s1", "top.qcow2"},
        };
        for (String[] c : cases) {
            // maps not compared: commit and convert -n record zeroes differently (see the README)
            Twin t = twin(files, c);
            assertSame(t.theirs(), t.ours());
            assertSameImages(t, false);
            assertSameBits(t, "base.qcow2", "a", "off");
            assertSameBits(t, "top.qcow2", "t");
        }
    }

    @Test
    void mergeFromAnotherImage() throws Exception {
        image("d.qcow2");
        image("src.qcow2");
        sh("qemu-io", "-f", "qcow2", "-c", "write 5M 64k", "src.qcow2");
        Twin t = assertSameEffect(List.of("d.qcow2", "src.qcow2"), "bitmap", "--merge", "a", "-b", "src.qcow2",
                "-F", "qcow2", "d.qcow2", "off");
        assertSameBits(t, "d.qcow2", "a", "off");
    }

    @Test
    void convertCopiesBitmaps() throws Exception {
        image("s.qcow2");
        // maps not compared: convert stores partly written clusters differently (see the README)
        Twin t = twin(List.of("s.qcow2"), "convert", "--bitmaps", "-O", "qcow2", "s.qcow2", "t.qcow2");
        assertSame(t.theirs(), t.ours());
        assertSameImages(t, false);
        assertSameBits(t, "t.qcow2", "a", "off");
        sh("qemu-img", "create", "-q", "-f", "qcow2", "n.qcow2", "16M");
        sh("qemu-img", "bitmap", "--add", "n.qcow2", "off");
        for (String[] c : new String[][] {
            {"convert", "--bitmaps", "-n", "-O", "qcow2", "s.qcow2", "n.qcow2"},
            {"convert", "--bitmaps", "-O", "raw", "s.qcow2", "t.raw"},
            {"convert", "--bitmaps", "-O", "qcow2", "-o", "compat=0.10", "s.qcow2", "t.qcow2"},
            {"convert", "--bitmaps", "-O", "qcow2", "s.qcow2", "s.qcow2", "t.qcow2"},
            {"convert", "--skip-broken-bitmaps", "-O", "qcow2", "s.qcow2", "t.qcow2"},
        }) {
            Twin r = twin(List.of("s.qcow2", "n.qcow2"), c);
            assertSame(r.theirs(), r.ours());
            assertSameImages(r, false);
        }
    }

    @Test
    void measureCountsBitmaps() throws Exception {
        image("s.qcow2");
        sh("qemu-img", "bitmap", "--add", "-g", "512", "s.qcow2", "a-much-longer-bitmap-name");
        for (String cs : List.of("512", "4k", "64k", "2M")) {
            assertSameEffect(List.of("s.qcow2"), "measure", "--output=json", "-O", "qcow2", "-o", "cluster_size=" + cs,
                    "s.qcow2");
            assertSameEffect(List.of("s.qcow2"), "measure", "-O", "qcow2", "-o", "cluster_size=" + cs, "s.qcow2");
        }
    }

    @Test
    void inconsistentBitmapsAsQemuImg() throws Exception {
        image("i.qcow2");
        // qemu-io dies with the bitmaps marked in use: an unclean shutdown
        Qemu.run(dir, "qemu-io", "-f", "qcow2", "-c", "write 2M 4k", "-c", "sigraise 9", "i.qcow2");
        for (String[] c : new String[][] {
            {"info", "i.qcow2"},
            {"check", "i.qcow2"},
            {"check", "-r", "all", "i.qcow2"},
            {"bitmap", "--clear", "i.qcow2", "a"},
            {"bitmap", "--merge", "a", "i.qcow2", "off"},
            {"bitmap", "--remove", "i.qcow2", "a"},
            {"convert", "--bitmaps", "-O", "qcow2", "i.qcow2", "t.qcow2"},
        }) {
            assertSameEffect(List.of("i.qcow2"), c);
        }
        Twin t = twin(List.of("i.qcow2"), "convert", "--bitmaps", "--skip-broken-bitmaps", "-O", "qcow2",
                "i.qcow2", "t.qcow2");
        assertSame(t.theirs(), t.ours());
        assertSameImages(t, false);
    }
}
