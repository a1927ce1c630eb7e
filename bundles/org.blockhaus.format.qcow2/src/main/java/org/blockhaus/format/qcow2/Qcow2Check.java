package org.blockhaus.format.qcow2;

import java.nio.ByteBuffer;
import java.util.List;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.spi.CheckResult;

/**
 * qemu-img check for qcow2: walks every structure that references host clusters (header, L1 and
 * L2 tables of the active state and of each snapshot, data and compressed clusters, the refcount
 * table and blocks, the snapshot table), counts the references per host cluster and compares them
 * with the stored refcounts. Stored above counted is a leak; below is a corruption. It also counts
 * the COPIED flags that disagree with the refcounts, as qemu does.
 */
final class Qcow2Check {
    private final Qcow2Node node;
    private final Qcow2Header h;
    private final HostFile file;
    private final int clusterBits;
    private final int clusterSize;
    private final int[] refs;
    private long corruptions;
    private long allocated;
    private long fragmented;
    private long compressed;
    private long nextContiguous;

    /** One counter per host cluster: 1 GiB of memory at most (2^28 clusters, 16 TiB at 64 KiB). */
    static final long MAX_CLUSTERS = 1L << 28;

    Qcow2Check(Qcow2Node node) throws BlockException {
        this.node = node;
        this.h = node.header();
        this.file = node.hostFile();
        this.clusterBits = h.clusterBits();
        this.clusterSize = h.clusterSize();
        long n = Qcow2Header.ceilShift(file.size(), clusterBits);
        if (n > MAX_CLUSTERS) {
            throw new BlockException(BlockException.Reason.UNSUPPORTED, "qcow2: the image file has " + n
                    + " clusters; check counts at most " + MAX_CLUSTERS);
        }
        this.refs = new int[(int) n];
    }

    private void addRef(long offset, long bytes) {
        if (bytes <= 0) {
            return;
        }
        long first = offset >>> clusterBits;
        long last = (offset + bytes - 1) >>> clusterBits;
        for (long i = first; i <= last; i++) {
            if (i >= refs.length) {
                corruptions++; // a reference past the end of the file
                return;
            }
            refs[(int) i]++;
        }
    }

    CheckResult run(CheckResult.Repair repair) throws BlockException {
        Refcounts rc = node.refcounts();
        addRef(0, clusterSize);
        long[] l1 = node.activeL1();
        addRef(node.activeL1Offset(), (long) l1.length * 8);
        walkL1(l1, true);
        List<Snapshots.Entry> snaps = node.snapshotEntries();
        for (Snapshots.Entry e : snaps) {
            addRef(e.l1TableOffset(), (long) e.l1Size() * 8);
            long[] sl1 = new long[e.l1Size()];
            if (sl1.length > 0) {
                file.read(e.l1TableOffset(), sl1.length * 8, "Snapshot L1 table").asLongBuffer().get(sl1);
            }
            walkL1(sl1, false);
        }
        if (h.nbSnapshots() > 0) {
            long[] bytes = new long[1];
            Snapshots.read(file, h, bytes);
            addRef(h.snapshotsOffset(), bytes[0]);
        }
        if ((h.autoclearFeatures() & Qcow2Header.AUTOCLEAR_BITMAPS) != 0) {
            for (Qcow2Header.Extension e : h.unknownExtensions()) {
                if (e.type() == Qcow2Header.EXT_BITMAPS) {
                    walkBitmaps(ByteBuffer.wrap(e.data()));
                }
            }
        }
        addRef(rc.tableOffset(), (long) rc.tableClusters() * clusterSize);
        for (long b : rc.table()) {
            if (b != 0) {
                if ((b & (clusterSize - 1)) != 0) {
                    corruptions++;
                    continue;
                }
                addRef(b, clusterSize);
            }
        }
        long leaks = 0;
        long leaksFixed = 0;
        long corruptionsFixed = 0;
        long highest = -1;
        for (int i = 0; i < refs.length; i++) {
            long stored = rc.get(i);
            long counted = refs[i];
            if (stored > 0 || counted > 0) {
                highest = i;
            }
            if (stored > counted) {
                leaks++;
                if (repair != CheckResult.Repair.NONE && rc.repairSet(i, counted)) {
                    leaksFixed++;
                }
            } else if (stored < counted) {
                corruptions++;
                if (repair == CheckResult.Repair.ALL && rc.repairSet(i, counted)) {
                    corruptionsFixed++;
                }
            }
        }
        if (leaksFixed > 0 || corruptionsFixed > 0) {
            rc.writeAll();
        }
        // COPIED must be set exactly where the (repaired) refcount is 1, in the active tables only.
        // With -r all, flags are fixed in the L1 table and in L2 tables this image owns alone.
        boolean fix = repair == CheckResult.Repair.ALL;
        for (int li = 0; li < l1.length; li++) {
            long e = l1[li];
            long off = e & Qcow2Node.L1_OFFSET_MASK;
            if (off == 0) {
                continue;
            }
            boolean l2Owned = rc.get(off >>> clusterBits) == 1;
            if (l2Owned != ((e & Qcow2Node.OFLAG_COPIED) != 0)) {
                corruptions++;
                if (fix) {
                    l1[li] = l2Owned ? e | Qcow2Node.OFLAG_COPIED : e & ~Qcow2Node.OFLAG_COPIED;
                    node.markL1Dirty(li);
                    corruptionsFixed++;
                }
            }
            L2Cache.Table t = node.l2Table(off);
            int step = h.extendedL2() ? 2 : 1;
            for (int i = 0; i < t.words.length; i += step) {
                long w = t.words[i];
                long host = w & Qcow2Node.L2_OFFSET_MASK;
                if ((w & Qcow2Node.OFLAG_COMPRESSED) != 0 || host == 0 || node.external()) {
                    continue;
                }
                boolean owned = rc.get(host >>> clusterBits) == 1;
                if (owned != ((w & Qcow2Node.OFLAG_COPIED) != 0)) {
                    corruptions++;
                    if (fix && l2Owned) {
                        t.words[i] = owned ? w | Qcow2Node.OFLAG_COPIED : w & ~Qcow2Node.OFLAG_COPIED;
                        t.dirty = true;
                        corruptionsFixed++;
                    }
                }
            }
        }
        long total = Qcow2Header.ceilShift(h.size(), clusterBits);
        return new CheckResult(corruptions - corruptionsFixed, leaks - leaksFixed, 0, corruptionsFixed, leaksFixed,
                (highest + 1) * clusterSize, total, allocated, fragmented, compressed);
    }

