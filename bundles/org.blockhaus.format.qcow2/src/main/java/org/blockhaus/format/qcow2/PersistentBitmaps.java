package org.blockhaus.format.qcow2;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.BitSet;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.spi.BitmapNode;
import org.blockhaus.format.qcow2.BitmapDirectory.Entry;

/**
 * The persistent dirty bitmaps of an open image, kept as QEMU keeps them.
 *
 * <p>Opening read-write marks every consistent bitmap {@code in_use} on disk before any guest
 * write, so a crash leaves them marked inconsistent; while open, each guest write, write-zeroes
 * and discard sets the bits of the enabled ({@code auto}) bitmaps in memory; closing writes the
 * changed bitmap data and tables to newly allocated clusters, then a new directory without
 * {@code in_use}, then frees the old clusters (so a crash at any point leaves either the old
 * state or the new one). A bitmap found {@code in_use} at open is inconsistent: it is listed,
 * kept as it is and may be removed, but not read, changed or tracked.
 *
 * <p>Bitmap data is held per bitmap-data cluster ("chunk"), loaded on first use, as words whose
 * bit order is the spec's (bit 0 of byte 0 is the first granule).
 */
final class PersistentBitmaps {
    private final Qcow2Node node;
    private final HostFile file;
    private final int clusterBits;
    private final int clusterSize;
    private final boolean readOnly;
    private final List<Bitmap> list = new ArrayList<>();
    /** The directory on disk now (size 0: none). */
    private long dirOffset;
    private long dirSize;

    private static final class Bitmap {
        Entry entry;
        /** Found in_use at open: never read, changed or tracked. */
        final boolean inconsistent;
        /** Null until first needed; entries as they will be stored. */
        long[] table;
        boolean tableChanged;
        final Map<Integer, long[]> chunks = new HashMap<>();
        final BitSet changedChunks = new BitSet();
        /** Clusters to free once the next directory no longer points at them. */
        final List<long[]> freeAfterStore = new ArrayList<>();

        Bitmap(Entry entry, boolean inconsistent) {
            this.entry = entry;
            this.inconsistent = inconsistent;
        }
    }

    private PersistentBitmaps(Qcow2Node node, boolean readOnly) {
        this.node = node;
        this.file = node.hostFile();
        this.clusterBits = node.header().clusterBits();
        this.clusterSize = node.header().clusterSize();
        this.readOnly = readOnly;
    }

    /**
     * Reads the bitmap directory (when the extension is there and the autoclear bit says it is
     * valid) and, for a read-write node, marks the consistent bitmaps in_use on disk.
     */
    static PersistentBitmaps open(Qcow2Node node, boolean readOnly) throws BlockException {
        PersistentBitmaps pb = new PersistentBitmaps(node, readOnly);
        Qcow2Header h = node.header();
        byte[] ext = extension(h);
        if (ext != null && h.version() >= 3 && (h.autoclearFeatures() & Qcow2Header.AUTOCLEAR_BITMAPS) != 0) {
            BitmapDirectory.Extension e = BitmapDirectory.parseExtension(ext, h.clusterBits(), node.hostFile().size());
            for (Entry entry : BitmapDirectory.read(node.hostFile(), e, h.clusterBits(), h.size(), node.forCheck())) {
                pb.list.add(new Bitmap(entry, entry.inUse()));
            }
            pb.dirOffset = e.directoryOffset();
            pb.dirSize = e.directorySize();
        }
        if (!readOnly && pb.list.stream().anyMatch(b -> !b.inconsistent)) {
            // Tables are checked before the first byte is written: a broken one fails the open, not a guest write.
            for (Bitmap b : pb.list) {
                if (!b.inconsistent) {
                    pb.table(b);
                }
            }
            for (Bitmap b : pb.list) {
                b.entry = b.entry.withFlags(b.entry.flags() | BitmapDirectory.FLAG_IN_USE);
            }
            pb.writeDirectory();
            node.flushLocked();
        }
        return pb;
    }

    static byte[] extension(Qcow2Header h) {
        for (Qcow2Header.Extension e : h.unknownExtensions()) {
            if (e.type() == Qcow2Header.EXT_BITMAPS) {
                return e.data();
            }
        }
        return null;
    }

    /** No bitmaps: nothing to track, and the autoclear bit need not stay set. */
    boolean isEmpty() {
        return list.isEmpty();
    }

    // ---- listing ----------------------------------------------------------------------------

    List<BitmapNode.Bitmap> list() {
        List<BitmapNode.Bitmap> out = new ArrayList<>();
        for (Bitmap b : list) {
            out.add(new BitmapNode.Bitmap(b.entry.name(), b.entry.granularity(), b.entry.auto(), b.inconsistent));
        }
        return out;
    }

