package org.blockhaus.format.qcow2;

import java.nio.ByteBuffer;
import java.util.List;
import java.util.function.Consumer;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.spi.CheckResult;

/**
 * qemu-img check for qcow2: walks every structure that references host clusters (header, L1 and
 * L2 tables of the active state and of each snapshot, data and compressed clusters, the refcount
 * table and blocks, the snapshot table), counts the references per host cluster and compares them
 * with the stored refcounts. Stored above counted is a leak; below is a corruption. It also counts
 * the COPIED flags that disagree with the refcounts, as qemu does.
 *
 * <p>The steps, their repairs and the line reported for each finding follow qemu-img: a first
 * comparison only reports; a referenced cluster with refcount 0 means the refcount structure must
 * be rebuilt ({@link RefcountRebuild}, only with -r all; -r leaks then fails the check); other
 * mismatches are compared again with repairs; the COPIED flags last.
 */
final class Qcow2Check {
    private final Qcow2Node node;
    private final Qcow2Header h;
    private final HostFile file;
    private final int clusterBits;
    private final int clusterSize;
    private int[] refs;
    /** The largest count the refcount width holds (the counters are 32 bits, enough for any table walk). */
    private final long maxRefcount;
    /** Reserved bits of L1 entries and of standard L2 entries (spec: "Host cluster management"). */
    static final long L1_RESERVED = 0x7f00_0000_0000_01ffL;
    static final long L2_STD_RESERVED = 0x3f00_0000_0000_01feL;
    private final Consumer<String> findings;
    private long corruptions;
    private long leaks;
    private long checkErrors;
    private long corruptionsFixed;
    private long leaksFixed;
    private boolean rebuild;
    /** -r all: the walk repairs what qemu's walk repairs (misaligned preallocated clusters). */
    private boolean repairAll;
    private long highest = -1;
    private long allocated;
    private long fragmented;
    private long compressed;
    private long nextContiguous;

    /** One counter per host cluster: 1 GiB of memory at most (2^28 clusters, 16 TiB at 64 KiB). */
    static final long MAX_CLUSTERS = 1L << 28;

    Qcow2Check(Qcow2Node node, Consumer<String> findings) throws BlockException {
        this.node = node;
        this.findings = findings;
        this.h = node.header();
        this.file = node.hostFile();
        this.clusterBits = h.clusterBits();
        this.clusterSize = h.clusterSize();
        this.maxRefcount = h.refcountBits() >= 32 ? 0xffff_ffffL : (1L << h.refcountBits()) - 1;
        this.refs = newCounters();
    }

    /** The length of the file when the counters were made. */
    private long fileLength;

    /** One counter per cluster of the file as it is now. */
    private int[] newCounters() throws BlockException {
        fileLength = file.size();
        long n = Qcow2Header.ceilShift(fileLength, clusterBits);
        if (n > MAX_CLUSTERS) {
            throw new BlockException(BlockException.Reason.UNSUPPORTED, "qcow2: the image file has " + n
                    + " clusters; check counts at most " + MAX_CLUSTERS);
        }
        return new int[(int) n];
    }

    /** Counts a reference to {@code bytes} at {@code offset}; false where it was reported as exceeding the file instead. */
    private boolean addRef(long offset, long bytes) {
        if (bytes <= 0) {
            return true;
        }
        long first = offset >>> clusterBits;
        long last = (offset + bytes - 1) >>> clusterBits;
        if (last >= refs.length) {
            // as qemu: a region that ends less than a cluster past the end of the file (a file
            // whose length is not a multiple of the cluster size) is counted, the counters grown
            long pastEnd = offset > Long.MAX_VALUE - bytes ? Long.MAX_VALUE : offset + bytes - fileLength;
            if (pastEnd < clusterSize && last < MAX_CLUSTERS) {
                refs = java.util.Arrays.copyOf(refs, (int) last + 1);
            }
        }
        if (last >= refs.length) {
            findings.accept("ERROR: counting reference for region exceeding the end of the file by one cluster or"
                    + " more: offset 0x" + Long.toHexString(offset) + " size 0x" + Long.toHexString(bytes));
            corruptions++;
            return false;
        }
        for (long i = first; i <= last; i++) {
            // as qemu: a count that reaches the width's maximum stays there, reported as corruption
            // (a repair cannot store more than the width holds)
            if (Integer.toUnsignedLong(refs[(int) i]) >= maxRefcount) {
                findings.accept("ERROR: overflow cluster offset=0x" + Long.toHexString(i << clusterBits));
                findings.accept("Use qemu-img amend to increase the refcount entry width or qemu-img convert to"
                        + " create a clean copy if the image cannot be opened for writing");
                corruptions++;
                continue;
            }
            refs[(int) i]++;
        }
        return true;
    }