    private void walkL1(long[] l1, boolean active) throws BlockException {
        Compression comp = node.compression();
        for (long e : l1) {
            long off = e & Qcow2Node.L1_OFFSET_MASK;
            if (off == 0) {
                continue;
            }
            if ((off & (clusterSize - 1)) != 0 || off >= file.size()) {
                corruptions++;
                continue;
            }
            addRef(off, clusterSize);
            L2Cache.Table t;
            if (active) {
                t = node.l2Table(off);
            } else {
                ByteBuffer b = file.read(off, clusterSize, "Snapshot L2 table");
                t = new L2Cache.Table(off, new long[clusterSize / 8]);
                b.asLongBuffer().get(t.words);
            }
            int step = h.extendedL2() ? 2 : 1;
            nextContiguous = 0; // qemu judges contiguity within one L2 table
            for (int i = 0; i < t.words.length; i += step) {
                long w = t.words[i];
                if ((w & Qcow2Node.OFLAG_COMPRESSED) != 0) {
                    addRef(comp.refStart(w), comp.refLength(w));
                    if (active) {
                        allocated++;
                        compressed++;
                        fragmented++; // compressed clusters are fragmented by nature
                    }
                    continue;
                }
                long host = w & Qcow2Node.L2_OFFSET_MASK;
                if (host == 0 && !(node.external() && (w & Qcow2Node.OFLAG_COPIED) != 0)) {
                    continue;
                }
                if ((host & (clusterSize - 1)) != 0) {
                    corruptions++;
                    continue;
                }
                if (!node.external()) {
                    addRef(host, clusterSize); // external data file clusters are not refcounted
                }
                if (active) {
                    allocated++;
                    if (nextContiguous != 0 && host != nextContiguous) {
                        fragmented++;
                    }
                    nextContiguous = host + clusterSize;
                }
            }
        }
    }

    /** Persistent dirty bitmaps (spec: "Bitmaps extension"): directory, bitmap tables, bitmap data. */
    private void walkBitmaps(ByteBuffer ext) throws BlockException {
        if (ext.remaining() < 24) {
            corruptions++;
            return;
        }
        long count = Integer.toUnsignedLong(ext.getInt(0));
        long dirSize = ext.getLong(8);
        long dirOffset = ext.getLong(16);
        if (count > 65535 || dirSize < 0 || dirSize > 64L * 65535 * 1024 || dirOffset <= 0
                || (dirOffset & (clusterSize - 1)) != 0 || dirOffset > file.size() - dirSize) {
            corruptions++;
            return;
        }
        addRef(dirOffset, dirSize);
        ByteBuffer dir = file.read(dirOffset, (int) dirSize, "Bitmap directory");
        int pos = 0;
        for (long i = 0; i < count; i++) {
            if (pos + 24 > dir.limit()) {
                corruptions++;
                return;
            }
            long tableOffset = dir.getLong(pos);
            long tableEntries = Integer.toUnsignedLong(dir.getInt(pos + 8));
            int nameSize = Short.toUnsignedInt(dir.getShort(pos + 18));
            long extra = Integer.toUnsignedLong(dir.getInt(pos + 20));
            pos += (int) ((24 + extra + nameSize + 7) & ~7L);
            if (tableEntries == 0) {
                continue;
            }
            if (tableEntries * 8 > Qcow2Header.MAX_L1_BYTES || (tableOffset & (clusterSize - 1)) != 0
                    || tableOffset <= 0 || tableOffset > file.size() - tableEntries * 8) {
                corruptions++;
                continue;
            }
            addRef(tableOffset, tableEntries * 8);
            ByteBuffer table = file.read(tableOffset, (int) (tableEntries * 8), "Bitmap table");
            for (int k = 0; k < tableEntries; k++) {
                long data = table.getLong(k * 8) & Qcow2Node.L2_OFFSET_MASK;
                if (data != 0) {
                    addRef(data, clusterSize);
                }
            }
        }
    }
}
