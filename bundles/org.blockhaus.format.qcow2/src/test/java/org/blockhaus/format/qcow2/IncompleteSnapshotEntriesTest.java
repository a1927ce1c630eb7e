package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.blockhaus.api.Image;
import org.blockhaus.api.spi.CheckResult;
import org.blockhaus.api.spi.CheckableNode;
import org.blockhaus.api.spi.SnapshotNode;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * The fuzzer's seed-31 gap: nb_snapshots raised on a qemu-img image with two snapshots, so the
 * table runs on past its end (past the end of the file, which reads as zeroes) into entries of
 * zeroes without the extra data version 3 requires. Compared with qemu-img 7.2 on the same image:
 * the snapshots a normal open lists (qemu-img info), check's findings and counts ("snapshot table
 * entry N is incomplete"), and -r all, which keeps every entry and writes them complete.
 */
class IncompleteSnapshotEntriesTest {
    @TempDir
    Path dir;

    @ParameterizedTest
    @ValueSource(ints = {1, 3})
    void raisedSnapshotCountIsListedCheckedAndRepairedAsQemuDoes(int extra) throws Exception {
        Path img = dir.resolve("s.qcow2");
        Qemu.img("create", "-q", "-f", "qcow2", img.toString(), "16M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 1 0 1M", img.toString()).ok();
        Qemu.img("snapshot", "-c", "s1", img.toString()).ok();
        Qemu.img("snapshot", "-c", "s2", img.toString()).ok();
        int nb = Patch.readInt(img, 60);
        Patch.writeInt(img, 60, nb + extra);

        // a normal open lists every entry, the zero ones with empty ID and name, as qemu-img info
        List<String> theirs = qemuSnapshots(img);
        assertEquals(nb + extra, theirs.size(), theirs.toString());
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRo(core, img)) {
            List<String> ours = new ArrayList<>();
            for (SnapshotNode.Snapshot s : ((SnapshotNode) i.driverNode()).snapshots()) {
                ours.add(s.id() + "/" + s.name() + "/" + s.vmStateSize() + "/" + s.dateSec() + "/"
                        + (s.icount() < 0 ? "-" : Long.toString(s.icount())));
            }
            assertEquals(theirs, ours);
        }

        // check: the same lines and counts
        Qemu.Result q = Qemu.img("check", img.toString());
        List<String> ourLines = new ArrayList<>();
        CheckResult r;
        try (Image i = Fixtures.openRo(core, img)) {
            r = ((CheckableNode) i.driverNode()).check(CheckResult.Repair.NONE, ourLines::add);
        }
        assertEquals(findingLines(q.err()), ourLines);
        assertEquals(2, q.exit(), q.err());
        assertEquals(count(q.out() + q.err(), "(\\d+) errors were found"), r.corruptions());
        assertEquals(count(q.out(), "Image end offset: (\\d+)"), r.imageEndOffset());

        // -r all on twins: the same lines, every entry kept and complete, both clean afterwards
        Path qTwin = dir.resolve("q.qcow2");
        Path bTwin = dir.resolve("b.qcow2");
        Files.copy(img, qTwin);
        Files.copy(img, bTwin);
        Qemu.Result qr = Qemu.img("check", "-r", "all", qTwin.toString());
        assertEquals(0, qr.exit(), qr.out() + qr.err());
        List<String> repairLines = new ArrayList<>();
        try (Image i = Fixtures.openRw(core, bTwin)) {
            r = ((CheckableNode) i.driverNode()).check(CheckResult.Repair.ALL, repairLines::add);
        }
        assertEquals(findingLines(qr.err()), repairLines);
        assertEquals(count(qr.out(), "(\\d+) corruptions"), r.corruptionsFixed());
        assertEquals(0, r.corruptions());
        Qemu.Result after = Qemu.img("check", bTwin.toString());
        assertEquals(0, after.exit(), after.out() + after.err());
        assertEquals(Qemu.img("snapshot", "-l", qTwin.toString()).ok().out(),
                Qemu.img("snapshot", "-l", bTwin.toString()).ok().out());
        assertEquals(qemuSnapshots(qTwin), qemuSnapshots(bTwin));
        assertEquals(diskSizes(qTwin), diskSizes(bTwin));
        Qemu.img("compare", "-U", qTwin.toString(), bTwin.toString()).ok();
        // and our open now reads the complete entries qemu wrote
        try (Image i = Fixtures.openRo(core, qTwin)) {
            assertEquals(nb + extra, ((SnapshotNode) i.driverNode()).snapshots().size());
        }
    }

    /** id/name/vm-state-size/date-sec/icount of each snapshot, from qemu-img info's JSON. */
    private static List<String> qemuSnapshots(Path img) {
        String json = Qemu.img("info", "-U", "--output=json", img.toString()).ok().out();
        List<String> out = new ArrayList<>();
        int at = json.indexOf("\"snapshots\"");
        if (at < 0) {
            return out;
        }
        String list = json.substring(at, json.indexOf(']', at));
        for (String e : list.split("\\}")) {
            if (!e.contains("\"id\"")) {
                continue;
            }
            Matcher icount = Pattern.compile("\"icount\": (\\d+)").matcher(e);
            out.add(str(e, "id") + "/" + str(e, "name") + "/" + num(e, "vm-state-size") + "/" + num(e, "date-sec")
                    + "/" + (icount.find() ? icount.group(1) : "-"));
        }
        return out;
    }

    /** The disk size recorded in each entry's extra data (bytes 8..15 after the fixed part). */
    private static List<Long> diskSizes(Path img) throws Exception {
        List<Long> out = new ArrayList<>();
        long pos = Patch.readLong(img, 64);
        for (int i = Patch.readInt(img, 60); i > 0; i--) {
            int lens = Patch.readInt(img, pos + 12);
            int extra = Patch.readInt(img, pos + 36);
            out.add(extra >= 16 ? Patch.readLong(img, pos + 48) : -1);
            pos += (40 + extra + (lens >>> 16) + (lens & 0xffff) + 7) & ~7;
        }
        return out;
    }

    private static String str(String json, String key) {
        Matcher m = Pattern.compile("\"" + key + "\": \"([^\"]*)\"").matcher(json);
        return m.find() ? m.group(1) : "?";
    }

    private static long num(String json, String key) {
        Matcher m = Pattern.compile("\"" + key + "\": (\\d+)").matcher(json);
        return m.find() ? Long.parseLong(m.group(1)) : -1;
    }

    private static long count(String text, String regex) {
        Matcher m = Pattern.compile(regex).matcher(text);
        if (!m.find()) {
            throw new AssertionError("no '" + regex + "' in " + text);
        }
        return Long.parseLong(m.group(1));
    }

    /** qemu-img check's per-finding stderr lines (the summary goes to stdout). */
    private static List<String> findingLines(String err) {
        return err.lines().filter(l -> !l.isBlank()).toList();
    }
}
