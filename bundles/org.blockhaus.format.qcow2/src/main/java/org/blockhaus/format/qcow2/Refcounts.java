package org.blockhaus.format.qcow2;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import org.blockhaus.api.BlockException;

/**
 * Host cluster management: the two-level refcount structure (refcount table, refcount blocks),
 * cluster allocation, and the write ordering that keeps a killed writer from corrupting the image.
 *
 * <p>Increases are cached and written before any L2 entry that uses them ({@link #writeIncreases});
 * decreases are only queued ({@link #queueFree}) and applied after the L2/L1 tables that stopped
 * using the clusters are on disk ({@link #applyQueuedFrees}). Either way a crash between the steps
 * leaves leaked clusters at worst, never a referenced cluster with refcount 0.
 */
final class Refcounts {
    private final HostFile file;
    private final int clusterBits;
    private final int clusterSize;
    private final int refcountBits;
    private final long maxRefcount;
    /** Refcount entries per refcount block. */
    private final int blockEntries;
    private final int blockEntryBits;

    private long tableOffset;
    private int tableClusters;
    private long[] table;
    private boolean tableDirty;
    /** Cached refcount blocks, least recently used first; bounded by {@link #maxBlocks}. */
    private final java.util.LinkedHashMap<Long, Block> blocks = new java.util.LinkedHashMap<>(16, 0.75f, true);
    /** The block block() returned last (a memo in front of {@link #blocks}); null or evicted: none. */
    private Block lastBlock;
    private final int maxBlocks;
    /** Tests shrink the cache to exercise write-back; 0 = the normal bound. */
    static volatile int maxBlocksForTests;
    private final List<long[]> queuedFrees = new ArrayList<>();
    /** No cluster below this index is free. */
    private long freeHint;
    /** Changes whenever refcounts drop, so cached "this cluster is in use" facts can be dropped. */
    private long freeGeneration;

    /** One refcount block in memory. */
    private static final class Block {
        final long offset;
        final byte[] data;
        boolean dirty;
        /** Set when the block leaves the cache, so that the one-block memo in block() drops it. */
        boolean evicted;

        Block(long offset, byte[] data) {
            this.offset = offset;
            this.data = data;
        }
    }

    /** Called when the refcount table moves, to rewrite the header fields that point to it. */
    interface TableMoved {
        void moved(long offset, int clusters) throws BlockException;
    }

    private final TableMoved tableMoved;

    /** Says whether a host cluster holds metadata we know of (header, L1, refcount or snapshot tables). */
    interface MetadataGuard {
        boolean isMetadata(long cluster);
    }

    private MetadataGuard guard = c -> c == 0;

    void setGuard(MetadataGuard guard) {
        this.guard = guard;
    }

    /** Runs before a refcount grows (lazy refcounts set the dirty bit there, as qemu does). */
    interface BeforeIncrease {
        void run() throws BlockException;
    }

    private BeforeIncrease beforeIncrease = () -> { };

    void setBeforeIncrease(BeforeIncrease hook) {
        this.beforeIncrease = hook;
    }

    /** Refcount table entries with reserved bits set (check opens only; the others refuse them). */
    private final java.util.BitSet reservedBits = new java.util.BitSet();

    Refcounts(HostFile file, Qcow2Header h, TableMoved tableMoved) throws BlockException {
        this(file, h, tableMoved, false);
    }