    /** qemu-img info's "bitmaps" list: flags as on disk, then name and granularity. */
    List<Object> info() {
        List<Object> out = new ArrayList<>();
        for (Bitmap b : list) {
            Map<String, Object> m = new java.util.LinkedHashMap<>();
            List<Object> flags = new ArrayList<>();
            if (b.entry.inUse()) {
                flags.add("in-use");
            }
            if (b.entry.auto()) {
                flags.add("auto");
            }
            m.put("flags", flags);
            m.put("name", b.entry.name());
            m.put("granularity", b.entry.granularity());
            out.add(m);
        }
        return out;
    }

    private Bitmap find(String name) throws BlockException {
        for (Bitmap b : list) {
            if (b.entry.name().equals(name)) {
                return b;
            }
        }
        throw new BlockException(Reason.NOT_FOUND, "Dirty bitmap '" + name + "' not found");
    }

    private Bitmap usable(String name) throws BlockException {
        Bitmap b = find(name);
        if (b.inconsistent) {
            throw BlockException.invalid("Bitmap '" + name + "' is inconsistent and cannot be used\nTry "
                    + "block-dirty-bitmap-remove to delete this bitmap from disk"); // qemu's words and hint
        }
        return b;
    }

    private void checkWritable() throws BlockException {
        if (readOnly) {
            throw new BlockException(Reason.READ_ONLY, "qcow2 image is opened read-only");
        }
    }

    // ---- changes ------------------------------------------------------------------------------

    void add(String name, long granularity, boolean disabled) throws BlockException {
        checkWritable();
        if (granularity < 512 || Long.bitCount(granularity) != 1
                || granularity > 1L << BitmapDirectory.MAX_GRANULARITY_BITS) {
            throw BlockException.invalid("Granularity must be power of 2 and at least 512");
        }
        for (Bitmap b : list) {
            if (b.entry.name().equals(name)) {
                throw BlockException.invalid("Bitmap already exists: " + name);
            }
        }
        String prefix = "Can't make bitmap '" + name + "' persistent: ";
        if (node.header().version() < 3) {
            throw BlockException.unsupported(prefix + "Cannot store dirty bitmaps in qcow2 v2 files");
        }
        if (name.getBytes(java.nio.charset.StandardCharsets.UTF_8).length > BitmapDirectory.MAX_NAME_BYTES) {
            throw BlockException.invalid(prefix + "Name length exceeds maximum (1023 characters)");
        }
        if (name.isEmpty()) {
            throw BlockException.invalid("Bitmap name cannot be empty");
        }
        if (list.size() >= BitmapDirectory.MAX_BITMAPS) {
            throw BlockException.invalid(prefix + "Image already has the maximum number of bitmaps");
        }
        int granBits = Long.numberOfTrailingZeros(granularity);
        int flags = BitmapDirectory.FLAG_IN_USE | (disabled ? 0 : BitmapDirectory.FLAG_AUTO);
        Bitmap b = new Bitmap(new Entry(0, 0, flags, BitmapDirectory.TYPE_DIRTY_TRACKING, granBits, name,
                new byte[0]), false);
        b.table = new long[(int) BitmapDirectory.tableEntriesFor(node.size(), granBits, clusterBits)];
        b.tableChanged = true;
        list.add(b);
    }

    /**
     * Drops a bitmap at once: its clusters are collected first (a broken table fails here, before
     * any change), then a new directory without it is written, then the clusters are freed.
     */
    void remove(String name) throws BlockException {
        checkWritable();
        Bitmap b = find(name);
        List<long[]> frees = storedClusters(b);
        list.remove(b);
        node.flushLocked();
        writeDirectory();
        node.flushLocked();
        for (long[] f : frees) {
            node.refcounts().queueFree(f[0], f[1]);
        }
        node.flushLocked();
    }

    void setEnabled(String name, boolean enabled) throws BlockException {
        checkWritable();
        Bitmap b = usable(name);
        int f = b.entry.flags();
        b.entry = b.entry.withFlags(enabled ? f | BitmapDirectory.FLAG_AUTO : f & ~BitmapDirectory.FLAG_AUTO);
    }

    /** Every bit cleared: the table maps nothing, the old data clusters go after the next store. */
    void clear(String name) throws BlockException {
        checkWritable();
        Bitmap b = usable(name);
        long[] t = table(b);
        for (int i = 0; i < t.length; i++) {
            long host = t[i] & BitmapDirectory.TABLE_OFFSET_MASK;
            if (host != 0) {
                b.freeAfterStore.add(new long[] {host, clusterSize});
            }
            t[i] = 0;
        }
        b.chunks.clear();
        b.changedChunks.clear();
        b.tableChanged = true;
    }