    CheckResult run(CheckResult.Repair repair) throws BlockException {
        repairAll = repair == CheckResult.Repair.ALL;
        checkSnapshotTableOffset();
        // qemu reads the snapshot table first: entries without the extra data version 3 requires
        List<Snapshots.Entry> snapshots = node.snapshotEntries();
        long incomplete = 0;
        for (int i = 0; i < snapshots.size(); i++) {
            if (snapshots.get(i).incomplete(h.version())) {
                findings.accept((repairAll ? "Repairing" : "ERROR") + " snapshot table entry " + i + " is incomplete");
                incomplete++;
            }
        }
        calculate();
        long preCorruptions = corruptions;
        long preLeaks = leaks;
        compare(CheckResult.Repair.NONE);
        if (rebuild && repair == CheckResult.Repair.ALL) {
            findings.accept("Rebuilding refcount structure");
            long oldCorruptions = corruptions;
            long oldLeaks = leaks;
            new RefcountRebuild(node, refs).run();
            corruptions = 0;
            leaks = 0;
            rebuild = false;
            refs = newCounters(); // the new structure lies past the old end of the file
            allocated = 0;
            fragmented = 0;
            compressed = 0;
            calculate();
            // the old structure is a leak now: repaired, but not counted as a repair (as qemu-img)
            long savedCorruptions = corruptions;
            long savedLeaks = leaks;
            long savedLeaksFixed = leaksFixed;
            corruptions = 0;
            leaks = 0;
            highest = -1;
            compare(CheckResult.Repair.LEAKS);
            if (rebuild) {
                findings.accept("ERROR rebuilt refcount structure is still broken");
            }
            long freshLeaks = leaks;
            corruptions = savedCorruptions;
            leaks = savedLeaks;
            leaksFixed = savedLeaksFixed;
            corruptionsFixed += Math.max(0, oldCorruptions - corruptions);
            leaksFixed += Math.max(0, oldLeaks - leaks);
            leaks += freshLeaks;
        } else if (repair != CheckResult.Repair.NONE) {
            if (rebuild) {
                findings.accept("ERROR need to rebuild refcount structures");
                checkErrors++;
                throw new BlockException(BlockException.Reason.IO, "Input/output error");
            }
            if (leaks > 0 || corruptions > 0) {
                corruptions = preCorruptions;
                leaks = preLeaks;
                highest = -1;
                compare(repair);
            }
        }
        checkCopied(repair == CheckResult.Repair.ALL);
        if (incomplete > 0 && repairAll) {
            // as qemu, after the refcounts: the table written anew, every entry with full extra data
            // (disk size as read: the image's size where the entry had none; icount unknown)
            node.flushLocked();
            node.rewriteSnapshotTable(snapshots);
            corruptionsFixed += incomplete;
        } else {
            corruptions += incomplete;
        }
        long total = Qcow2Header.ceilShift(h.size(), clusterBits);
        return new CheckResult(corruptions, leaks, checkErrors, corruptionsFixed, leaksFixed,
                (highest + 1) * clusterSize, total, allocated, fragmented, compressed);
    }

    /**
     * The snapshot table's offset, before the table is read (opens for check take any offset whose
     * sums do not overflow in the header, as qemu's). As qemu-img check: an offset that is not
     * cluster aligned, or whose table would end past 2^63, is "ERROR snapshot table offset
     * invalid" and the check fails. Where the table is empty, -r all clears the offset instead
     * (qemu's -r all fails there too, and leaves an image its own open refuses); with entries
     * nothing says where the table really is, so the check fails as qemu's.
     */
    private void checkSnapshotTableOffset() throws BlockException {
        if (Qcow2Header.validTableOffset(h.snapshotsOffset(), 40L * h.nbSnapshots(), clusterSize)) {
            return;
        }
        if (repairAll && h.nbSnapshots() == 0) {
            findings.accept("Repairing snapshot table offset invalid");
            node.flushLocked();
            node.rewriteSnapshotTable(List.of());
            corruptionsFixed++;
            return;
        }
        // qemu-img reports this one through its error reporting, with its program name in front
        findings.accept("qemu-img: ERROR snapshot table offset invalid");
        checkErrors++;
        throw BlockException.invalid("Invalid argument");
    }