    /**
     * @param forCheck an open for check (qemu's BDRV_O_CHECK): a table entry with reserved bits
     *        set is kept, as its offset part (qemu reads the refcounts there too), and remembered
     *        for check to report and rebuild, instead of refusing the image; the part of the table
     *        past the end of the file reads as zeroes
     */
    Refcounts(HostFile file, Qcow2Header h, TableMoved tableMoved, boolean forCheck) throws BlockException {
        this.file = file;
        this.clusterBits = h.clusterBits();
        this.clusterSize = h.clusterSize();
        this.refcountBits = h.refcountBits();
        this.maxRefcount = refcountBits == 64 ? Long.MAX_VALUE : (1L << refcountBits) - 1;
        this.blockEntries = clusterSize * 8 / refcountBits;
        this.blockEntryBits = Integer.numberOfTrailingZeros(blockEntries);
        this.tableOffset = h.refcountTableOffset();
        this.tableClusters = h.refcountTableClusters();
        this.tableMoved = tableMoved;
        this.maxBlocks = maxBlocksForTests > 0 ? maxBlocksForTests : Math.max(16, (16 << 20) / clusterSize);
        int n = (int) ((long) tableClusters * clusterSize / 8);
        ByteBuffer t;
        if (forCheck) {
            // as qemu's check: a table reaching past the end of the file reads as zeroes there
            // (check reports the reference to the region past the end); the header checked that
            // offset + length does not overflow
            t = ByteBuffer.allocate(n * 8);
            file.readClamped(tableOffset, t);
            t.clear();
        } else {
            t = file.read(tableOffset, n * 8, "Reference count table");
        }
        table = new long[n];
        for (int i = 0; i < n; i++) {
            table[i] = t.getLong();
            if ((table[i] & 0x1ffL) != 0) {
                if (!forCheck) {
                    throw Qcow2Header.corrupt("Reference count table entry " + i + " has reserved bits set");
                }
                reservedBits.set(i);
                table[i] &= ~0x1ffL;
            }
        }
    }

    int refcountBits() {
        return refcountBits;
    }

    /** Whether table entry {@code index} had reserved bits set (only a check open gets this far). */
    boolean hasReservedBits(int index) {
        return reservedBits.get(index);
    }

    long tableOffset() {
        return tableOffset;
    }

    int tableClusters() {
        return tableClusters;
    }

    long[] table() {
        return table;
    }

    int blockEntries() {
        return blockEntries;
    }

    private Block block(int tableIndex) throws BlockException {
        long off = table[tableIndex];
        if (off == 0) {
            return null;
        }
        Block last = lastBlock;
        if (last != null && last.offset == off && !last.evicted) {
            // check and allocation ask for neighbouring clusters one by one: millions of lookups
            // of the same block, each a boxed key and a hash lookup without this memo
            return last;
        }
        Block b = blocks.get(off);
        if (b == null) {
            if ((off & (clusterSize - 1)) != 0) {
                throw Qcow2Header.corrupt("Refcount block offset " + off + " is not cluster aligned");
            }
            ByteBuffer data = file.read(off, clusterSize, "Refcount block");
            b = new Block(off, data.array());
            cache(b);
        }
        lastBlock = b;
        return b;
    }

    /**
     * Caches a block, writing back the least recently used one if the cache is full. Dirty blocks
     * hold only increases between flushes (decreases are written as soon as they are applied),
     * so writing one early can only leak clusters, never lose a reference.
     */
    private void cache(Block b) throws BlockException {
        Block replaced = blocks.put(b.offset, b);
        if (replaced != null && replaced != b) {
            replaced.evicted = true;
        }
        if (blocks.size() > maxBlocks) {
            Block eldest = blocks.values().iterator().next();
            if (eldest != b) {
                if (eldest.dirty) {
                    file.write(eldest.offset, eldest.data.clone());
                    eldest.dirty = false;
                }
                blocks.remove(eldest.offset);
                eldest.evicted = true;
            }
        }
    }

    /** The refcount of host cluster {@code index}. */
    long get(long index) throws BlockException {
        long ti = index >>> blockEntryBits;
        if (ti >= table.length) {
            return 0;
        }
        Block b = block((int) ti);
        return b == null ? 0 : entry(b.data, (int) (index & (blockEntries - 1)));
    }

    /**
     * The refcounts of clusters {@code first} to {@code first + n - 1}, which lie in one refcount
     * block, into {@code out}, as check reads them: 0 where there is no block or where the block
     * lies at or past the end of the file (see {@link #blockPastEnd}).
     */
    void storedRange(long first, long[] out, int n) throws BlockException {
        long ti = first >>> blockEntryBits;
        if (ti >= table.length || blockPastEnd(first) || table[(int) ti] == 0) {
            java.util.Arrays.fill(out, 0, n, 0);
            return;
        }
        byte[] d = block((int) ti).data;
        int e = (int) (first & (blockEntries - 1));
        if (refcountBits == 16) { // the default width: decoded without a call per entry
            for (int k = 0; k < n; k++, e++) {
                out[k] = (d[2 * e] & 0xffL) << 8 | (d[2 * e + 1] & 0xffL);
            }
            return;
        }
        for (int k = 0; k < n; k++, e++) {
            out[k] = entry(d, e);
        }
    }