    /** Guest bytes {@code [offset, offset+length)} changed: the enabled bitmaps remember it. */
    void guestWrite(long offset, long length) throws BlockException {
        for (Bitmap b : list) {
            if (!b.inconsistent && b.entry.auto()) {
                setDirty(b, offset, length);
            }
        }
    }

    /** Sets the bits of {@code name} that cover {@code [offset, offset+length)} (merge, convert --bitmaps). */
    void setDirty(String name, long offset, long length) throws BlockException {
        checkWritable();
        setDirty(usable(name), offset, length);
    }

    private void setDirty(Bitmap b, long offset, long length) throws BlockException {
        long size = node.size();
        long end = length >= size - offset ? size : offset + length; // no overflow for any length
        if (length <= 0 || offset < 0 || offset >= end) {
            return;
        }
        int g = b.entry.granularityBits();
        long first = offset >>> g;
        long last = (end - 1) >>> g;
        long perChunk = (long) clusterSize << 3;
        long bit = first;
        while (bit <= last) {
            int chunk = (int) (bit / perChunk);
            long base = chunk * perChunk;
            long stop = Math.min(last, base + perChunk - 1);
            setRange(chunk(b, chunk), (int) (bit - base), (int) (stop - base));
            b.changedChunks.set(chunk);
            bit = stop + 1;
        }
    }

    private static void setRange(long[] words, int from, int to) {
        int wf = from >>> 6;
        int wt = to >>> 6;
        long firstMask = -1L << (from & 63);
        long lastMask = -1L >>> (63 - (to & 63));
        if (wf == wt) {
            words[wf] |= firstMask & lastMask;
            return;
        }
        words[wf] |= firstMask;
        java.util.Arrays.fill(words, wf + 1, wt, -1L);
        words[wt] |= lastMask;
    }

    /** qemu refuses to resize while a bitmap is inconsistent (it could not follow the new size). */
    void checkResizable() throws BlockException {
        for (Bitmap b : list) {
            if (b.inconsistent) {
                usable(b.entry.name()); // throws qemu's message for the first one
            }
        }
    }

    /** The bitmap follows a resize: the table gets the new size, bits past the new end are dropped. */
    void resize(long newSize) throws BlockException {
        for (Bitmap b : list) {
            if (b.inconsistent) {
                continue;
            }
            int g = b.entry.granularityBits();
            int entries = (int) BitmapDirectory.tableEntriesFor(newSize, g, clusterBits);
            long[] t = table(b);
            for (int i = entries; i < t.length; i++) {
                long host = t[i] & BitmapDirectory.TABLE_OFFSET_MASK;
                if (host != 0) {
                    b.freeAfterStore.add(new long[] {host, clusterSize});
                }
                b.chunks.remove(i);
                b.changedChunks.clear(i);
            }
            b.table = java.util.Arrays.copyOf(t, entries);
            b.tableChanged = true;
            long bits = Qcow2Header.ceilShift(newSize, g);
            long perChunk = (long) clusterSize << 3;
            int lastChunk = (int) ((bits - 1) / perChunk);
            if (bits > 0 && bits % perChunk != 0 && lastChunk < entries) {
                long[] w = chunk(b, lastChunk);
                clearFrom(w, (int) (bits % perChunk));
                b.changedChunks.set(lastChunk);
            }
        }
    }

    private static void clearFrom(long[] words, int bit) {
        int w = bit >>> 6;
        words[w] &= (1L << (bit & 63)) - 1;
        java.util.Arrays.fill(words, w + 1, words.length, 0L);
    }

    // ---- reading --------------------------------------------------------------------------------

    /**
     * The first dirty range of {@code name} at or after {@code from}, at the bitmap's granularity and
     * clamped to the disk, or null when there is none.
     */
    BitmapNode.DirtyRange nextDirty(String name, long from) throws BlockException {
        Bitmap b = usable(name);
        long size = node.size();
        if (from >= size) {
            return null;
        }
        int g = b.entry.granularityBits();
        long bits = Qcow2Header.ceilShift(size, g);
        long start = nextBit(b, Math.max(0, from) >>> g, bits, true);
        if (start < 0) {
            return null;
        }
        long stop = nextBit(b, start, bits, false);
        if (stop < 0) {
            stop = bits;
        }
        long off = Math.max(start << g, from);
        long end = Math.min(stop << g, size);
        return new BitmapNode.DirtyRange(off, end - off);
    }

