package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.blockhaus.api.Image;
import org.blockhaus.api.spi.SnapshotNode;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.junit.jupiter.api.io.TempDir;

/**
 * Snapshot operations put their new metadata into free clusters, as qemu's allocator does, so
 * repeated create/apply/delete cycles do not grow the file. The same sequence runs through our
 * driver and through qemu-img snapshot / qemu-io on a twin that starts as a byte copy; after every
 * operation qemu-img check must find ours clean, after every cycle the guests must be equal, and
 * our file must stay within twice the metadata a snapshot operation of ours rewrites (the active
 * L2 tables, L1 table, snapshot table and refcount structure: old and new copies) of qemu's length,
 * and across the later cycles grow no faster than qemu's.
 */
class SnapshotSpaceReuseTest {
    private static final int CYCLES = 6;

    @TempDir
    Path dir;

    @ParameterizedTest
    @ValueSource(strings = {"cluster_size=65536", "cluster_size=4096", "cluster_size=16384,extended_l2=on",
            "cluster_size=4096,refcount_bits=64", "cluster_size=512,compat=0.10"})
    void cyclesStayBoundedLikeQemu(String opts) throws Exception {
        Path ours = dir.resolve("ours.qcow2");
        Path theirs = dir.resolve("theirs.qcow2");
        Qemu.img("create", "-f", "qcow2", "-o", opts, theirs.toString(), "8M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 0x5a 0 3M", "-c", "write -P 0x21 6M 512k", theirs.toString()).ok();
        Files.copy(theirs, ours);
        int clusterSize = Integer.parseInt(opts.replaceAll(".*cluster_size=(\\d+).*", "$1"));
        BlockCore core = Fixtures.core();
        // the long-lived snapshot keeps clusters shared across all cycles
        op(core, ours, theirs, "snapshot -c base", n -> n.createSnapshot("base"));
        List<Long> lengths = new ArrayList<>();
        List<Long> qemuLengths = new ArrayList<>();
        for (int c = 0; c < CYCLES; c++) {
            long off = (c * 7L % 16) * (clusterSize / 2) + 512 * c;
            writeBoth(core, ours, theirs, off, 3 * clusterSize / 2 + 1024, 0x30 + c);
            String s = "s" + c;
            String t = "t" + c;
            op(core, ours, theirs, "snapshot -c " + s, n -> n.createSnapshot(s));
            writeBoth(core, ours, theirs, (2L << 20) + off, 5 * clusterSize, 0x60 + c);
            op(core, ours, theirs, "snapshot -c " + t, n -> n.createSnapshot(t));
            op(core, ours, theirs, "snapshot -a " + s, n -> n.applySnapshot(s));
            op(core, ours, theirs, "snapshot -d " + s, n -> n.deleteSnapshot(s));
            writeBoth(core, ours, theirs, (5L << 20) + off, clusterSize, 0x90 + c);
            op(core, ours, theirs, "snapshot -d " + t, n -> n.deleteSnapshot(t));
            Qemu.img("compare", "-f", "qcow2", "-F", "qcow2", ours.toString(), theirs.toString()).ok();
            assertEquals(Qemu.img("snapshot", "-l", theirs.toString()).ok().out().lines().count(),
                    Qemu.img("snapshot", "-l", ours.toString()).ok().out().lines().count());
            long our = Files.size(ours);
            long their = Files.size(theirs);
            lengths.add(our);
            qemuLengths.add(their);
            // while an operation runs, the old copies and the new ones both take space; data
            // written afterwards fills the holes the old ones leave, as qemu's would
            long slack = 2 * rewrittenMetadataClusters(ours, clusterSize) * clusterSize;
            assertTrue(our <= their + slack, opts + " cycle " + c + ": ours " + our + " bytes, qemu's " + their
                    + ", allowed " + slack + " more");
            long[] oc = counts(ours);
            long[] tc = counts(theirs);
            assertEquals(tc[0], oc[0], opts + ": allocated guest clusters");
            System.out.printf("%s cycle %d: ours %d qemu %d (allocated %d/%d fragmented %d/%d)%n", opts, c, our,
                    their, oc[0], tc[0], oc[1], tc[1]);
        }
        // once the first cycles have made their holes, ours grows no more than qemu's does (its data
        // clusters) plus at most one more set of copies
        long m = rewrittenMetadataClusters(ours, clusterSize) * clusterSize;
        assertTrue(lengths.get(CYCLES - 1) - lengths.get(2) <= qemuLengths.get(CYCLES - 1) - qemuLengths.get(2) + m,
                opts + ": ours " + lengths + ", qemu's " + qemuLengths);
    }