    /**
     * Whether the refcount block that holds cluster {@code index}'s refcount starts at or past the
     * end of the file. qemu's check reads such a block as zeroes (a read past the end of the
     * file), so every refcount it describes is 0; our reads refuse the range, so check asks first.
     */
    boolean blockPastEnd(long index) {
        long ti = index >>> blockEntryBits;
        if (ti >= table.length) {
            return false;
        }
        long off = table[(int) ti];
        return off != 0 && off >= file.size();
    }

    private long entry(byte[] d, int i) {
        switch (refcountBits) {
            case 1, 2, 4 -> {
                int bitPos = i * refcountBits;
                return (d[bitPos >>> 3] >>> (bitPos & 7)) & ((1 << refcountBits) - 1);
            }
            case 8 -> {
                return Byte.toUnsignedLong(d[i]);
            }
            case 16 -> {
                return ((d[2 * i] & 0xffL) << 8) | (d[2 * i + 1] & 0xffL);
            }
            case 32 -> {
                // assembled by hand: a ByteBuffer wrapper per lookup is an allocation C1 keeps
                int p = 4 * i;
                return (d[p] & 0xffL) << 24 | (d[p + 1] & 0xffL) << 16 | (d[p + 2] & 0xffL) << 8 | d[p + 3] & 0xffL;
            }
            default -> {
                long v = 0;
                for (int p = 8 * i, end = p + 8; p < end; p++) {
                    v = v << 8 | (d[p] & 0xffL);
                }
                return v;
            }
        }
    }

    private void setEntry(byte[] d, int i, long v) {
        putEntry(d, refcountBits, i, v);
    }

    /** Stores refcount {@code v} as entry {@code i} of a block of {@code refcountBits}-wide entries. */
    static void putEntry(byte[] d, int refcountBits, int i, long v) {
        switch (refcountBits) {
            case 1, 2, 4 -> {
                int bitPos = i * refcountBits;
                int mask = ((1 << refcountBits) - 1) << (bitPos & 7);
                d[bitPos >>> 3] = (byte) ((d[bitPos >>> 3] & ~mask) | ((int) v << (bitPos & 7)) & mask);
            }
            case 8 -> d[i] = (byte) v;
            case 16 -> {
                d[2 * i] = (byte) (v >>> 8);
                d[2 * i + 1] = (byte) v;
            }
            case 32 -> ByteBuffer.wrap(d).putInt(4 * i, (int) v);
            default -> ByteBuffer.wrap(d).putLong(8 * i, v);
        }
    }

    /** Sets a refcount whose refcount block exists. */
    private void set(long index, long value) throws BlockException {
        long ti = index >>> blockEntryBits;
        Block b = ti < table.length ? block((int) ti) : null;
        if (b == null) {
            throw new IllegalStateException("no refcount block for cluster " + index);
        }
        setEntry(b.data, (int) (index & (blockEntries - 1)), value);
        b.dirty = true;
    }

    private boolean hasBlock(long index) {
        long ti = index >>> blockEntryBits;
        return ti < table.length && table[(int) ti] != 0;
    }

    /** The largest refcount the entry width holds. */
    long maxRefcount() {
        return maxRefcount;
    }

    /** Adds one reference to each cluster of {@code [index, index+count)}; blocks must exist. */
    void increment(long index, long count) throws BlockException {
        beforeIncrease.run();
        for (long i = index; i < index + count; i++) {
            long v = get(i);
            if (v >= maxRefcount) {
                throw Qcow2Header.corrupt("Refcount of cluster " + i + " would overflow " + refcountBits + " bits");
            }
            set(i, v + 1);
        }
    }