    /** Index of the next bit that is {@code set} (or clear) at or after {@code bit}, below {@code bits}; or -1. */
    private long nextBit(Bitmap b, long bit, long bits, boolean set) throws BlockException {
        long perChunk = (long) clusterSize << 3;
        long[] t = table(b);
        while (bit < bits) {
            int chunk = (int) (bit / perChunk);
            long base = chunk * perChunk;
            long[] w = b.chunks.get(chunk);
            if (w == null) {
                long e = t[chunk];
                boolean zero = (e & BitmapDirectory.TABLE_OFFSET_MASK) == 0 && (e & BitmapDirectory.TABLE_ALL_ONES) == 0;
                boolean ones = (e & BitmapDirectory.TABLE_OFFSET_MASK) == 0 && !zero;
                if (zero && !set || ones && set) {
                    return bit;
                }
                if (zero || ones) {
                    bit = base + perChunk;
                    continue;
                }
                w = chunk(b, chunk);
            }
            int i = (int) (bit - base);
            int wi = i >>> 6;
            long word = (set ? w[wi] : ~w[wi]) & (-1L << (i & 63));
            while (true) {
                if (word != 0) {
                    long found = base + ((long) wi << 6) + Long.numberOfTrailingZeros(word);
                    return found < bits ? found : -1;
                }
                if (++wi >= w.length) {
                    break;
                }
                word = set ? w[wi] : ~w[wi];
            }
            bit = base + perChunk;
        }
        return -1;
    }

    private long[] table(Bitmap b) throws BlockException {
        if (b.table == null) {
            long[] t = BitmapDirectory.readTable(file, b.entry, clusterBits, node.forCheck());
            long size = file.size();
            if (b.entry.tableOffset() > size - (long) t.length * 8) { // (no overflow: offset < 2^63, size too)
                b.tableChanged = true; // (opens for check only) read as zeroes past the end: stored anew
            }
            for (int i = 0; i < t.length; i++) {
                if ((t[i] & BitmapDirectory.TABLE_OFFSET_MASK) >= size) {
                    // (opens for check only) qemu reads that cluster past the end of the file as
                    // zeroes and its close stores the bitmap without the entry: so do we (a store
                    // happens only read-write, and the entry holds no refcount to free)
                    t[i] = 0;
                    b.tableChanged = true;
                }
            }
            b.table = t;
        }
        return b.table;
    }

    private long[] chunk(Bitmap b, int index) throws BlockException {
        long[] w = b.chunks.get(index);
        if (w != null) {
            return w;
        }
        long e = table(b)[index];
        long host = e & BitmapDirectory.TABLE_OFFSET_MASK;
        w = new long[clusterSize / 8];
        if (host != 0) {
            file.read(host, clusterSize, "Bitmap data").order(ByteOrder.LITTLE_ENDIAN).asLongBuffer().get(w);
        } else if ((e & BitmapDirectory.TABLE_ALL_ONES) != 0) {
            java.util.Arrays.fill(w, -1L);
        }
        b.chunks.put(index, w);
        return w;
    }

    // ---- storing -----------------------------------------------------------------------------------

    /**
     * Close: changed chunks and tables go to new clusters, then a directory without in_use for the
     * consistent bitmaps, then the replaced clusters are freed. Inconsistent bitmaps stay as found.
     */
    void store() throws BlockException {
        if (readOnly || list.isEmpty() || node.header().version() < 3) {
            return; // amended down to version 2, which cannot keep bitmaps: they stay behind as qemu leaves them
        }
        if (list.stream().allMatch(b -> b.inconsistent)) {
            return; // nothing was tracked and the directory on disk says so already (qemu writes nothing)
        }
        List<long[]> frees = new ArrayList<>();
        for (Bitmap b : list) {
            if (b.inconsistent) {
                continue;
            }
            if (!b.changedChunks.isEmpty() || b.tableChanged) {
                storeData(b, frees);
            }
            b.entry = b.entry.withFlags(b.entry.flags() & ~BitmapDirectory.FLAG_IN_USE);
        }
        node.flushLocked(); // refcounts of the new clusters, then everything durable
        writeDirectory();
        Refcounts rc = node.refcounts();
        for (long[] f : frees) {
            rc.queueFree(f[0], f[1]);
        }
        node.flushLocked();
    }