    /** Counts every reference (qemu's calculate_refcounts). */
    private void calculate() throws BlockException {
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
            Snapshots.read(file, h, bytes, node.forCheck());
            addRef(h.snapshotsOffset(), bytes[0]);
        }
        if ((h.autoclearFeatures() & Qcow2Header.AUTOCLEAR_BITMAPS) != 0) {
            for (Qcow2Header.Extension e : h.unknownExtensions()) {
                if (e.type() == Qcow2Header.EXT_BITMAPS) {
                    walkBitmaps(ByteBuffer.wrap(e.data()));
                }
            }
        }
        if (!addRef(rc.tableOffset(), (long) rc.tableClusters() * clusterSize) && repairAll) {
            // the refcount table reaches past the end of the file (only opens for check take it;
            // it reads as zeroes there). qemu's -r all rebuilds only where the refcounts ask for it,
            // so a table whose part inside the file is right stays as it is, and every later check
            // reports it again; ours rebuilds the refcount structure, which puts the table inside
            rebuild = true;
        }
        long[] table = rc.table();
        long grown = growForRefcountBlocks(table);
        for (int i = 0; i < table.length; i++) {
            long b = table[i];
            if (rc.hasReservedBits(i)) {
                // as qemu: the block is not counted, and only a new refcount structure is trusted
                findings.accept("ERROR refcount table entry " + i + " has reserved bits set");
                corruptions++;
                rebuild = true;
                continue;
            }
            if (b != 0) {
                if ((b & (clusterSize - 1)) != 0) {
                    findings.accept("ERROR refcount block " + i + " is not cluster aligned; refcount table entry"
                            + " corrupted");
                    corruptions++;
                    rebuild = true; // as qemu: only a new refcount structure repairs the entry
                    continue;
                }
                long c = b >>> clusterBits;
                if (c >= grown) {
                    if (!outsideImage(i, b)) {
                        continue;
                    }
                    grown = c + 1;
                }
                addRef(b, clusterSize);
                if (c < refs.length && refs[(int) c] != 1) {
                    // something else (an L2 table, data) claims the block too: only a rebuild untangles it
                    findings.accept("ERROR refcount block " + i + " refcount=" + Integer.toUnsignedLong(refs[(int) c]));
                    corruptions++;
                    rebuild = true;
                }
            }
        }
    }

    /**
     * A refcount table entry points past the end of the file. As qemu: plain check and -r leaks
     * report it; -r all grows the file so the block lies inside it (the block reads as zeroes:
     * every cluster it describes has refcount 0, so the rebuild follows) and counts the block as
     * referenced. Where the growth fails, qemu says why and the rebuild, which builds a table
     * without the entry, repairs the image instead: past 2^63 bytes the size is invalid, and ours
     * also fails the growth past {@link #MAX_GROWN_CLUSTERS} clusters (the counters and the
     * rebuild's copy of them must fit a small heap), with qemu's words for a size past the file
     * system's limit; qemu grows the file up to that limit (16 TiB on ext4). Returns whether the
     * block now lies inside the file.
     */
    private boolean outsideImage(int index, long offset) throws BlockException {
        if (!repairAll) {
            findings.accept("ERROR refcount block " + index + " is outside image");
            corruptions++;
            return false;
        }
        findings.accept("Repairing refcount block " + index + " is outside image");
        if (growable(offset)) {
            corruptionsFixed++;
            return true;
        }
        findings.accept("ERROR could not resize image: "
                + (offset < 0 || offset > Long.MAX_VALUE - clusterSize ? "Invalid argument" : "File too large"));
        corruptions++;
        rebuild = true;
        return false;
    }

    /** Whether -r all grows the file to bring the refcount block at {@code offset} inside it. */
    private boolean growable(long offset) {
        return offset >= 0 && offset >>> clusterBits < MAX_GROWN_CLUSTERS;
    }

    /**
     * With -r all, grows the file (and the counters) once, to the end of the farthest refcount
     * block that {@link #outsideImage} brings inside: the size qemu's growth entry by entry ends
     * at, without copying the counters once per entry. Returns the cluster count before.
     */
    private long growForRefcountBlocks(long[] table) throws BlockException {
        long before = refs.length;
        if (!repairAll) {
            return before;
        }
        long end = before;
        Refcounts rc = node.refcounts();
        for (int i = 0; i < table.length; i++) {
            long b = table[i];
            long c = b >>> clusterBits;
            if (b != 0 && !rc.hasReservedBits(i) && (b & (clusterSize - 1)) == 0 && c >= end && growable(b)) {
                end = c + 1;
            }
        }
        if (end > before) {
            file.ensureSize(end << clusterBits);
            refs = java.util.Arrays.copyOf(refs, (int) end);
        }
        return before;
    }

    /** The largest cluster count the file is grown to when -r all brings a refcount block into it. */
    static final long MAX_GROWN_CLUSTERS = 1L << 20;

    /**
     * Stored refcounts as qemu's check reads them (0 where the refcount block lies past the end of
     * the file), decoded a window at a time: check asks for every cluster's, millions on a large
     * image, nearly always in order. A phase that changes refcounts other than the one it just
     * read makes a new reader.
     */
    private static final class StoredRefcounts {
        private static final int MAX_WINDOW_BITS = 16;
        private final Refcounts rc;
        private final int windowBits;
        private final long[] window;
        private long loaded = -1;
        private BlockException failure;

        StoredRefcounts(Refcounts rc) {
            this.rc = rc;
            this.windowBits = Math.min(Integer.numberOfTrailingZeros(rc.blockEntries()), MAX_WINDOW_BITS);
            this.window = new long[1 << windowBits];
        }

        long get(long cluster) throws BlockException {
            long w = cluster >>> windowBits;
            if (w != loaded) {
                loaded = w;
                failure = null;
                try {
                    rc.storedRange(w << windowBits, window, window.length);
                } catch (BlockException e) {
                    failure = e; // every cluster of the block fails alike, as its lookups did one by one
                }
            }
            if (failure != null) {
                throw failure;
            }
            return window[(int) (cluster & (window.length - 1))];
        }
    }

    /**
     * Stored against counted refcounts (qemu's compare_refcounts): a stored 0 asks for a rebuild;
     * leaks are repaired with {@code fix} LEAKS or ALL, refcounts that are too low only with ALL.
     */
    private void compare(CheckResult.Repair fix) throws BlockException {
        Refcounts rc = node.refcounts();
        // repairs below change only the refcount just read: one reader serves the whole loop
        StoredRefcounts reader = new StoredRefcounts(rc);
        boolean repaired = false;
        for (int i = 0; i < refs.length; i++) {
            long stored;
            try {
                stored = reader.get(i);
            } catch (BlockException e) {
                findings.accept("Can't get refcount for cluster " + i + ": Input/output error");
                checkErrors++;
                continue;
            }
            long counted = Integer.toUnsignedLong(refs[i]);
            if (stored > 0 || counted > 0) {
                highest = i;
            }
            if (stored == counted) {
                continue;
            }
            boolean fixable = false;
            if (stored == 0) {
                rebuild = true;
            } else if (stored > counted && fix != CheckResult.Repair.NONE) {
                fixable = true;
            } else if (stored < counted && fix == CheckResult.Repair.ALL) {
                fixable = true;
            }
            findings.accept((fixable ? "Repairing" : stored < counted ? "ERROR" : "Leaked") + " cluster " + i
                    + " refcount=" + stored + " reference=" + counted);
            if (fixable && rc.repairSet(i, counted)) {
                repaired = true;
                if (counted == 0) {
                    freed.add((long) i << clusterBits);
                }
                if (stored > counted) {
                    leaksFixed++;
                } else {
                    corruptionsFixed++;
                }
                continue;
            }
            if (stored < counted) {
                corruptions++;
            } else {
                leaks++;
            }
        }
        if (repaired) {
            rc.writeAll();
        }
        // as qemu: clusters a repair frees are discarded in the file below (holes read as zero)
        for (long off : freed) {
            try {
                file.node().discard(off, clusterSize);
            } catch (BlockException e) {
                // discarding is advisory: the cluster is free either way
            }
        }
        freed.clear();
    }

    /** Host clusters whose repair left them free, to be discarded after the refcounts are written. */
    private final java.util.List<Long> freed = new java.util.ArrayList<>();

    /**
     * COPIED must be set exactly where the refcount is 1, in the active tables only (qemu's
     * check_oflag_copied); with -r all the L1 entry or L2 entry is set right.
     */
    private void checkCopied(boolean fix) throws BlockException {
        StoredRefcounts stored = new StoredRefcounts(node.refcounts()); // this phase changes no refcount
        long[] l1 = node.activeL1();
        int step = h.extendedL2() ? 2 : 1;
        for (int li = 0; li < l1.length; li++) {
            long e = l1[li];
            long off = e & Qcow2Node.L1_OFFSET_MASK;
            if (off == 0) {
                continue;
            }
            long refcount;
            try {
                refcount = stored.get(off >>> clusterBits);
            } catch (BlockException ex) {
                continue;
            }
            if ((refcount == 1) != ((e & Qcow2Node.OFLAG_COPIED) != 0)) {
                corruptions++;
                findings.accept((fix ? "Repairing" : "ERROR") + " OFLAG_COPIED L2 cluster: l1_index=" + li
                        + " l1_entry=" + Long.toHexString(e) + " refcount=" + refcount);
                if (fix) {
                    l1[li] = refcount == 1 ? e | Qcow2Node.OFLAG_COPIED : e & ~Qcow2Node.OFLAG_COPIED;
                    node.markL1Dirty(li);
                    corruptions--;
                    corruptionsFixed++;
                }
            }
            if ((off & (clusterSize - 1)) != 0 || off >= file.size()) {
                continue;
            }
            L2Cache.Table t = node.l2Table(off);
            int dirty = 0;
            for (int i = 0; i < t.words.length; i += step) {
                long w = t.words[i];
                long host = w & Qcow2Node.L2_OFFSET_MASK;
                if ((w & Qcow2Node.OFLAG_COMPRESSED) != 0 || host == 0 && !node.external()) {
                    continue;
                }
                if (node.external() && host == 0 && (w & Qcow2Node.OFLAG_COPIED) == 0) {
                    continue; // unallocated in a data file image
                }
                long count;
                try {
                    count = node.external() ? 1 : stored.get(host >>> clusterBits);
                } catch (BlockException ex) {
                    continue;
                }
                if ((count == 1) != ((w & Qcow2Node.OFLAG_COPIED) != 0)) {
                    corruptions++;
                    findings.accept((fix ? "Repairing" : "ERROR") + " OFLAG_COPIED data cluster: l2_entry="
                            + Long.toHexString(w) + " refcount=" + count);
                    if (fix) {
                        t.words[i] = count == 1 ? w | Qcow2Node.OFLAG_COPIED : w & ~Qcow2Node.OFLAG_COPIED;
                        dirty++;
                    }
                }
            }
            if (dirty > 0) {
                t.dirty = true;
                corruptions -= dirty;
                corruptionsFixed += dirty;
            }
        }
    }

    private void walkL1(long[] l1, boolean active) throws BlockException {
        Compression comp = node.compression();
        for (long e : l1) {
            if ((e & L1_RESERVED) != 0) {
                findings.accept("ERROR found L1 entry with reserved bits set: " + Long.toHexString(e));
                corruptions++;
            }
            long off = e & Qcow2Node.L1_OFFSET_MASK;
            if (off == 0) {
                if (e != 0 && (e & L1_RESERVED) == 0) {
                    // flags without a table: qemu-img walks the header as if it were the L2 table
                    // and reports what it finds there; reads see no L2 table. Either way corrupt.
                    findings.accept("ERROR l1_entry=" + Long.toHexString(e) + ": flags without an L2 table;"
                            + " L1 entry corrupted");
                    corruptions++;
                }
                continue;
            }
            if ((off & (clusterSize - 1)) != 0) {
                findings.accept("ERROR l2_offset=" + Long.toHexString(off) + ": Table is not cluster aligned; L1"
                        + " entry corrupted");
                corruptions++;
                continue;
            }
            addRef(off, clusterSize);
            if (off >= file.size()) {
                continue; // reported by addRef
            }
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
                long bitmap = h.extendedL2() ? t.words[i + 1] : 0;
                if ((w & Qcow2Node.OFLAG_COMPRESSED) != 0) {
                    if ((w & Qcow2Node.OFLAG_COPIED) != 0) {
                        findings.accept("ERROR: coffset=0x" + Long.toHexString(comp.refStart(w))
                                + ": copied flag must never be set for compressed clusters");
                        corruptions++;
                    }
                    if (bitmap != 0) {
                        findings.accept("ERROR compressed cluster " + i / step
                                + " with non-zero subcluster allocation bitmap, entry=0x" + Long.toHexString(w));
                        corruptions++;
                        continue;
                    }
                    addRef(comp.refStart(w), comp.refLength(w));
                    if (active) {
                        allocated++;
                        compressed++;
                        fragmented++; // compressed clusters are fragmented by nature
                    }
                    continue;
                }
                if ((w & L2_STD_RESERVED) != 0) {
                    findings.accept("ERROR found l2 entry with reserved bits set: " + Long.toHexString(w));
                    corruptions++;
                }
                long host = w & Qcow2Node.L2_OFFSET_MASK;
                if (host == 0 && !(node.external() && (w & Qcow2Node.OFLAG_COPIED) != 0)) {
                    boolean zeroPlain = !h.extendedL2() && (w & Qcow2Node.OFLAG_ZERO) != 0;
                    if (!zeroPlain && (bitmap & Qcow2Node.ALL_SUBCLUSTERS) != 0) {
                        findings.accept("ERROR: Unallocated cluster has non-zero subcluster allocation map");
                        corruptions++;
                    }
                    continue;
                }
                if (((bitmap >>> 32) & bitmap) != 0) {
                    findings.accept("ERROR offset=" + Long.toHexString(host)
                            + ": Allocated cluster has corrupted subcluster allocation bitmap");
                    corruptions++;
                }
                if ((host & (clusterSize - 1)) != 0) {
                    // as qemu: reported, and the misaligned range is still counted as referenced
                    boolean hasData = h.extendedL2() ? (t.words[i + 1] & Qcow2Node.ALL_SUBCLUSTERS) != 0
                            : (w & Qcow2Node.OFLAG_ZERO) == 0;
                    boolean fix = !hasData && repairAll;
                    findings.accept((fix ? "Repairing" : "ERROR") + " offset=" + Long.toHexString(host) + ": "
                            + (hasData ? "Data" : "Preallocated") + " cluster is not properly aligned; L2 entry corrupted.");
                    corruptions++;
                    if (fix) {
                        // as qemu: a misplaced preallocated zero cluster becomes a plain zero cluster
                        // (allocated subclusters become zero ones) and stops counting as a reference
                        zeroEntry(t, i, active);
                        corruptions--;
                        corruptionsFixed++;
                        continue;
                    }
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

    /** Turns L2 entry {@code i} of {@code t} into a zero cluster, in the cache (active) or on disk. */
    private void zeroEntry(L2Cache.Table t, int i, boolean active) throws BlockException {
        if (h.extendedL2()) {
            long bm = t.words[i + 1];
            t.words[i] = 0;
            t.words[i + 1] = (bm | bm << 32) & ~Qcow2Node.ALL_SUBCLUSTERS;
        } else {
            t.words[i] = Qcow2Node.OFLAG_ZERO;
        }
        if (active) {
            t.dirty = true;
        } else {
            ByteBuffer b = ByteBuffer.allocate(h.extendedL2() ? 16 : 8);
            b.putLong(t.words[i]);
            if (h.extendedL2()) {
                b.putLong(t.words[i + 1]);
            }
            file.write(t.offset + 8L * i, b.flip());
        }
    }

    /** Whether any byte of {@code b} in {@code [from, to)} is not zero. */
    private static boolean nonZero(ByteBuffer b, long from, long to) {
        for (long p = from; p < to; p++) {
            if (b.get((int) p) != 0) {
                return true;
            }
        }
        return false;
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
            long end = pos + 24 + extra + nameSize;
            pos += (int) ((24 + extra + nameSize + 7) & ~7L);
            if (nonZero(dir, end, Math.min(pos, dir.limit()))) {
                // qemu-img does not look at the padding; ours is counted (normal opens refuse such
                // a directory). -r (leaks or all) opens read-write, which stores the directory
                // anew, padding zero, before the check runs (qemu's stores it at close)
                findings.accept("ERROR bitmap directory entry " + i + " has padding that is not zero");
                corruptions++;
            }
            if (tableEntries == 0) {
                continue;
            }
            if (tableEntries * 8 > Qcow2Header.MAX_L1_BYTES || (tableOffset & (clusterSize - 1)) != 0
                    || tableOffset <= 0) {
                corruptions++;
                continue;
            }
            // as qemu: a table past the end of the file is reported by its reference and read as
            // zeroes (opens for check take such a table, see BitmapDirectory.read)
            addRef(tableOffset, tableEntries * 8);
            ByteBuffer table = ByteBuffer.allocate((int) (tableEntries * 8));
            file.readClamped(tableOffset, table);
            table.clear();
            for (int k = 0; k < tableEntries; k++) {
                long data = table.getLong(k * 8) & Qcow2Node.L2_OFFSET_MASK;
                if (data != 0) {
                    addRef(data, clusterSize);
                }
            }
        }
    }
}