    /**
     * Allocates {@code n} contiguous free clusters, creating refcount blocks (which count themselves)
     * and growing the refcount table as needed. Returns the host offset of the first cluster.
     */
    long allocate(int n) throws BlockException {
        beforeIncrease.run();
        while (true) {
            long start = findFree(freeHint, n);
            for (long c = start; c < start + n; c++) {
                // A free cluster that holds metadata means the refcounts lie: refuse rather than overwrite.
                if (guard.isMetadata(c) || isRefcountBlock(c << clusterBits)) {
                    throw Qcow2Header.corrupt("Refcounts are corrupt: metadata cluster " + c
                            + " has refcount 0 and would be overwritten; run 'qemu-img check -r all'");
                }
            }
            long missing = -1;
            for (long ti = start >>> blockEntryBits; ti <= (start + n - 1) >>> blockEntryBits; ti++) {
                if (ti >= table.length || table[(int) ti] == 0) {
                    missing = ti;
                    break;
                }
            }
            if (missing < 0) {
                for (long i = start; i < start + n; i++) {
                    set(i, 1);
                }
                if (n == 1 || start == freeHint) {
                    freeHint = start + n; // every cluster below a single-cluster find was in use
                }
                return start << clusterBits;
            }
            // The range needs a refcount block that does not exist yet: put it at 'start'.
            if (missing >= table.length) {
                growTable(missing + 1);
                continue; // the table moved: look again
            }
            long blockOffset = start << clusterBits;
            Block b = new Block(blockOffset, new byte[clusterSize]);
            b.dirty = true;
            cache(b);
            table[(int) missing] = blockOffset;
            if (blockOffsets != null) {
                blockOffsets.add(blockOffset);
            }
            tableDirty = true;
            // It counts itself if it covers 'start'; otherwise 'start' lies in an existing block.
            set(start, 1); // the block reaches the file when refcounts are written
        }
    }

    private boolean isRefcountBlock(long offset) {
        if (blockOffsets == null) {
            blockOffsets = new java.util.HashSet<>();
            for (long b : table) {
                if (b != 0) {
                    blockOffsets.add(b);
                }
            }
        }
        return blockOffsets.contains(offset);
    }

    /** Offsets of all refcount blocks, built on first use and kept up to date. */
    private java.util.Set<Long> blockOffsets;

    /** First index at or after {@code from} that begins {@code n} free clusters. */
    private long findFree(long from, int n) throws BlockException {
        long i = from;
        long run = 0;
        while (run < n) {
            long ti = (i + run) >>> blockEntryBits;
            if (ti >= table.length || table[(int) ti] == 0) {
                // a whole missing block is free: skip across it
                long blockEnd = (ti + 1) << blockEntryBits;
                run = blockEnd - i;
                if (ti >= table.length) {
                    return i;
                }
                continue;
            }
            if (get(i + run) == 0) {
                run++;
            } else {
                i = i + run + 1;
                run = 0;
            }
        }
        return i;
    }

    /**
     * The allocator's search without its side effects: the first index at or after {@code from}
     * (and the free hint, below which nothing is free) that begins {@code n} clusters with refcount
     * 0 none of which is {@code excluded}. Nothing is marked: {@link MetadataCommit} places new
     * metadata there and counts it in the refcount structure it writes itself.
     */
    long findFree(long from, int n, java.util.function.LongPredicate excluded) throws BlockException {
        long i = Math.max(from, freeHint);
        long run = 0;
        while (run < n) {
            long c = i + run;
            if (!excluded.test(c) && get(c) == 0) {
                run++;
            } else {
                i = c + 1;
                run = 0;
            }
        }
        return i;
    }