    private void storeData(Bitmap b, List<long[]> frees) throws BlockException {
        Refcounts rc = node.refcounts();
        long[] t = table(b).clone();
        long bits = Qcow2Header.ceilShift(node.size(), b.entry.granularityBits());
        long perChunk = (long) clusterSize << 3;
        ByteBuffer out = ByteBuffer.allocate(clusterSize).order(ByteOrder.LITTLE_ENDIAN);
        for (int i = b.changedChunks.nextSetBit(0); i >= 0; i = b.changedChunks.nextSetBit(i + 1)) {
            long[] w = b.chunks.get(i);
            long old = t[i] & BitmapDirectory.TABLE_OFFSET_MASK;
            if (old != 0) {
                frees.add(new long[] {old, clusterSize});
            }
            if ((long) (i + 1) * perChunk > bits) {
                clearFrom(w, (int) (bits - (long) i * perChunk)); // the spec wants the tail bits zero
            }
            boolean zero = true;
            for (long x : w) {
                if (x != 0) {
                    zero = false;
                    break;
                }
            }
            if (zero) {
                t[i] = 0;
                continue;
            }
            long host = rc.allocate(1);
            out.clear();
            out.asLongBuffer().put(w);
            file.write(host, out);
            t[i] = host;
        }
        frees.addAll(b.freeAfterStore);
        b.freeAfterStore.clear();
        if (b.entry.tableOffset() != 0 && b.entry.tableSize() > 0 && !tablePastEnd(b.entry)) {
            frees.add(new long[] {b.entry.tableOffset(), (long) b.entry.tableSize() * 8});
        }
        long tableOffset = 0;
        if (t.length > 0) {
            int clusters = (int) Qcow2Header.ceilShift((long) t.length * 8, clusterBits);
            tableOffset = rc.allocate(clusters);
            ByteBuffer tb = ByteBuffer.allocate(clusters * clusterSize);
            tb.asLongBuffer().put(t);
            file.write(tableOffset, tb);
        }
        b.entry = b.entry.withTable(tableOffset, t.length);
        b.table = t;
        b.tableChanged = false;
        b.changedChunks.clear();
    }

    /**
     * What a bitmap holds on disk, {offset, bytes} each: its stored table and the data clusters it
     * names (which include those a clear or resize already set aside in freeAfterStore).
     */
    private List<long[]> storedClusters(Bitmap b) throws BlockException {
        List<long[]> out = new ArrayList<>();
        if (b.entry.tableOffset() == 0 || b.entry.tableSize() == 0) {
            return out;
        }
        long size = file.size();
        for (long e : BitmapDirectory.readTable(file, b.entry, clusterBits, node.forCheck())) {
            long host = e & BitmapDirectory.TABLE_OFFSET_MASK;
            if (host != 0 && host < size) { // past the end (opens for check only): nothing to free
                out.add(new long[] {host, clusterSize});
            }
        }
        if (!tablePastEnd(b.entry)) {
            out.add(new long[] {b.entry.tableOffset(), (long) b.entry.tableSize() * 8});
        }
        return out;
    }

    /** A table that runs past the end of the file (opens for check only): it holds no refcount to free. */
    private boolean tablePastEnd(Entry e) throws BlockException {
        return e.tableOffset() > file.size() - (long) e.tableSize() * 8;
    }

    /**
     * Writes the directory of the current entries to new clusters and points the header at it
     * (or removes the extension when no bitmap is left); the old directory is freed by the
     * caller's next flush.
     */
    private void writeDirectory() throws BlockException {
        Refcounts rc = node.refcounts();
        long oldOffset = dirOffset;
        long oldSize = dirSize;
        if (list.isEmpty()) {
            node.replaceBitmapsExtension(null);
            dirOffset = 0;
            dirSize = 0;
        } else {
            List<Entry> entries = new ArrayList<>();
            for (Bitmap b : list) {
                entries.add(b.entry);
            }
            ByteBuffer d = BitmapDirectory.serialize(entries);
            if (d.remaining() > BitmapDirectory.MAX_DIRECTORY_BYTES) {
                throw BlockException.invalid("qcow2: the bitmap directory would exceed "
                        + BitmapDirectory.MAX_DIRECTORY_BYTES + " bytes");
            }
            int size = d.remaining();
            int clusters = (int) Qcow2Header.ceilShift(size, clusterBits);
            long offset = rc.allocate(clusters);
            ByteBuffer padded = ByteBuffer.allocate(clusters * clusterSize).put(d).flip();
            padded.limit(padded.capacity());
            file.write(offset, padded);
            node.flushLocked(); // the directory's refcount and bytes before the header names it
            node.replaceBitmapsExtension(new BitmapDirectory.Extension(list.size(), size, offset).serialize());
            dirOffset = offset;
            dirSize = size;
        }
        if (oldSize > 0) {
            rc.queueFree(oldOffset, oldSize);
        }
    }
}