    /** Without guest writes in between qemu's file stops growing at once; ours must stop too. */
    @ParameterizedTest
    @ValueSource(strings = {"cluster_size=65536", "cluster_size=16384,extended_l2=on,refcount_bits=2", "cluster_size=2097152"})
    void createApplyDeleteCyclesStopGrowing(String opts) throws Exception {
        Path ours = dir.resolve("ours.qcow2");
        Path theirs = dir.resolve("theirs.qcow2");
        Qemu.img("create", "-f", "qcow2", "-o", opts, theirs.toString(), "16M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 0x5a 0 5M", "-c", "write -P 0x21 12M 3M", theirs.toString()).ok();
        Files.copy(theirs, ours);
        BlockCore core = Fixtures.core();
        List<Long> lengths = new ArrayList<>();
        List<Long> qemuLengths = new ArrayList<>();
        for (int c = 0; c < CYCLES; c++) {
            String s = "x" + c;
            op(core, ours, theirs, "snapshot -c " + s, n -> n.createSnapshot(s));
            op(core, ours, theirs, "snapshot -a " + s, n -> n.applySnapshot(s));
            op(core, ours, theirs, "snapshot -d " + s, n -> n.deleteSnapshot(s));
            lengths.add(Files.size(ours));
            qemuLengths.add(Files.size(theirs));
        }
        Qemu.img("compare", "-f", "qcow2", "-F", "qcow2", ours.toString(), theirs.toString()).ok();
        assertEquals(qemuLengths.get(1), qemuLengths.get(CYCLES - 1), "qemu's lengths " + qemuLengths);
        assertEquals(lengths.get(1), lengths.get(CYCLES - 1), opts + ": ours " + lengths + ", qemu's " + qemuLengths);
        int clusterSize = Integer.parseInt(opts.replaceAll(".*cluster_size=(\\d+).*", "$1"));
        long slack = 2 * rewrittenMetadataClusters(ours, clusterSize) * clusterSize;
        assertTrue(lengths.get(CYCLES - 1) <= qemuLengths.get(CYCLES - 1) + slack,
                opts + ": ours " + lengths + ", qemu's " + qemuLengths + ", allowed " + slack + " more");
        System.out.printf("%s: ours %s qemu %s%n", opts, lengths, qemuLengths);
    }

    interface SnapOp {
        void run(SnapshotNode n) throws Exception;
    }

    private void op(BlockCore core, Path ours, Path theirs, String qemuOp, SnapOp ourOp) throws Exception {
        try (Image i = Fixtures.openRw(core, ours)) {
            ourOp.run((SnapshotNode) i.driverNode());
        }
        String[] w = qemuOp.split(" ");
        Qemu.img(w[0], w[1], w[2], theirs.toString()).ok();
        Qemu.Result check = Qemu.img("check", ours.toString());
        assertEquals(0, check.exit(), "after " + qemuOp + ": " + check.out() + check.err());
    }

    private void writeBoth(BlockCore core, Path ours, Path theirs, long off, int len, int value) throws Exception {
        byte[] b = new byte[len];
        java.util.Arrays.fill(b, (byte) value);
        try (Image i = Fixtures.openRw(core, ours)) {
            i.write(off, ByteBuffer.wrap(b), 0);
        }
        Qemu.io("-f", "qcow2", "-c", "write -P " + value + " " + off + " " + len, theirs.toString()).ok();
    }

    /** Allocated and fragmented guest clusters, from qemu-img check. */
    private static long[] counts(Path img) {
        String out = Qemu.img("check", img.toString()).ok().out();
        Matcher m = Pattern.compile("(\\d+)/\\d+ = [\\d.]+% allocated, ([\\d.]+)% fragmented").matcher(out);
        assertTrue(m.find(), out);
        return new long[] {Long.parseLong(m.group(1)), Math.round(Double.parseDouble(m.group(2)) * 100)};
    }

    /**
     * What one snapshot operation of ours writes anew besides qemu's: the active L2 tables, the L1
     * table, the snapshot table, the refcount table and blocks, plus one cluster for rounding.
     */
    private static long rewrittenMetadataClusters(Path img, int clusterSize) throws Exception {
        String json = Qemu.img("info", "--output=json", img.toString()).ok().out();
        long size = Long.parseLong(json.replaceAll("(?s).*\"virtual-size\": (\\d+).*", "$1"));
        boolean ext = json.contains("\"extended-l2\": true");
        long l2Entries = clusterSize / (ext ? 16 : 8);
        long l2Tables = (size / clusterSize + l2Entries - 1) / l2Entries;
        long l1Clusters = (l2Tables * 8 + clusterSize - 1) / clusterSize;
        long fileClusters = Files.size(img) / clusterSize + 1;
        int refcountBits = Integer.parseInt(json.replaceAll("(?s).*\"refcount-bits\": (\\d+).*", "$1"));
        long blockEntries = clusterSize * 8L / refcountBits;
        long blocks = (fileClusters + blockEntries - 1) / blockEntries;
        long tableClusters = (blocks * 8 + clusterSize - 1) / clusterSize;
        return l2Tables + l1Clusters + 1 + blocks + tableClusters + 1;
    }
}