    /** Moves the refcount table to a bigger place at the end of the used space. */
    private void growTable(long minEntries) throws BlockException {
        int perCluster = clusterSize / 8;
        long entries = Math.max(minEntries + 1, (long) table.length * 3 / 2 + 1);
        long used = highestUsedCluster() + 1;
        long start = Math.max(used, Qcow2Header.ceilShift(file.size(), clusterBits));
        while (true) {
            long tClusters = (entries + perCluster - 1) / perCluster;
            if (tClusters * clusterSize > Qcow2Header.MAX_REFTABLE_BYTES) {
                throw new org.blockhaus.api.BlockException(org.blockhaus.api.BlockException.Reason.NO_SPACE,
                        "qcow2: the reference count table would exceed " + Qcow2Header.MAX_REFTABLE_BYTES + " bytes");
            }
            // New blocks go right after the new table; each must be covered by the new table.
            long end = start + tClusters;
            long[] newTable = java.util.Arrays.copyOf(table, (int) (tClusters * perCluster));
            List<Long> newBlocks = new ArrayList<>();
            boolean fits = true;
            for (long c = start; c < end; c++) {
                long ti = c >>> blockEntryBits;
                if (ti >= newTable.length) {
                    fits = false;
                    break;
                }
                if (newTable[(int) ti] == 0) {
                    newTable[(int) ti] = end << clusterBits;
                    newBlocks.add(end << clusterBits);
                    end++;
                }
            }
            if (!fits) {
                entries = entries * 2;
                continue;
            }
            for (long c = start; c < end; c++) {
                if (get(c) != 0) {
                    throw Qcow2Header.corrupt("cluster " + c + " past the end of the image has a refcount");
                }
            }
            long oldOffset = tableOffset;
            int oldClusters = tableClusters;
            table = newTable;
            blockOffsets = null; // rebuilt from the new table when needed
            for (long off : newBlocks) {
                Block b = new Block(off, new byte[clusterSize]);
                b.dirty = true;
                cache(b);
            }
            for (long c = start; c < end; c++) {
                set(c, 1);
            }
            file.ensureSize(end << clusterBits);
            tableOffset = start << clusterBits;
            tableClusters = (int) tClusters;
            // Blocks first, then the table, then the header that points to it.
            writeBlocks();
            file.flush();
            writeTable();
            file.flush();
            tableMoved.moved(tableOffset, tableClusters);
            file.flush();
            queueFree(oldOffset, (long) oldClusters << clusterBits);
            return;
        }
    }

    long highestUsedCluster() throws BlockException {
        long hi = -1;
        for (int ti = 0; ti < table.length; ti++) {
            if (table[ti] != 0) {
                hi = Math.max(hi, table[ti] >>> clusterBits);
                Block b = block(ti);
                for (int i = blockEntries - 1; i >= 0; i--) {
                    if (entry(b.data, i) != 0) {
                        hi = Math.max(hi, ((long) ti << blockEntryBits) + i);
                        break;
                    }
                }
            }
        }
        return hi;
    }

    /** Queues a decrease for every cluster touched by {@code [offset, offset+bytes)}. */
    void queueFree(long offset, long bytes) {
        queueFree(offset, bytes, false);
    }

    /**
     * As {@link #queueFree(long, long)}; with {@code punch} the clusters that reach zero are
     * punched out of the file after the counts are on disk (qemu's discards of freed clusters: a
     * shrink's, a discard request's under pass-discard-request, a repaired snapshot table's).
     */
    void queueFree(long offset, long bytes, boolean punch) {
        if (bytes <= 0) {
            return;
        }
        queuedFrees.add(new long[] {offset >>> clusterBits, (offset + bytes - 1) >>> clusterBits, punch ? 1 : 0});
    }

    boolean hasQueuedFrees() {
        return !queuedFrees.isEmpty();
    }

    boolean dirty() {
        if (tableDirty) {
            return true;
        }
        for (Block b : blocks.values()) {
            if (b.dirty) {
                return true;
            }
        }
        return false;
    }

    /** Step 1 of a flush: every increase (and new block) on disk before the L2 entries using it. */
    void writeIncreases() throws BlockException {
        if (!dirty()) {
            return;
        }
        writeBlocks();
        file.flush();
        if (tableDirty) {
            writeTable();
            file.flush();
        }
    }

    /** Last step of a flush: the decreases, now that no table on disk refers to those clusters. */
    void applyQueuedFrees() throws BlockException {
        if (queuedFrees.isEmpty()) {
            return;
        }
        freeGeneration++;
        List<long[]> freed = new ArrayList<>();
        for (long[] r : queuedFrees) {
            for (long i = r[0]; i <= r[1]; i++) {
                if (!hasBlock(i)) {
                    continue;
                }
                long v = get(i);
                if (v > 0) {
                    set(i, v - 1);
                    if (v == 1) {
                        freeHint = Math.min(freeHint, i);
                        if (r[2] != 0) {
                            addToRuns(freed, i);
                        }
                    }
                }
            }
        }
        queuedFrees.clear();
        writeBlocks();
        file.flush();
        punchRuns(freed); // after the counts are on disk: a crash in between leaves free clusters with old data
    }

