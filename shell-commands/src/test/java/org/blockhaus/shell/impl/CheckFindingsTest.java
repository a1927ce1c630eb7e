package org.blockhaus.shell.impl;

import java.io.RandomAccessFile;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * check on images with broken refcounts prints what qemu-img prints: one stderr line per finding
 * ("Leaked cluster", "ERROR cluster", "ERROR OFLAG_COPIED", "Repairing ...", "Rebuilding refcount
 * structure", "ERROR need to rebuild refcount structures"), the same summary, the same exit code
 * ("Check failed" for -r leaks when only a rebuild helps), and repairs leave the same image.
 */
class CheckFindingsTest extends QemuComparison {
    private static final String[][] CHECKS = {
        {"check", "c.qcow2"}, {"check", "--output=json", "c.qcow2"}, {"check", "-r", "leaks", "c.qcow2"},
        {"check", "-r", "all", "c.qcow2"}, {"check", "-r", "all", "--output=json", "c.qcow2"},
        {"check", "-q", "-r", "leaks", "c.qcow2"},
    };

    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"leak", "leak-and-copied", "too-low", "zero", "zero-two-blocks", "unaligned-data",
        "data-past-end"})
    void brokenRefcountsAreReportedAndRepairedAsQemuImgDoes(String kind) throws Exception {
        String cluster = kind.equals("zero-two-blocks") ? "512" : "64k";
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=" + cluster, "c.qcow2", "4M");
        sh("qemu-io", "-c", "write -P 1 0 256k", "c.qcow2");
        long data = firstDataCluster();
        switch (kind) {
            case "leak" -> {
                sh("qemu-io", "-c", "discard 0 64k", "c.qcow2");
                setRefcount(data, 1);
            }
            case "leak-and-copied" -> setRefcount(data, 2);
            case "too-low" -> {
                sh("qemu-img", "snapshot", "-c", "s", "c.qcow2");
                setRefcount(data, 1);
            }
            case "unaligned-data" -> patchL2Entry(0, (data << clusterBits()) + 512 | 1L << 63);
            case "data-past-end" -> patchL2Entry(1, (100L << clusterBits()) | 1L << 63);
            default -> setRefcount(data + 1, 0);
        }
        for (String[] c : CHECKS) {
            Twin t = twin(List.of("c.qcow2"), c);
            try {
                assertSame(t.theirs(), t.ours());
                if (c[1].equals("-r") && c[2].equals("all") && t.theirs().exitCode() == 0) {
                    assertSameImages(t);
                }
            } catch (AssertionError e) {
                throw new AssertionError(kind + ": " + String.join(" ", c) + ": " + e.getMessage(), e);
            }
        }
    }

    /**
     * An image a lazy-refcounts qemu-io left dirty (killed) is checked as qemu-img checks it: the
     * open for a check does not rebuild it first (qemu's BDRV_O_CHECK), so -r leaks fails and -r
     * all rebuilds, with qemu-img's lines; the repaired image is qemu-img's.
     */
    @org.junit.jupiter.api.Test
    void dirtyImageIsCheckedAsQemuImgChecksIt() throws Exception {
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", "c.qcow2", "4M");
        Qemu.Run killed = Qemu.run(dir, "qemu-io", "-c", "write -P 1 0 1M", "-c", "sigraise 9", "c.qcow2");
        org.junit.jupiter.api.Assertions.assertEquals(137, killed.exitCode(), killed.err());
        for (String[] c : CHECKS) {
            Twin t = twin(List.of("c.qcow2"), c);
            try {
                assertSame(t.theirs(), t.ours());
                if (c[1].equals("-r") && c[2].equals("all") && t.theirs().exitCode() == 0) {
                    assertSameImages(t);
                }
            } catch (AssertionError e) {
                throw new AssertionError("dirty: " + String.join(" ", c) + ": " + e.getMessage(), e);
            }
        }
    }

    /**
     * Snapshot table entries without the extra data version 3 requires (disk size): made by raising
     * nb_snapshots of a qemu-img image so the table runs on into zero bytes (past the end of the
     * file: qemu reads those as zeroes), or by shortening the extra data of real entries. A normal
     * open lists them (info, snapshot -l); check reports "snapshot table entry N is incomplete",
     * and -r all writes the table anew with full entries, keeping every entry, as qemu-img does.
     */
    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"one-more", "three-more", "short-extra"})
    void incompleteSnapshotEntriesAsQemuImg(String kind) throws Exception {
        sh("qemu-img", "create", "-q", "-f", "qcow2", "c.qcow2", "16M");
        sh("qemu-io", "-c", "write -P 1 0 1M", "c.qcow2");
        sh("qemu-img", "snapshot", "-c", "s1", "c.qcow2");
        sh("qemu-io", "-c", "write -P 2 512k 1M", "c.qcow2");
        sh("qemu-img", "snapshot", "-c", "s2", "c.qcow2");
        try (RandomAccessFile f = new RandomAccessFile(dir.resolve("c.qcow2").toFile(), "rw")) {
            f.seek(60);
            int nb = f.readInt();
            long table = f.readLong();
            switch (kind) {
                case "one-more" -> { f.seek(60); f.writeInt(nb + 1); }
                case "three-more" -> { f.seek(60); f.writeInt(nb + 3); }
                default -> {
                    // entry 0 keeps only 8 bytes of extra data (vm state size): id and name move up
                    f.seek(table + 12);
                    int idLen = f.readUnsignedShort();
                    int nameLen = f.readUnsignedShort();
                    f.seek(table + 36);
                    int extra = f.readInt();
                    byte[] names = new byte[idLen + nameLen];
                    f.seek(table + 40 + extra);
                    f.readFully(names);
                    int oldLen = (40 + extra + names.length + 7) & ~7;
                    int newLen = (40 + 8 + names.length + 7) & ~7;
                    // the rest of the table moves up inside its own cluster (qemu gives the table clusters of its own)
                    long clusterEnd = (table | 0xffff) + 1;
                    byte[] rest = new byte[(int) (Math.min(f.length(), clusterEnd) - table - oldLen)];
                    f.seek(table + oldLen);
                    f.readFully(rest);
                    f.seek(table + 36);
                    f.writeInt(8);
                    f.seek(table + 48);
                    f.write(names);
                    f.write(new byte[newLen - 48 - names.length]);
                    f.write(rest);
                }
            }
        }
        String[][] commands = {
            {"info", "c.qcow2"}, {"info", "--output=json", "c.qcow2"}, {"snapshot", "-l", "c.qcow2"},
            CHECKS[0], CHECKS[1], CHECKS[2], CHECKS[3], CHECKS[4], CHECKS[5],
        };
        for (String[] c : commands) {
            Twin t = twin(List.of("c.qcow2"), c);
            try {
                assertSame(t.theirs(), t.ours());
                if (c[0].equals("check") && c[1].equals("-r") && c[2].equals("all")) {
                    assertSameImages(t);
                    assertSame(qemuIn(t.q(), "snapshot", "-l", "c.qcow2"), qemuIn(t.b(), "snapshot", "-l", "c.qcow2"));
                }
            } catch (AssertionError e) {
                throw new AssertionError(kind + ": " + String.join(" ", c) + ": " + e.getMessage(), e);
            }
        }
    }

    /**
     * Tables that only opens for check take, as qemu-img's check opens them (the qcow2 bundle's
     * CheckOpenGapsTest compares the driver): a refcount table past the end of the file or empty,
     * a snapshot table past the end of the file, an unaligned snapshot table offset with no
     * snapshots ("ERROR snapshot table offset invalid", "Check failed: Invalid argument"; there
     * ours -r all clears the offset where qemu's fails, so -r all is not compared).
     */
    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"refcount-table-past-end", "empty-refcount-table", "snapshot-table-past-end",
        "snapshot-offset-unaligned"})
    void tablesOnlyCheckOpensTakeAsQemuImg(String kind) throws Exception {
        sh("qemu-img", "create", "-q", "-f", "qcow2", "c.qcow2", "16M");
        sh("qemu-io", "-c", "write -P 1 0 1M", "c.qcow2");
        sh("qemu-img", "snapshot", "-c", "s1", "c.qcow2");
        sh("qemu-io", "-c", "write -P 2 512k 1M", "c.qcow2");
        try (RandomAccessFile f = new RandomAccessFile(dir.resolve("c.qcow2").toFile(), "rw")) {
            switch (kind) {
                case "refcount-table-past-end" -> { f.seek(48); f.writeLong(64L << 20); }
                case "empty-refcount-table" -> { f.seek(56); f.writeInt(0); }
                case "snapshot-table-past-end" -> { f.seek(64); f.writeLong(64L << 20); }
                default -> { f.seek(60); f.writeInt(0); f.writeLong(0x1_0008L); }
            }
        }
        boolean repairs = !kind.equals("snapshot-offset-unaligned");
        for (String[] c : repairs ? CHECKS : new String[][] {CHECKS[0], CHECKS[1], CHECKS[2], CHECKS[5]}) {
            Twin t = twin(List.of("c.qcow2"), c);
            try {
                // qemu's close frees the old snapshot table, past the end of the file too, and
                // says that failed; ours frees only the part inside the file
                Qemu.Run theirs = t.theirs();
                theirs = new Qemu.Run(theirs.exitCode(), theirs.out(),
                        theirs.err().replace("qcow2_free_clusters failed: Invalid argument\n", ""));
                assertSame(theirs, t.ours());
                if (c[0].equals("check") && c[1].equals("-r") && c[2].equals("all")) {
                    assertSameImages(t);
                    assertSame(qemuIn(t.q(), "snapshot", "-l", "c.qcow2"), qemuIn(t.b(), "snapshot", "-l", "c.qcow2"));
                }
            } catch (AssertionError e) {
                throw new AssertionError(kind + ": " + String.join(" ", c) + ": " + e.getMessage(), e);
            }
        }
    }

    /** The host cluster of guest offset 0, from qemu-img map. */
    private long firstDataCluster() throws Exception {
        String json = sh("qemu-img", "map", "--output=json", "c.qcow2").out();
        var m = java.util.regex.Pattern.compile("\"offset\": (\\d+)").matcher(json);
        if (!m.find()) {
            throw new AssertionError("no data in " + json);
        }
        return Long.parseLong(m.group(1)) >> clusterBits();
    }

    private int clusterBits() throws Exception {
        try (RandomAccessFile f = new RandomAccessFile(dir.resolve("c.qcow2").toFile(), "r")) {
            f.seek(20);
            return f.readInt();
        }
    }

    private long l1Entry() throws Exception {
        try (RandomAccessFile f = new RandomAccessFile(dir.resolve("c.qcow2").toFile(), "r")) {
            f.seek(40);
            f.seek(f.readLong());
            return f.readLong();
        }
    }

    /** Overwrites entry {@code index} of the first L2 table. */
    private void patchL2Entry(int index, long value) throws Exception {
        long l2 = l1Entry() & 0x00ff_ffff_ffff_fe00L;
        try (RandomAccessFile f = new RandomAccessFile(dir.resolve("c.qcow2").toFile(), "rw")) {
            f.seek(l2 + index * 8L);
            f.writeLong(value);
        }
    }

    /** Writes a 16-bit refcount straight into the refcount block that covers {@code cluster}. */
    private void setRefcount(long cluster, int value) throws Exception {
        Path p = dir.resolve("c.qcow2");
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.seek(20);
            int bits = f.readInt();
            f.seek(48);
            long table = f.readLong();
            long perBlock = (1L << bits) / 2;
            f.seek(table + cluster / perBlock * 8);
            long block = f.readLong();
            if (block == 0) {
                throw new AssertionError("no refcount block for cluster " + cluster);
            }
            f.seek(block + cluster % perBlock * 2);
            f.writeShort(value);
        }
    }
}