    /** Adds cluster {@code index} to runs of ascending {@code [start, end)} cluster ranges. */
    static void addToRuns(List<long[]> runs, long index) {
        long[] last = runs.isEmpty() ? null : runs.get(runs.size() - 1);
        if (last != null && last[1] == index) {
            last[1] = index + 1;
        } else {
            runs.add(new long[] {index, index + 1});
        }
    }

    /** Punches runs of free clusters out of the file (qemu's discards of freed clusters; advisory). */
    void punchRuns(List<long[]> runs) {
        for (long[] run : runs) {
            file.punch(run[0] << clusterBits, (run[1] - run[0]) << clusterBits);
        }
    }

    private void writeBlocks() throws BlockException {
        List<Block> dirty = new ArrayList<>();
        for (Block b : blocks.values()) {
            if (b.dirty) {
                dirty.add(b);
            }
        }
        dirty.sort((a, b) -> Long.compare(a.offset, b.offset));
        for (Block b : dirty) {
            file.write(b.offset, b.data.clone());
            b.dirty = false;
        }
    }

    private void writeTable() throws BlockException {
        ByteBuffer t = ByteBuffer.allocate(tableClusters * clusterSize);
        for (long e : table) {
            t.putLong(e);
        }
        t.flip();
        file.write(tableOffset, t);
        tableDirty = false;
    }

    /**
     * The flush of lazy refcounts (the image's dirty bit is set): queued decreases are applied and
     * every changed block and the table are written, in no particular order and without a sync;
     * the caller syncs once. A crash in between is repaired by the rebuild of a dirty image.
     */
    void writeDeferred() throws BlockException {
        if (!queuedFrees.isEmpty()) {
            freeGeneration++;
            for (long[] r : queuedFrees) {
                for (long i = r[0]; i <= r[1]; i++) {
                    long v = hasBlock(i) ? get(i) : 0;
                    if (v > 0) {
                        set(i, v - 1);
                        if (v == 1) {
                            freeHint = Math.min(freeHint, i);
                        }
                    }
                }
            }
            queuedFrees.clear();
        }
        writeBlocks();
        if (tableDirty) {
            writeTable();
        }
    }

    /**
     * After a shrink, as qemu does: refcount blocks that count nothing but themselves leave the
     * table and their clusters become free, so the file can end after the last used cluster. The
     * table reaches the disk first; a crash before the blocks' own counts drop leaks them at worst.
     * Callers have flushed everything else.
     */
    void dropUnusedBlocks() throws BlockException {
        List<Long> dropped = new ArrayList<>();
        for (int ti = 0; ti < table.length; ti++) {
            Block b = block(ti);
            if (b == null) {
                continue;
            }
            long self = b.offset >>> clusterBits;
            byte[] others = b.data.clone();
            if (self >>> blockEntryBits == ti) {
                setEntry(others, (int) (self & (blockEntries - 1)), 0);
            }
            if (!java.util.Arrays.equals(others, new byte[clusterSize])) {
                continue;
            }
            table[ti] = 0;
            blocks.remove(b.offset);
            b.evicted = true;
            dropped.add(self);
        }
        if (dropped.isEmpty()) {
            return;
        }
        writeTable();
        file.flush();
        freeGeneration++;
        for (long c : dropped) {
            if (hasBlock(c)) { // counted by a block that stays
                set(c, 0);
            }
            freeHint = Math.min(freeHint, c);
        }
        writeBlocks();
        file.flush();
    }

    /** Sets a refcount directly (check repair); creates no blocks. Returns false if the block is missing. */
    boolean repairSet(long index, long value) throws BlockException {
        if (!hasBlock(index)) {
            return false;
        }
        set(index, Math.min(value, maxRefcount));
        freeGeneration++;
        if (value == 0) {
            freeHint = Math.min(freeHint, index);
        }
        return true;
    }

    void writeAll() throws BlockException {
        writeBlocks();
        if (tableDirty) {
            writeTable();
        }
        file.flush();
    }

    /** Clusters with a refcount block, i.e. the clusters the table can describe right now. */
    long coveredClusters() {
        return (long) table.length << blockEntryBits;
    }

    long freeGeneration() {
        return freeGeneration;
    }

    void setFreeHint(long hint) {
        freeHint = hint;
    }
}
