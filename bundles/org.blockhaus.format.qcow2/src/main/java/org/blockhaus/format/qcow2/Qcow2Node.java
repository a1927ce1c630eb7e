package org.blockhaus.format.qcow2;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.BitSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.locks.Condition;
import java.util.concurrent.locks.ReentrantLock;
import java.util.concurrent.locks.ReentrantReadWriteLock;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.BlockStatus;
import org.blockhaus.api.Capabilities;
import org.blockhaus.api.Capabilities.Feature;
import org.blockhaus.api.Capabilities.Support;
import org.blockhaus.api.Options;
import org.blockhaus.api.Preallocation;
import org.blockhaus.api.spi.CheckResult;
import org.blockhaus.api.spi.AmendableNode;
import org.blockhaus.api.spi.BitmapNode;
import org.blockhaus.api.spi.CheckableNode;
import org.blockhaus.api.spi.SnapshotNode;

/**
 * An open qcow2 image: guest offsets are mapped through the L1 table and cached L2 tables to host
 * clusters (spec: "Cluster mapping"); unallocated clusters fall through to the backing node.
 *
 * <p>Writes put data into the file at once and keep metadata changes in memory until a flush,
 * which writes them in the order that survives a crash: refcount increases, then L2 tables, then
 * the L1 table, then refcount decreases (see {@link Refcounts}). One lock guards the mapping and
 * the metadata; data moves outside it (see {@link #read}, {@link #write} and the I/O gate
 * {@link #io}), so requests overlap their I/O.
 */
final class Qcow2Node implements CheckableNode, SnapshotNode, AmendableNode, BitmapNode {
    static final long L1_OFFSET_MASK = 0x00ff_ffff_ffff_fe00L;
    static final long L2_OFFSET_MASK = 0x00ff_ffff_ffff_fe00L;
    static final long OFLAG_COPIED = 1L << 63;
    static final long OFLAG_COMPRESSED = 1L << 62;
    static final long OFLAG_ZERO = 1L;
    static final long ALL_SUBCLUSTERS = 0xffff_ffffL;

    /** Kinds of guest ranges, as the mapping sees them. */
    static final int UNALLOCATED = 0;
    static final int ZERO = 1;
    static final int DATA = 2;
    static final int COMPRESSED_DATA = 3;

    /** A run of guest bytes with one kind of content; {@code host} is where DATA lives (or -1). */
    record Run(int kind, long host, long length) {
    }

    private final ReentrantLock lock = new ReentrantLock();
    /**
     * Data I/O done outside {@link #lock} holds this gate's read side; whatever frees clusters or
     * writes L2 tables (flush, eviction, snapshots, amend, check, close) takes the write side while
     * it holds the lock, so it waits for that I/O and no new I/O can start: data reaches the file
     * before an L2 table pointing at it, and no cluster is freed and reused under a reader.
     */
    private final ReentrantReadWriteLock io = new ReentrantReadWriteLock();
    /** Guest clusters whose new host cluster is being written outside the lock (see {@link #write}). */
    private final java.util.Set<Long> allocating = new java.util.HashSet<>();
    private final Condition allocated = lock.newCondition();
    private final HostFile file;
    /** Where guest data lives: the image file, or the external data file (incompatible bit 2). */
    private final HostFile data;
    private final boolean external;
    /** The external data file must stay a valid raw image (autoclear bit 1). */
    private final boolean rawExternal;
    private final BlockNode backing;
    private final boolean readOnly;
    private Qcow2Header header;
    private final int clusterBits;
    private final int clusterSize;
    private final int l2Bits;
    private final boolean extL2;
    private final int subclusterBits;
    private volatile long size;
    private long l1Offset;
    private long[] l1;
    private final BitSet l1DirtyClusters = new BitSet();
    private Refcounts refcounts;
    private final L2Cache l2;
    private final Compression compression;
    private long cachedCompressedGuest = -1;
    private byte[] cachedCompressed;
    /**
     * Counts changes to the mapping; a cluster inflated outside the lock is cached only if none
     * happened meanwhile, so a read racing a rewrite cannot cache the old content.
     */
    private long mappingGeneration;
    private boolean closed;
    /** Opened for check (OpenContext.forCheck): check reports what a normal open refuses. */
    private final boolean forCheck;

    /** Persistent dirty bitmaps; null until {@link #openBitmaps} (the driver calls it after open). */
    private PersistentBitmaps bitmaps;

    Qcow2Node(HostFile file, Qcow2Header h, BlockNode backing, boolean readOnly, long l2CacheBytes)
            throws BlockException {
        this(file, null, h, backing, readOnly, l2CacheBytes);
    }

    Qcow2Node(HostFile file, HostFile dataFile, Qcow2Header h, BlockNode backing, boolean readOnly, long l2CacheBytes)
            throws BlockException {
        this(file, dataFile, h, backing, readOnly, l2CacheBytes, false);
    }

    /** @param forCheck opened for check: validation that check reports itself is relaxed (see {@link Refcounts}) */
    Qcow2Node(HostFile file, HostFile dataFile, Qcow2Header h, BlockNode backing, boolean readOnly, long l2CacheBytes,
            boolean forCheck) throws BlockException {
        this.forCheck = forCheck;
        this.file = file;
        this.external = dataFile != null;
        this.data = external ? dataFile : file;
        this.rawExternal = external && (h.autoclearFeatures() & Qcow2Header.AUTOCLEAR_DATA_FILE_RAW) != 0;
        this.header = h;
        this.backing = backing;
        this.readOnly = readOnly;
        this.clusterBits = h.clusterBits();
        this.clusterSize = h.clusterSize();
        this.extL2 = h.extendedL2();
        this.l2Bits = clusterBits - (extL2 ? 4 : 3);
        this.subclusterBits = clusterBits - 5;
        this.size = h.size();
        this.l1Offset = h.l1TableOffset();
        this.compression = new Compression(clusterBits, h.compressionType());
        this.l1 = readL1(h.l1TableOffset(), h.l1Size());
        this.refcounts = new Refcounts(file, h, this::refcountTableMoved, forCheck);
        this.refcounts.setGuard(this::isKnownMetadata);
        this.refcounts.setBeforeIncrease(this::markDirtyIfLazy);
        this.lazyRefcounts = h.version() >= 3 && h.lazyRefcounts();
        this.l2 = new L2Cache(file, clusterSize, l2CacheBytes, this::evictL2);
    }

    private long[] readL1(long offset, int entries) throws BlockException {
        long[] t = new long[entries];
        if (entries > 0) {
            file.read(offset, entries * 8, "L1 table").asLongBuffer().get(t);
        }
        return t;
    }

    Qcow2Header header() {
        return header;
    }

    /** The header as it is on disk now, validated as this node was opened (for check or not). */
    private Qcow2Header rereadHeader() throws BlockException {
        return Qcow2Header.parse(file.read(0, (int) Math.min(clusterSize, file.size()), "qcow2 header"),
                file.size(), forCheck);
    }

    HostFile hostFile() {
        return file;
    }

    Refcounts refcounts() {
        return refcounts;
    }

    long[] activeL1() {
        return l1;
    }

    long activeL1Offset() {
        return l1Offset;
    }

    Compression compression() {
        return compression;
    }

    boolean external() {
        return external;
    }

    L2Cache.Table l2Table(long offset) throws BlockException {
        return l2.get(offset);
    }

    // ---- opening-time fixes -----------------------------------------------------------------

    /** Opened for check (OpenContext.forCheck). */
    boolean forCheck() {
        return forCheck;
    }

    /** Reads the bitmap directory; read-write, also marks the bitmaps in use (see {@link PersistentBitmaps}). */
    void openBitmaps() throws BlockException {
        lock.lock();
        try {
            // a check open whose refcounts cannot place a cluster yet leaves the bitmaps as they
            // are on disk: marking them in use would allocate a new directory before check rebuilt
            // the refcounts (qemu's marks them in place)
            bitmaps = PersistentBitmaps.open(this, readOnly || refcountTableUnusable());
        } finally {
            lock.unlock();
        }
    }

    /**
     * An open for check whose refcount table is empty or reaches past the end of the file (where
     * it reads as zeroes): no allocation can trust it until check -r all has rebuilt it.
     */
    private boolean refcountTableUnusable() {
        long bytes = (long) refcounts.tableClusters() << clusterBits;
        return forCheck && (bytes == 0 || refcounts.tableOffset() > file.size() - bytes);
    }

    /** Clears autoclear bits we do not maintain (the spec requires it before writing). */
    void clearUnknownAutoclear() throws BlockException {
        long known = Qcow2Header.AUTOCLEAR_KNOWN
                | (bitmaps != null && !bitmaps.isEmpty() ? Qcow2Header.AUTOCLEAR_BITMAPS : 0);
        long keep = header.autoclearFeatures() & known;
        if (header.version() >= 3 && keep != header.autoclearFeatures()) {
            file.write(88, ByteBuffer.allocate(8).putLong(0, keep));
            file.flush();
            header = withFeatures(header.incompatibleFeatures(), keep);
        }
    }

    /** Writes the incompatible feature bits (dirty, corrupt ...). */
    void writeIncompatible(long bits) throws BlockException {
        file.write(72, ByteBuffer.allocate(8).putLong(0, bits));
        file.flush();
        header = withFeatures(bits, header.autoclearFeatures());
    }

    private Qcow2Header withFeatures(long incompat, long autoclear) {
        Qcow2Header h = header;
        return new Qcow2Header(h.version(), h.backingFileOffset(), h.backingFileSize(), h.clusterBits(), size,
                h.cryptMethod(), l1.length, l1Offset, refcounts.tableOffset(), refcounts.tableClusters(),
                h.nbSnapshots(), h.snapshotsOffset(), incompat, h.compatibleFeatures(), autoclear,
                h.refcountOrder(), h.headerLength(), h.compressionType(), h.backingFile(), h.backingFormat(),
                h.dataFile(), h.featureNames(), h.unknownExtensions());
    }

    /** Lazy refcounts in use (the header's compatible bit 0, or the lazy-refcounts open option). */
    private boolean lazyRefcounts;

    /** The lazy-refcounts open option: qemu's runtime switch, which needs compat 1.1. */
    void setLazyRefcounts(boolean on) throws BlockException {
        if (on && header.version() < 3) {
            throw BlockException.invalid("Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility"
                    + " level");
        }
        lazyRefcounts = on;
    }

    /**
     * With lazy refcounts the dirty bit goes to disk before the first refcount change, so that an
     * image whose refcounts lag behind its tables is always marked (and rebuilt when next opened).
     */
    void markDirtyIfLazy() throws BlockException {
        if (lazyRefcounts && !header.dirty()) {
            writeIncompatible(header.incompatibleFeatures() | Qcow2Header.INCOMPAT_DIRTY);
        }
    }

    private boolean isKnownMetadata(long cluster) {
        long off = cluster << clusterBits;
        if (cluster == 0) {
            return true;
        }
        long l1Bytes = (long) l1.length * 8;
        if (l1Bytes > 0 && off >= (l1Offset & -clusterSize) && off < l1Offset + l1Bytes) {
            return true;
        }
        long rt = refcounts.tableOffset();
        if (off >= rt && off < rt + ((long) refcounts.tableClusters() << clusterBits)) {
            return true;
        }
        return header.nbSnapshots() > 0 && off == header.snapshotsOffset();
    }

    private void refcountTableMoved(long offset, int clusters) throws BlockException {
        ByteBuffer b = ByteBuffer.allocate(12).putLong(offset).putInt(clusters).flip();
        file.write(48, b);
    }

    // ---- mapping ------------------------------------------------------------------------------

    private long l1Index(long guest) {
        return guest >>> (clusterBits + l2Bits);
    }

    private int l2Index(long guest) {
        return (int) ((guest >>> clusterBits) & ((1L << l2Bits) - 1));
    }

    /** The L2 table for a guest offset, or null when its L1 entry is empty. */
    private L2Cache.Table l2For(long guest) throws BlockException {
        long i = l1Index(guest);
        if (i >= l1.length) {
            return null;
        }
        long off = l1[(int) i] & L1_OFFSET_MASK;
        if (off == 0) {
            return null;
        }
        return l2.get(off);
    }

    private long word(L2Cache.Table t, int idx) {
        return t.words[extL2 ? 2 * idx : idx];
    }

    private long bitmap(L2Cache.Table t, int idx) {
        return extL2 ? t.words[2 * idx + 1] : 0;
    }

    private long hostOf(long w, long guest) throws BlockException {
        long host = w & L2_OFFSET_MASK;
        if ((host & (clusterSize - 1)) != 0) {
            throw Qcow2Header.corrupt("Cluster allocation offset " + host + " for guest offset " + guest
                    + " is unaligned (L2 entry 0x" + Long.toHexString(w) + ")");
        }
        return host;
    }

    /** Whether an entry maps a host cluster (with a data file, host offset 0 is valid when COPIED). */
    private boolean mapped(long w, long host) {
        return host != 0 || external && (w & OFLAG_COPIED) != 0;
    }

    /** What lies at {@code guest}, up to the end of its cluster (or subcluster run), at most {@code max} bytes. */
    private Run classify(long guest, long max, L2Lookup memo) throws BlockException {
        long inCluster = guest & (clusterSize - 1);
        L2Cache.Table t = memo.table(guest);
        if (t == null) {
            long regionEnd = (l1Index(guest) + 1) << (clusterBits + l2Bits);
            long span = regionEnd <= 0 ? max : regionEnd - guest;
            return new Run(UNALLOCATED, -1, Math.min(span, max));
        }
        int idx = l2Index(guest);
        long w = word(t, idx);
        long toClusterEnd = Math.min(clusterSize - inCluster, max);
        if ((w & OFLAG_COMPRESSED) != 0) {
            return new Run(COMPRESSED_DATA, -1, toClusterEnd);
        }
        long host = hostOf(w, guest);
        if (!extL2) {
            if ((w & OFLAG_ZERO) != 0) {
                return new Run(ZERO, mapped(w, host) ? host + inCluster : -1, toClusterEnd);
            }
            if (!mapped(w, host)) {
                return new Run(UNALLOCATED, -1, toClusterEnd);
            }
            return new Run(DATA, host + inCluster, toClusterEnd);
        }
        long bm = bitmap(t, idx);
        int sc = (int) (inCluster >>> subclusterBits);
        int kind = subclusterKind(bm, sc);
        if (kind == DATA && !mapped(w, host)) {
            throw Qcow2Header.corrupt("Subcluster of guest offset " + guest + " is allocated without a host cluster");
        }
        int end = sc + 1;
        while (end < 32 && subclusterKind(bm, end) == kind) {
            end++;
        }
        long span = Math.min(((long) end << subclusterBits) - inCluster, max);
        // zero subclusters of an allocated cluster keep their host offset (qemu's ZERO_ALLOC)
        boolean withHost = kind == DATA || kind == ZERO && mapped(w, host);
        return new Run(kind, withHost ? host + inCluster : -1, span);
    }

    private static int subclusterKind(long bm, int sc) {
        if ((bm >>> sc & 1) != 0) {
            return DATA;
        }
        if ((bm >>> (32 + sc) & 1) != 0) {
            return ZERO;
        }
        return UNALLOCATED;
    }

    /**
     * The L2 table of the last L1 entry looked up, for one {@link #map} call: its clusters share a
     * table, and one cache lookup (a boxed key, an LRU relink) per cluster was most of the time
     * `qemu-img map` spent. Valid only while the lock is held and nothing is written: a lookup that
     * hits the cache evicts nothing.
     */
    private final class L2Lookup {
        private long index = -1;
        private L2Cache.Table table;

        L2Cache.Table table(long guest) throws BlockException {
            long i = l1Index(guest);
            if (i != index) {
                table = l2For(guest);
                index = i;
            }
            return table;
        }
    }

    /** Like {@link #classify} but merges following clusters of the same kind (contiguous for DATA). */
    private Run map(long guest, long max) throws BlockException {
        L2Lookup memo = new L2Lookup();
        Run r = classify(guest, max, memo);
        long len = r.length();
        if (r.kind() == COMPRESSED_DATA) {
            return r;
        }
        while (len < max) {
            if (!extL2 && ((guest + len) & (clusterSize - 1)) == 0) {
                long more = continuing(r, len, guest + len, max - len, memo);
                if (more > 0) {
                    len += more;
                    continue;
                }
            }
            Run n = classify(guest + len, max - len, memo);
            if (n.kind() != r.kind()) {
                break;
            }
            if (r.kind() == DATA && n.host() != r.host() + len) {
                break;
            }
            if (r.kind() == ZERO && (r.host() < 0) != (n.host() < 0)) {
                break;
            }
            len += n.length();
        }
        return new Run(r.kind(), r.host(), len);
    }

    /**
     * How many whole clusters from the cluster-aligned {@code guest} on, within its L2 table and at
     * most {@code max} bytes, continue run {@code r} (already {@code done} bytes long) exactly as
     * {@link #map}'s merge would take them: the same kind, DATA contiguous in the file, ZERO with or
     * without a host cluster alike. Standard L2 entries only, scanned in place: a map of a large
     * image asks for hundreds of thousands of clusters, and a Run per cluster was most of its time.
     * Anything else (compressed, unaligned, an empty L1 entry) stops the scan and is left to
     * {@link #classify}.
     */
    private long continuing(Run r, long done, long guest, long max, L2Lookup memo) throws BlockException {
        L2Cache.Table t = memo.table(guest);
        if (t == null) {
            return 0;
        }
        long[] words = t.words;
        long maxClusters = max >>> clusterBits;
        long expectHost = r.host() + done;
        long count = 0;
        for (int idx = l2Index(guest); idx < words.length && count < maxClusters; idx++) {
            long w = words[idx];
            long host = w & L2_OFFSET_MASK;
            if ((w & OFLAG_COMPRESSED) != 0 || (host & (clusterSize - 1)) != 0) {
                break;
            }
            boolean hasHost = mapped(w, host);
            int kind = (w & OFLAG_ZERO) != 0 ? ZERO : hasHost ? DATA : UNALLOCATED;
            if (kind != r.kind() || kind == DATA && host != expectHost || kind == ZERO && hasHost != r.host() >= 0) {
                break;
            }
            count++;
            expectHost += clusterSize;
        }
        return count << clusterBits;
    }

    // ---- BlockNode ---------------------------------------------------------------------------

    @Override
    public long size() {
        return size;
    }

    @Override
    public Capabilities capabilities() {
        Support rw = readOnly ? Support.NONE : Support.NATIVE;
        return Capabilities.builder().with(Feature.WRITE, rw).with(Feature.FLUSH, Support.NATIVE)
                .with(Feature.WRITE_ZEROES, rw).with(Feature.DISCARD, rw)
                .with(Feature.BLOCK_STATUS, Support.NATIVE).with(Feature.RESIZE, rw).build();
    }

    @Override
    public boolean hasZeroInit() {
        return backing == null;
    }

    /**
     * The mapping is looked up under the lock, the data is read outside it, so parallel readers
     * (convert's workers, NBD clients) overlap their I/O, also with writers. A read waits for
     * clusters whose data a writer is still putting in place ({@link #awaitNotAllocating}), and
     * holds the I/O gate while it reads, so no flush can free and hand out the cluster under it.
     * Compressed clusters are inflated outside the lock too.
     */
    @Override
    public void read(long offset, ByteBuffer dst) throws BlockException {
        long guest = offset;
        while (dst.hasRemaining()) {
            Run r;
            long compressedEntry = 0;
            long generation;
            byte[] inflated = null;
            lock.lock();
            try {
                checkOpen();
                awaitNotAllocating(guest, dst.remaining());
                r = map(guest, dst.remaining());
                generation = mappingGeneration;
                if (r.kind() == COMPRESSED_DATA) {
                    if (cachedCompressedGuest == guest >>> clusterBits) {
                        inflated = cachedCompressed;
                    } else {
                        compressedEntry = word(l2For(guest), l2Index(guest));
                    }
                }
                if (r.kind() == DATA || compressedEntry != 0) {
                    io.readLock().lock(); // released below, after the I/O
                }
            } finally {
                lock.unlock();
            }
            int n = (int) r.length();
            ByteBuffer part = dst.slice(dst.position(), n);
            switch (r.kind()) {
                case DATA -> {
                    try {
                        data.readData(r.host(), part, guest);
                    } finally {
                        io.readLock().unlock();
                    }
                }
                case ZERO -> fillZero(part);
                case COMPRESSED_DATA -> {
                    if (inflated == null) {
                        try {
                            inflated = inflate(compressedEntry, guest);
                        } finally {
                            io.readLock().unlock();
                        }
                        keepInflated(guest >>> clusterBits, inflated, generation);
                    }
                    part.put(inflated, (int) (guest & (clusterSize - 1)), n);
                }
                default -> readBacking(guest, part);
            }
            dst.position(dst.position() + n);
            guest += n;
        }
    }

    /** The most recently inflated cluster stays cached: small sequential reads hit it. */
    private void keepInflated(long cluster, byte[] inflated, long generation) {
        lock.lock();
        try {
            if (generation == mappingGeneration) {
                cachedCompressed = inflated;
                cachedCompressedGuest = cluster;
            }
        } finally {
            lock.unlock();
        }
    }

    /** The mapping changed: the cached inflated cluster may be stale. */
    private void invalidateInflated() {
        cachedCompressedGuest = -1;
        mappingGeneration++;
    }

    private void readLocked(long offset, ByteBuffer dst) throws BlockException {
        long guest = offset;
        while (dst.hasRemaining()) {
            Run r = map(guest, dst.remaining());
            int n = (int) r.length();
            ByteBuffer part = dst.slice(dst.position(), n);
            switch (r.kind()) {
                case DATA -> data.readData(r.host(), part, guest);
                case ZERO -> fillZero(part);
                case COMPRESSED_DATA -> {
                    byte[] c = decompressCluster(guest);
                    part.put(c, (int) (guest & (clusterSize - 1)), n);
                }
                default -> readBacking(guest, part);
            }
            dst.position(dst.position() + n);
            guest += n;
        }
    }

    private static void fillZero(ByteBuffer b) {
        while (b.hasRemaining()) {
            int n = Math.min(b.remaining(), ZEROES.length);
            b.put(ZEROES, 0, n);
        }
    }

    private static final byte[] ZEROES = new byte[64 * 1024];

    private void readBacking(long guest, ByteBuffer part) throws BlockException {
        long bsize = backing == null ? 0 : backing.size();
        int fromBacking = (int) Math.max(0, Math.min(part.remaining(), bsize - guest));
        if (fromBacking > 0) {
            backing.read(guest, part.slice(part.position(), fromBacking));
        }
        part.position(part.position() + fromBacking);
        fillZero(part);
    }

    private byte[] decompressCluster(long guest) throws BlockException {
        long cluster = guest >>> clusterBits;
        if (cachedCompressedGuest == cluster) {
            return cachedCompressed;
        }
        byte[] c = inflate(word(l2For(guest), l2Index(guest)), guest);
        cachedCompressed = c;
        cachedCompressedGuest = cluster;
        return c;
    }

    /** Reads and inflates the compressed cluster an L2 entry describes into a new cluster buffer. */
    private byte[] inflate(long entry, long guest) throws BlockException {
        long host = compression.hostOffset(entry);
        int len = compression.compressedLength(entry);
        if (host >= file.size()) {
            throw Qcow2Header.corrupt("Compressed cluster for guest offset " + guest + " starts at " + host
                    + ", beyond the end of the file");
        }
        ByteBuffer src = ByteBuffer.allocate(len);
        int got = file.readClamped(host, src);
        byte[] out = new byte[clusterSize];
        compression.decompress(src.array(), got, out, guest & -clusterSize);
        return out;
    }

    @Override
    public BlockStatus blockStatus(long offset, long length) throws BlockException {
        lock.lock();
        try {
            checkOpen();
            Run r = map(offset, length);
            if (r.kind() == DATA && metadataPreallocated()) {
                return dataStatusFromFile(offset, r);
            }
            return switch (r.kind()) {
                case DATA -> new BlockStatus(offset, r.length(), BlockStatus.DATA | BlockStatus.ALLOCATED, r.host(),
                        data.node());
                case ZERO -> new BlockStatus(offset, r.length(), BlockStatus.ZERO | BlockStatus.ALLOCATED,
                        r.host(), r.host() < 0 ? null : data.node());
                case COMPRESSED_DATA -> new BlockStatus(offset, r.length(), BlockStatus.DATA | BlockStatus.ALLOCATED,
                        -1, null);
                default -> new BlockStatus(offset, r.length(), backing == null ? BlockStatus.ZERO : 0, -1, null);
            };
        } finally {
            lock.unlock();
        }
    }

    /** 0 unknown, 1 yes, -1 no: whether the image looks metadata-preallocated (checked once). */
    private int metadataPreallocation;

    /**
     * qemu's test for preallocation=metadata: clearly more clusters carry a refcount than the file
     * has allocated on disk (at least 10/9 of them, and 2 more). Such images have data clusters
     * that were never written, holes in the file, which qemu then reports as zero.
     */
    private boolean metadataPreallocated() throws BlockException {
        if (metadataPreallocation == 0) {
            long realClusters = file.node().allocatedSize() / clusterSize;
            long threshold = Math.max(realClusters * 10 / 9, realClusters + 2);
            long end = Qcow2Header.ceilShift(file.size(), clusterBits);
            long counted = 0;
            for (long i = 0; i < end && counted < threshold; i++) {
                if (refcounts.get(i) != 0) {
                    counted++;
                }
            }
            metadataPreallocation = counted >= threshold ? 1 : -1;
        }
        return metadataPreallocation > 0;
    }

    /**
     * A data run of a metadata-preallocated image, as qemu answers it: the file below says whether
     * the host range reads as zero (a hole), and the answer ends where the file's does.
     */
    private BlockStatus dataStatusFromFile(long offset, Run r) throws BlockException {
        int flags = BlockStatus.DATA | BlockStatus.ALLOCATED;
        long length = r.length();
        BlockNode below = data.node();
        if (r.host() >= below.size()) {
            flags |= BlockStatus.ZERO; // past the end of the file reads as zero
        } else {
            BlockStatus st = below.blockStatus(r.host(), Math.min(length, below.size() - r.host()));
            if (st.isZero()) {
                flags |= BlockStatus.ZERO;
            }
            if (r.host() + st.length() < below.size()) {
                length = Math.min(length, st.length());
            }
        }
        return new BlockStatus(offset, length, flags, r.host(), below);
    }

    // ---- writing ------------------------------------------------------------------------------

    private void checkWritable() throws BlockException {
        if (readOnly) {
            throw new BlockException(Reason.READ_ONLY, "qcow2 image is opened read-only");
        }
    }

    private boolean autoclearDone;

    /**
     * Before the first change to the image: autoclear bits we do not maintain (bitmaps) are
     * cleared, as the spec requires; opening read-write without writing keeps them.
     */
    private void prepareWrite() throws BlockException {
        checkOpen();
        checkWritable();
        if (!autoclearDone) {
            clearUnknownAutoclear();
            autoclearDone = true;
        }
    }

    /** Enabled persistent bitmaps record every guest change (write, zeroes, discard). */
    private void trackWrite(long offset, long length) throws BlockException {
        if (bitmaps != null && !bitmaps.isEmpty()) {
            bitmaps.guestWrite(offset, length);
        }
    }

    private void checkOpen() throws BlockException {
        if (closed) {
            throw new BlockException(Reason.CLOSED, "qcow2 node is closed");
        }
    }

    /** The L2 table for {@code guest}, allocated or copied (if shared) so that it may be changed. */
    private L2Cache.Table l2ForWrite(long guest) throws BlockException {
        int i = (int) l1Index(guest);
        long e = l1[i];
        long off = e & L1_OFFSET_MASK;
        L2Cache.Table t;
        if (off == 0) {
            long n = refcounts.allocate(1);
            t = l2.create(n);
            l1[i] = n | OFLAG_COPIED;
            markL1Dirty(i);
        } else if ((e & OFLAG_COPIED) == 0) {
            // Shared with a snapshot: copy on write, drop our reference to the old table later.
            L2Cache.Table old = l2.get(off);
            long n = refcounts.allocate(1);
            t = l2.create(n);
            System.arraycopy(old.words, 0, t.words, 0, old.words.length);
            l1[i] = n | OFLAG_COPIED;
            markL1Dirty(i);
            refcounts.queueFree(off, clusterSize);
        } else {
            t = l2.get(off);
        }
        return t;
    }

    void markL1Dirty(int index) {
        l1DirtyClusters.set((int) ((long) index * 8 >>> clusterBits));
    }

    private void setEntry(L2Cache.Table t, int idx, long w, long bm) {
        mappingGeneration++;
        if (extL2) {
            t.words[2 * idx] = w;
            t.words[2 * idx + 1] = bm;
        } else {
            t.words[idx] = w;
        }
        t.dirty = true;
    }

    /** Queues the release of whatever host space an L2 entry holds. */
    private void releaseEntry(long w) {
        if (external) {
            return; // clusters of an external data file are not refcounted
        }
        if ((w & OFLAG_COMPRESSED) != 0) {
            refcounts.queueFree(compression.refStart(w), compression.refLength(w), punchReleased);
        } else {
            long host = w & L2_OFFSET_MASK;
            if (host != 0) {
                refcounts.queueFree(host, clusterSize, punchReleased);
            }
        }
    }

    /**
     * qemu's pass-discard-* options: whether the clusters a guest discard frees (default: on when
     * the node is opened with discard=unmap, as qemu-io and qemu-nbd --discard=unmap open it) and
     * those snapshot operations free (default on) are punched out of the file as well.
     */
    private boolean passDiscardRequest;
    private boolean passDiscardSnapshot = true;
    /** True while a guest discard or a shrink releases clusters (under the lock): they get punched. */
    private boolean punchReleased;

    void setDiscardPassThrough(boolean request, boolean snapshot) {
        passDiscardRequest = request;
        passDiscardSnapshot = snapshot;
    }

    boolean passDiscardSnapshot() {
        return passDiscardSnapshot;
    }

    /**
     * Clusters are allocated and L2 entries set under the lock; the data then goes to the file
     * outside it, so writers (and readers) overlap their I/O. Until it has landed, the newly
     * mapped clusters are listed in {@link #allocating}: requests touching them wait, and flushes
     * and L2 evictions wait at the I/O gate, so no L2 table reaches the disk before its data.
     */
    @Override
    public void write(long offset, ByteBuffer src, int flags) throws BlockException {
        if ((flags & BlockNode.COMPRESSED) != 0) {
            writeCompressed(offset, src, flags);
            return;
        }
        WritePlan plan = new WritePlan();
        lock.lock();
        try {
            prepareWrite();
            awaitNotAllocating(offset, src.remaining());
            trackWrite(offset, src.remaining());
            planWrite(offset, src, plan);
            data.ensureSize(plan.end);
            allocating.addAll(plan.newClusters);
            io.readLock().lock();
        } finally {
            lock.unlock();
        }
        performOutsideLock(plan);
        if ((flags & FUA) != 0) {
            flush();
        }
    }

    /** The second half of a write: the planned I/O (the caller took the gate), then its clusters are done. */
    private void performOutsideLock(WritePlan plan) throws BlockException {
        try {
            plan.perform(data);
        } finally {
            io.readLock().unlock();
            if (!plan.newClusters.isEmpty()) {
                lock.lock();
                try {
                    allocating.removeAll(plan.newClusters);
                    allocated.signalAll();
                } finally {
                    lock.unlock();
                }
            }
        }
    }

    /** The data writes of one request, collected under the lock and done after it. */
    private static final class WritePlan {
        private final List<Long> hosts = new ArrayList<>(2);
        private final List<ByteBuffer> buffers = new ArrayList<>(2);
        /** Guest cluster indices whose L2 entry now points at a cluster these writes fill. */
        final List<Long> newClusters = new ArrayList<>();
        long end;

        void add(long host, ByteBuffer b) {
            hosts.add(host);
            buffers.add(b);
            end = Math.max(end, host + b.remaining());
        }

        /** Writes in host order as planned; adjacent pieces (packed compressed clusters) go as one write. */
        void perform(HostFile data) throws BlockException {
            int count = hosts.size();
            for (int i = 0; i < count; ) {
                long at = hosts.get(i);
                long end = at + buffers.get(i).remaining();
                int j = i + 1;
                while (j < count && hosts.get(j) == end && end - at < MAX_MERGED) {
                    end += buffers.get(j).remaining();
                    j++;
                }
                if (j == i + 1) {
                    data.write(at, buffers.get(i));
                } else {
                    ByteBuffer merged = ByteBuffer.allocate((int) (end - at));
                    for (int k = i; k < j; k++) {
                        merged.put(buffers.get(k).duplicate());
                    }
                    data.write(at, merged.flip());
                }
                i = j;
            }
        }

        private static final long MAX_MERGED = 4 << 20;
    }

    /**
     * Waits (releasing the lock) until no cluster of {@code [guest, guest+len)} is being
     * allocated by a writer. Callers hold the lock and have changed nothing yet.
     */
    private void awaitNotAllocating(long guest, long len) throws BlockException {
        while (!allocating.isEmpty() && len > 0) {
            long first = guest >>> clusterBits;
            long last = (guest + len - 1) >>> clusterBits;
            boolean busy = false;
            // walk the smaller side: a 2 MiB request over 512-byte clusters spans 4096 of them,
            // while a few small writes in flight list only a handful
            if (last - first + 1 <= allocating.size()) {
                for (long c = first; c <= last && !busy; c++) {
                    busy = allocating.contains(c);
                }
            } else {
                for (long c : allocating) {
                    if (c >= first && c <= last) {
                        busy = true;
                        break;
                    }
                }
            }
            if (!busy) {
                return;
            }
            allocated.awaitUninterruptibly();
            checkOpen();
        }
    }

    /** Waits for all data I/O outside the lock to finish; none can start while the caller holds the lock. */
    private void quiesce() {
        io.writeLock().lock();
        io.writeLock().unlock();
    }

    /**
     * convert -c: each whole cluster is deflated (outside the lock, so writers compress in
     * parallel) and packed byte-wise into host clusters; all-zero clusters become zero clusters
     * and clusters that do not shrink are stored normally, as qemu does.
     */
    private void writeCompressed(long offset, ByteBuffer src, int flags) throws BlockException {
        int len = src.remaining();
        if ((offset & (clusterSize - 1)) != 0 || ((len & (clusterSize - 1)) != 0 && offset + len != size)) {
            throw BlockException.invalid("qcow2: compressed writes must cover whole clusters (offset " + offset
                    + ", length " + len + ")");
        }
        int clusters = (int) Qcow2Header.ceilShift(len, clusterBits);
        byte[][] packed = new byte[clusters][];
        byte[] cluster = new byte[clusterSize];
        for (int k = 0; k < clusters; k++) {
            int n = Math.min(clusterSize, len - k * clusterSize);
            java.util.Arrays.fill(cluster, n, clusterSize, (byte) 0);
            src.get(src.position() + k * clusterSize, cluster, 0, n);
            if (isZero(cluster)) {
                packed[k] = ZERO_MARKER; // store as a zero cluster
            } else {
                packed[k] = external ? null : compression.compress(cluster, clusterSize); // data files: never
            }
        }
        // as write(): clusters are placed and mapped under the lock, the bytes written after it,
        // packed runs of compressed clusters as one write
        WritePlan plan = new WritePlan();
        lock.lock();
        try {
            prepareWrite();
            awaitNotAllocating(offset, len);
            trackWrite(offset, len);
            for (int k = 0; k < clusters; k++) {
                long guest = offset + (long) k * clusterSize;
                int n = Math.min(clusterSize, len - k * clusterSize);
                if (packed[k] == ZERO_MARKER) {
                    // a zero cluster that already reads as zero stays as it is (convert -c leaves it unallocated)
                    if (!readsAsZero(guest, n) && (rawExternal || !zeroize(guest, guest + n, true))) {
                        planWrite(guest, ByteBuffer.allocate(n), plan);
                    }
                } else if (packed[k] == null) {
                    planWrite(guest, src.slice(src.position() + k * clusterSize, n), plan);
                } else {
                    storeCompressed(guest, packed[k], plan);
                }
            }
            src.position(src.position() + len);
            data.ensureSize(plan.end);
            allocating.addAll(plan.newClusters);
            io.readLock().lock();
        } finally {
            lock.unlock();
        }
        performOutsideLock(plan);
        if ((flags & FUA) != 0) {
            flush();
        }
    }

    private static final byte[] ZERO_MARKER = new byte[0];

    private static boolean isZero(byte[] b) {
        for (int at = 0; at < b.length; at += ZEROES.length) {
            int n = Math.min(ZEROES.length, b.length - at);
            if (java.util.Arrays.mismatch(b, at, at + n, ZEROES, 0, n) >= 0) {
                return false;
            }
        }
        return true;
    }

    /** Host byte where the next compressed cluster may go, inside a cluster that already holds some. */
    private long compressedFree;
    private long compressedFreeGeneration = -1;

    private void storeCompressed(long guest, byte[] data, WritePlan plan) throws BlockException {
        L2Cache.Table t = l2ForWrite(guest);
        int idx = l2Index(guest);
        long old = word(t, idx);
        long at;
        long inCluster = compressedFree & (clusterSize - 1);
        boolean open = compressedFreeGeneration == refcounts.freeGeneration() && compressedFree != 0 && inCluster != 0
                // as qemu: a cluster whose refcount is at the width's maximum takes no more
                // compressed clusters (with refcount_bits=1, each one gets its own)
                && refcounts.get(compressedFree >>> clusterBits) < refcounts.maxRefcount();
        if (open && clusterSize - inCluster >= data.length) {
            at = compressedFree;
            refcounts.increment(at >>> clusterBits, 1); // one more compressed cluster lives here
        } else if (open) {
            // As qemu packs them: data that does not fit the rest of the current cluster runs on
            // into the next one when the next free cluster is the adjacent one (compressed data
            // may span host clusters); otherwise it starts the new cluster and the rest is lost.
            long next = refcounts.allocate(1);
            if (next == compressedFree - inCluster + clusterSize) {
                at = compressedFree;
                refcounts.increment(at >>> clusterBits, 1);
            } else {
                at = next;
            }
        } else {
            at = refcounts.allocate(1);
        }
        compressedFree = at + data.length;
        compressedFreeGeneration = refcounts.freeGeneration();
        plan.add(at, ByteBuffer.wrap(data));
        plan.newClusters.add(guest >>> clusterBits);
        releaseEntry(old);
        if (cachedCompressedGuest == guest >>> clusterBits) {
            invalidateInflated();
        }
        setEntry(t, idx, compression.descriptor(at, data.length), 0);
    }

    /**
     * Extended L2, copy on write of a shared cluster: as qemu, the new cluster allocates the
     * subclusters from the first allocated one (or the write's start) to the last allocated one
     * (or the write's end); subclusters outside stay as they were (unallocated or zero), so they
     * still read from the backing file and keep their allocation status.
     */
    private long cowBitmap(long old, int inCluster, int n) {
        int first = inCluster >>> subclusterBits;
        int last = (inCluster + n - 1) >>> subclusterBits;
        int alloc = (int) (old & ALL_SUBCLUSTERS);
        if (alloc != 0) {
            first = Math.min(first, Integer.numberOfTrailingZeros(alloc));
            last = Math.max(last, 31 - Integer.numberOfLeadingZeros(alloc));
        }
        long range = (last == 31 ? ALL_SUBCLUSTERS : (1L << (last + 1)) - 1) & ~((1L << first) - 1);
        return (old | range) & ~(range << 32);
    }

    /** Writes under the lock (copy-on-write paths, zero fallbacks, amend): data and mapping at once. */
    private void writeLocked(long offset, ByteBuffer src) throws BlockException {
        WritePlan plan = new WritePlan();
        planWrite(offset, src, plan);
        plan.perform(data);
    }

    /**
     * Maps {@code src} to host clusters, allocating (and copying on write) as needed, and adds the
     * data writes to {@code plan}; contiguous host ranges become one write.
     */
    private void planWrite(long offset, ByteBuffer src, WritePlan plan) throws BlockException {
        long guest = offset;
        long runHost = -1;
        int runStart = src.position();
        int runLen = 0;
        while (src.hasRemaining()) {
            int inCluster = (int) (guest & (clusterSize - 1));
            int n = Math.min(src.remaining(), clusterSize - inCluster);
            L2Cache.Table t = l2ForWrite(guest);
            int idx = l2Index(guest);
            long w = word(t, idx);
            long host = (w & OFLAG_COMPRESSED) != 0 ? 0 : hostOf(w, guest);
            boolean inPlace = (w & OFLAG_COMPRESSED) == 0 && mapped(w, host) && (w & OFLAG_COPIED) != 0
                    && (extL2 ? bitmap(t, idx) == ALL_SUBCLUSTERS : (w & OFLAG_ZERO) == 0);
            long target;
            if (!inPlace && extL2 && n < clusterSize && (w & OFLAG_COMPRESSED) == 0
                    && (!mapped(w, host) || (w & OFLAG_COPIED) != 0)) {
                // Extended L2: only the subclusters the write touches are allocated.
                if (runLen > 0) {
                    plan.add(runHost, src.slice(runStart, runLen));
                    runLen = 0;
                }
                writeSubclusters(t, idx, w, host, guest, inCluster, src.slice(src.position(), n), plan);
                plan.newClusters.add(guest >>> clusterBits);
                src.position(src.position() + n);
                guest += n;
                runStart = src.position();
                continue;
            }
            if (inPlace) {
                target = host + inCluster;
            } else {
                boolean reuse = (w & OFLAG_COMPRESSED) == 0 && mapped(w, host) && (w & OFLAG_COPIED) != 0;
                byte[] whole = null;
                if (n < clusterSize) {
                    // Copy on write: the rest of the cluster comes from what the guest sees now.
                    whole = new byte[clusterSize];
                    long cStart = guest - inCluster;
                    int valid = (int) Math.min(clusterSize, size - cStart);
                    readLocked(cStart, ByteBuffer.wrap(whole, 0, valid));
                    src.get(src.position(), whole, inCluster, n);
                }
                long newHost = reuse ? host : external ? guest - inCluster : refcounts.allocate(1);
                if (!reuse) {
                    releaseEntry(w);
                }
                if ((w & OFLAG_COMPRESSED) != 0 && cachedCompressedGuest == guest >>> clusterBits) {
                    invalidateInflated();
                }
                long newBitmap = ALL_SUBCLUSTERS;
                if (extL2 && whole != null && (w & OFLAG_COMPRESSED) == 0 && mapped(w, host)) {
                    newBitmap = cowBitmap(bitmap(t, idx), inCluster, n);
                }
                setEntry(t, idx, newHost | OFLAG_COPIED, newBitmap);
                plan.newClusters.add(guest >>> clusterBits);
                if (whole != null) {
                    if (runLen > 0) {
                        plan.add(runHost, src.slice(runStart, runLen));
                        runLen = 0;
                    }
                    plan.add(newHost, ByteBuffer.wrap(whole));
                    src.position(src.position() + n);
                    guest += n;
                    runStart = src.position();
                    continue;
                }
                target = newHost;
            }
            if (runLen > 0 && runHost + runLen != target) {
                plan.add(runHost, src.slice(runStart, runLen));
                runLen = 0;
            }
            if (runLen == 0) {
                runHost = target;
                runStart = src.position();
            }
            runLen += n;
            src.position(src.position() + n);
            guest += n;
        }
        if (runLen > 0) {
            plan.add(runHost, src.slice(runStart, runLen));
        }
    }

    /**
     * Writes part of one cluster of an extended-L2 image: the touched subclusters get the data
     * (partly touched ones are completed from what the guest sees now) and their allocation bits;
     * the others keep their state, so they still read from the backing file or as zeroes.
     */
    private void writeSubclusters(L2Cache.Table t, int idx, long w, long host, long guest, int inCluster,
            ByteBuffer part, WritePlan plan) throws BlockException {
        int n = part.remaining();
        int first = inCluster >>> subclusterBits;
        int last = (inCluster + n - 1) >>> subclusterBits;
        int from = first << subclusterBits;
        int to = (last + 1) << subclusterBits;
        long cStart = guest - inCluster;
        byte[] buf = new byte[to - from];
        if (inCluster != from) {
            readForCow(cStart + from, buf, 0, 1 << subclusterBits);
        }
        if (inCluster + n != to && (last != first || inCluster == from)) {
            readForCow(cStart + ((long) last << subclusterBits), buf, (last - first) << subclusterBits,
                    1 << subclusterBits);
        }
        part.get(part.position(), buf, inCluster - from, n);
        long target = mapped(w, host) ? host : external ? cStart : refcounts.allocate(1);
        plan.add(target + from, ByteBuffer.wrap(buf));
        long mask = (last == 31 ? 0xffff_ffffL : (1L << (last + 1)) - 1) & ~((1L << first) - 1);
        long bm = (bitmap(t, idx) | mask) & ~(mask << 32);
        setEntry(t, idx, target | OFLAG_COPIED, bm);
    }

    /** Reads what the guest sees at {@code [guest, guest+len)} (clamped to the disk) into {@code buf}. */
    private void readForCow(long guest, byte[] buf, int at, int len) throws BlockException {
        int n = (int) Math.max(0, Math.min(len, size - guest));
        if (n > 0) {
            readLocked(guest, ByteBuffer.wrap(buf, at, n));
        }
    }

    /**
     * Write-zeroes as qemu does it, one (sub)cluster unit at a time (a subcluster with extended L2,
     * else a cluster): a piece of a unit is zeroed through metadata only if the rest of the unit
     * already reads as zero and nothing is allocated there, else real zeroes are written; whole
     * units become zero clusters (zero subclusters) whether or not there is a backing file, keep
     * their host cluster unless MAY_UNMAP lets them go, and compressed clusters always let go.
     * Version 2 has no zero flag: without a backing file whole clusters are discarded instead,
     * with one real zeroes are written.
     */
    @Override
    public void writeZeroes(long offset, long length, int flags) throws BlockException {
        lock.lock();
        try {
            prepareWrite();
            awaitNotAllocating(offset, length);
            boolean unmap = (flags & MAY_UNMAP) != 0;
            int unit = extL2 ? 1 << subclusterBits : clusterSize;
            trackWrite(offset, length);
            long guest = offset;
            long end = offset + length;
            while (guest < end) {
                long unitStart = guest & -unit;
                long unitEnd = Math.min(unitStart + unit, size);
                long n;
                boolean done;
                if (guest != unitStart || end < unitEnd) {
                    n = Math.min(end, unitEnd) - guest;
                    done = !rawExternal && readsAsZero(unitStart, guest - unitStart)
                            && readsAsZero(guest + n, unitEnd - guest - n) && unallocatedOrZero(unitStart)
                            && zeroize(unitStart, unitEnd, unmap);
                } else {
                    long alignedEnd = end == size ? end : end & -unit;
                    n = alignedEnd - guest;
                    done = !rawExternal && zeroize(guest, alignedEnd, unmap);
                }
                if (!done) {
                    writeZeroBuffers(guest, n);
                }
                guest += n;
            }
            if ((flags & FUA) != 0) {
                flushLocked();
            }
        } finally {
            lock.unlock();
        }
    }

    /** The fallback of write-zeroes: real zeroes, in bounded buffers. */
    private void writeZeroBuffers(long guest, long n) throws BlockException {
        for (long at = 0; at < n; ) {
            int chunk = (int) Math.min(n - at, 1 << 20);
            writeLocked(guest + at, ByteBuffer.allocate(chunk));
            at += chunk;
        }
    }

    /** Whether {@code [guest, guest+n)} reads as zero by metadata alone, down the backing chain. */
    private boolean readsAsZero(long guest, long n) throws BlockException {
        if (n <= 0) {
            return true;
        }
        Run r = map(guest, n);
        if (r.length() < n) {
            return false;
        }
        if (r.kind() == ZERO) {
            return true;
        }
        if (r.kind() != UNALLOCATED) {
            return false;
        }
        if (backing == null || guest >= backing.size()) {
            return true;
        }
        BlockStatus st = backing.blockStatus(guest, n);
        return (st.flags() & BlockStatus.ZERO) != 0 && st.length() >= n
                && (guest + n <= backing.size());
    }

    /** Whether the (sub)cluster at {@code guest} holds no data of this layer. */
    private boolean unallocatedOrZero(long guest) throws BlockException {
        int kind = classify(guest, 1, new L2Lookup()).kind();
        return kind == UNALLOCATED || kind == ZERO;
    }

    /**
     * Makes {@code [from, to)} (unit aligned, or ending at the end of the disk) read as zeroes
     * through metadata; false if this image cannot (version 2 with a backing file).
     */
    private boolean zeroize(long from, long to, boolean unmap) throws BlockException {
        if (header.version() < 3) {
            if (backing != null) {
                return false;
            }
            for (long g = from; g < to; g += clusterSize) {
                discardCluster(g);
            }
            return true;
        }
        for (long g = from; g < to; ) {
            long clusterStart = g & -clusterSize;
            long clusterEnd = Math.min(clusterStart + clusterSize, size);
            long pieceEnd = Math.min(to, clusterEnd);
            if (g == clusterStart && pieceEnd == clusterEnd) {
                zeroWholeCluster(g, unmap);
            } else if (!zeroSubclusters(g, pieceEnd)) {
                writeZeroBuffers(g, pieceEnd - g);
            }
            g = pieceEnd;
        }
        return true;
    }

    /** A whole cluster becomes a zero cluster (all zero subclusters); see {@link #writeZeroes}. */
    private void zeroWholeCluster(long guest, boolean unmap) throws BlockException {
        L2Cache.Table t = l2ForWrite(guest);
        int idx = l2Index(guest);
        long w = word(t, idx);
        long bm = bitmap(t, idx);
        boolean compressed = (w & OFLAG_COMPRESSED) != 0;
        boolean allocated = compressed || mapped(w, hostOf(w, guest));
        // a data file keeps its clusters: it must keep mapping the guest 1:1 for later writes
        boolean release = compressed || unmap && allocated && !external;
        long nw = release ? 0 : w;
        long nbm = bm;
        if (extL2) {
            nbm = ALL_SUBCLUSTERS << 32;
        } else {
            nw |= OFLAG_ZERO;
        }
        if (nw == w && nbm == bm) {
            return;
        }
        if (release) {
            releaseEntry(w);
        }
        if (compressed) {
            invalidateInflated();
        }
        setEntry(t, idx, nw, nbm);
    }

    /** Extended L2: subclusters of one cluster become zero; false for a compressed cluster. */
    private boolean zeroSubclusters(long from, long to) throws BlockException {
        L2Cache.Table t = l2ForWrite(from);
        int idx = l2Index(from);
        long w = word(t, idx);
        if ((w & OFLAG_COMPRESSED) != 0) {
            return false;
        }
        long cStart = from & -clusterSize;
        int first = (int) ((from - cStart) >>> subclusterBits);
        int last = (int) Qcow2Header.ceilShift(to - cStart, subclusterBits); // exclusive
        long mask = (last == 32 ? ALL_SUBCLUSTERS : (1L << last) - 1) & ~((1L << first) - 1);
        long bm = bitmap(t, idx);
        long nbm = (bm | mask << 32) & ~mask;
        if (nbm != bm) {
            setEntry(t, idx, w, nbm);
        }
        return true;
    }

    /**
     * Discard of one whole cluster, as qemu's (not a full discard): an allocated cluster, or any
     * cluster over a backing file, becomes a zero cluster (version 2: unallocated) and its host
     * space is released; an unallocated cluster without a backing file stays as it is. Version 2
     * over a backing file ignores discards (the backing data would show through). Returns the
     * host offset of the uncompressed cluster it let go of, or -1.
     */
    private long discardCluster(long guest) throws BlockException {
        if (header.version() < 3 && backing != null) {
            return -1;
        }
        L2Cache.Table cur = l2For(guest);
        int idx = l2Index(guest);
        long w = cur == null ? 0 : word(cur, idx);
        long bm = cur == null ? 0 : bitmap(cur, idx);
        boolean compressed = (w & OFLAG_COMPRESSED) != 0;
        boolean allocated = compressed || mapped(w, hostOf(w, guest));
        if (backing == null && !allocated) {
            return -1;
        }
        long nw;
        long nbm = 0;
        if (extL2) {
            nw = 0;
            nbm = ALL_SUBCLUSTERS << 32;
        } else {
            nw = header.version() >= 3 ? OFLAG_ZERO : 0;
        }
        if (nw == w && nbm == bm) {
            return -1;
        }
        L2Cache.Table t = l2ForWrite(guest);
        releaseEntry(w);
        if (compressed) {
            invalidateInflated();
        }
        setEntry(t, idx, nw, nbm);
        return allocated && !compressed ? hostOf(w, guest) : -1;
    }

    /**
     * With data_file_raw the data file must stay the guest's view: a cluster that discard made a
     * zero cluster is punched out of the data file too, as qemu discards it there, so both read
     * zeroes. A zero write that may unmap, not a discard: a discard is advisory (and rounded to the
     * file's alignment, so a 512-byte cluster would keep its bytes), and the data file must read as
     * zeroes wherever the image says so. The L2 change waits for a flush; until then the old entry
     * still points here and reads those zeroes, which is what the discard asked for.
     */
    private void discardRawData(long host) throws BlockException {
        long len = Math.min(clusterSize, data.size() - host);
        if (len > 0) {
            data.node().writeZeroes(host, len, org.blockhaus.api.BlockNode.MAY_UNMAP);
        }
    }

    /** Drops the mapping of one whole cluster (reads go to the backing file afterwards). */
    private boolean makeUnallocated(long guest) throws BlockException {
        if (l2For(guest) == null) {
            return true;
        }
        L2Cache.Table t = l2ForWrite(guest);
        int idx = l2Index(guest);
        long w = word(t, idx);
        if (w == 0 && bitmap(t, idx) == 0) {
            return true;
        }
        releaseEntry(w);
        if ((w & OFLAG_COMPRESSED) != 0) {
            invalidateInflated();
        }
        setEntry(t, idx, 0, 0);
        return true;
    }

    @Override
    public void discard(long offset, long length) throws BlockException {
        lock.lock();
        try {
            prepareWrite();
            awaitNotAllocating(offset, length);
            trackWrite(offset, length);
            long guest = (offset + clusterSize - 1) & -clusterSize;
            long end = offset + length == size ? size : (offset + length) & -clusterSize;
            punchReleased = passDiscardRequest;
            try {
                for (; guest < end; guest += clusterSize) {
                    long host = discardCluster(guest);
                    if (rawExternal && host >= 0) {
                        discardRawData(host);
                    }
                }
            } finally {
                punchReleased = false;
            }
        } finally {
            lock.unlock();
        }
    }

    @Override
    public void flush() throws BlockException {
        lock.lock();
        try {
            checkOpen();
            if (!readOnly) {
                flushLocked();
            }
        } finally {
            lock.unlock();
        }
    }

    /** Writes cached metadata in crash-safe order and makes it durable. */
    void flushLocked() throws BlockException {
        quiesce(); // data written outside the lock lands before the tables that point at it
        if (lazyRefcounts) {
            flushLazy();
            return;
        }
        List<L2Cache.Table> dirtyL2 = l2.dirtyTables();
        boolean l1Dirty = !l1DirtyClusters.isEmpty();
        if (refcounts.dirty()) {
            refcounts.writeIncreases(); // also makes the data written so far durable
        } else if (!dirtyL2.isEmpty() || l1Dirty) {
            file.flush();
        }
        if (!dirtyL2.isEmpty()) {
            for (L2Cache.Table t : dirtyL2) {
                l2.write(t);
            }
            file.flush();
        }
        if (l1Dirty) {
            writeL1();
            file.flush();
        }
        refcounts.applyQueuedFrees();
        file.flush();
    }

    /**
     * The flush with lazy refcounts: the dirty bit is on disk before any refcount changes, so the
     * tables and refcounts are written without ordering between them; two syncs instead of four
     * (guest data first, then all metadata). Refcounts stay in memory between flushes.
     */
    private void flushLazy() throws BlockException {
        List<L2Cache.Table> dirtyL2 = l2.dirtyTables();
        boolean refcountsChange = refcounts.dirty() || refcounts.hasQueuedFrees();
        if (dirtyL2.isEmpty() && l1DirtyClusters.isEmpty() && !refcountsChange) {
            file.flush();
            return;
        }
        if (refcountsChange) {
            markDirtyIfLazy();
        }
        file.flush(); // guest data before the tables that map it
        for (L2Cache.Table t : dirtyL2) {
            l2.write(t);
        }
        if (!l1DirtyClusters.isEmpty()) {
            writeL1();
        }
        refcounts.writeDeferred();
        file.flush();
    }

    private void writeL1() throws BlockException {
        int perCluster = clusterSize / 8;
        for (int c = l1DirtyClusters.nextSetBit(0); c >= 0; c = l1DirtyClusters.nextSetBit(c + 1)) {
            int from = c * perCluster;
            int to = Math.min(l1.length, from + perCluster);
            ByteBuffer b = ByteBuffer.allocate((to - from) * 8);
            for (int i = from; i < to; i++) {
                b.putLong(l1[i]);
            }
            file.write(l1Offset + (long) from * 8, b.flip());
        }
        l1DirtyClusters.clear();
    }

    private void evictL2(L2Cache.Table t) throws BlockException {
        quiesce(); // data written outside the lock lands before the table that points at it
        if (lazyRefcounts) {
            markDirtyIfLazy(); // the table may reach the disk before the refcounts it needs
            l2.write(t);
            return;
        }
        refcounts.writeIncreases();
        file.flush();
        l2.write(t);
    }

    /**
     * qemu-img resize. Internal snapshots keep their own L1 table and disk size: growing or shrinking
     * changes only the active state (qemu 7.2 does the same for version 3 images; version 2 snapshot
     * entries need not record a disk size, so applying one after a resize could not restore it).
     */
    @Override
    public void truncate(long newSize, boolean exact, Preallocation prealloc) throws BlockException {
        lock.lock();
        try {
            checkOpen();
            checkWritable();
            // refused sizes change nothing: the checks come before the first write's preparations
            if ((newSize & 511) != 0) {
                throw BlockException.invalid("The new size must be a multiple of 512");
            }
            if (header.nbSnapshots() > 0 && header.version() < 3) {
                throw new BlockException(Reason.UNSUPPORTED, "Can't resize a v2 image which has snapshots");
            }
            if (bitmaps != null) {
                bitmaps.checkResizable();
            }
            prepareWrite();
            if (newSize < size) {
                if (prealloc != null && prealloc != Preallocation.OFF) {
                    throw BlockException.invalid("Preallocation can't be used for shrinking an image");
                }
                shrink(newSize);
                if (external) {
                    data.truncateTo(newSize, exact);
                }
                if (bitmaps != null) {
                    bitmaps.resize(newSize);
                }
                return;
            }
            long need = Qcow2Header.l1EntriesFor(newSize, clusterBits, extL2);
            if (need * 8 > Qcow2Header.MAX_L1_BYTES) {
                // qemu's wording (EFBIG from growing the L1 table)
                throw new BlockException(Reason.NO_SPACE, "Failed to grow the L1 table: File too large");
            }
            flushLocked();
            if (need > l1.length) {
                growL1((int) need);
            }
            Preallocation mode = prealloc == null ? Preallocation.OFF : prealloc;
            if (rawExternal && mode == Preallocation.OFF) {
                mode = Preallocation.METADATA; // a raw data file stays mapped 1:1, as qemu keeps it
            }
            if (mode != Preallocation.OFF) {
                preallocateLocked(size, newSize, mode);
            } else if (external) {
                data.truncateTo(newSize, exact);
            }
            // falloc and full give fresh clusters from a file that reads as zeroes: nothing to do
            boolean freshClusters = !external && (mode == Preallocation.FALLOC || mode == Preallocation.FULL);
            if (backing != null && backing.size() > size && !freshClusters) {
                zeroGrownArea(size, newSize);
            }
            file.write(24, ByteBuffer.allocate(8).putLong(0, newSize));
            file.flush();
            size = newSize;
            if (bitmaps != null) {
                bitmaps.resize(newSize);
            }
        } finally {
            lock.unlock();
        }
    }

    /**
     * Growing over a backing file that is longer than the old size: the new area must read as
     * zeroes, not as what the backing file holds there. As qemu: zero clusters from the first
     * cluster boundary on (version 2 has none: refused with qemu's message, the size unchanged),
     * real zeroes for the rest of the old last cluster.
     */
    private void zeroGrownArea(long oldSize, long newSize) throws BlockException {
        long zeroStart = (oldSize + clusterSize - 1) & -clusterSize;
        if (newSize > zeroStart && header.version() < 3) {
            throw new BlockException(Reason.UNSUPPORTED, "Failed to zero out new clusters: Operation not supported");
        }
        for (long guest = zeroStart; guest < newSize; guest += clusterSize) {
            if (rawExternal) { // the data file must read as the guest sees it: real zeroes
                writeLocked(guest, ByteBuffer.allocate((int) Math.min(clusterSize, newSize - guest)));
            } else {
                zeroWholeCluster(guest, false);
            }
        }
        if (zeroStart > oldSize) {
            writeLocked(oldSize, ByteBuffer.allocate((int) (Math.min(zeroStart, newSize) - oldSize)));
        }
        flushLocked();
    }

    /**
     * Shrinking (the caller asked for it, as qemu-img's --shrink): every cluster wholly past the new
     * end is released, L2 tables that map only such clusters too; the L1 table keeps its size. A
     * table shared with a snapshot is copied before it changes (or, when dropped whole, loses only
     * the active reference), so snapshots keep everything they map. The file then ends after its
     * last used cluster, as qemu leaves it.
     */
    private void shrink(long newSize) throws BlockException {
        long firstDropped = (newSize + clusterSize - 1) & -clusterSize;
        long perL2 = 1L << (clusterBits + l2Bits);
        for (int i = (int) (firstDropped / perL2); i < l1.length; i++) {
            long off = l1[i] & L1_OFFSET_MASK;
            if (off == 0) {
                continue;
            }
            long regionStart = i * perL2;
            // qemu discards what a shrink frees (its "always" class): "disk size" drops as there
            punchReleased = true;
            try {
                if (regionStart >= firstDropped) {
                    L2Cache.Table t = l2.get(off);
                    for (int j = 0; j < (1 << l2Bits); j++) {
                        releaseEntry(word(t, j));
                    }
                    l1[i] = 0;
                    markL1Dirty(i);
                    refcounts.queueFree(off, clusterSize, true);
                } else {
                    for (long guest = firstDropped; guest < regionStart + perL2 && guest < size; guest += clusterSize) {
                        makeUnallocated(guest);
                    }
                }
            } finally {
                punchReleased = false;
            }
        }
        invalidateInflated();
        flushLocked(); // tables first, then the freed clusters (punched once their counts are on disk)
        file.write(24, ByteBuffer.allocate(8).putLong(0, newSize));
        file.flush();
        size = newSize;
        refcounts.dropUnusedBlocks();
        long end = (refcounts.highestUsedCluster() + 1) << clusterBits;
        if (end < file.size()) {
            try {
                file.truncateTo(end, false);
            } catch (BlockException e) {
                // the image is complete without it: a longer file only wastes space (qemu just warns)
            }
        }
    }

    /** Moves the L1 table to a bigger, contiguous place; the old one is freed afterwards. */
    void growL1(int entries) throws BlockException {
        int clusters = (int) Qcow2Header.ceilShift((long) entries * 8, clusterBits);
        long newOffset = refcounts.allocate(clusters);
        long[] n = java.util.Arrays.copyOf(l1, entries);
        ByteBuffer b = ByteBuffer.allocate(clusters * clusterSize);
        for (long e : n) {
            b.putLong(e);
        }
        refcounts.writeIncreases();
        file.write(newOffset, b.flip());
        file.flush();
        ByteBuffer hdr = ByteBuffer.allocate(12).putInt(entries).putLong(newOffset).flip();
        file.write(36, hdr);
        file.flush();
        long oldOffset = l1Offset;
        long oldBytes = (long) l1.length * 8;
        l1 = n;
        l1Offset = newOffset;
        if (oldBytes > 0) {
            refcounts.queueFree(oldOffset, (oldBytes + clusterSize - 1) & -clusterSize);
        }
        refcounts.applyQueuedFrees();
    }

    /**
     * preallocation=metadata: every guest cluster gets an L2 entry and a host cluster; with falloc
     * or full the file below also reserves (or writes) the space of those clusters.
     */
    void preallocate(Preallocation mode) throws BlockException {
        lock.lock();
        try {
            preallocateLocked(0, size, mode);
        } finally {
            lock.unlock();
        }
    }

    /**
     * Maps every unmapped cluster of {@code [from, to)} as qemu lays it out: with metadata, per L2
     * table the table and then one run of data; with falloc or full (a resize), all L2 tables first
     * and then one run of data for the whole range.
     */
    private void preallocateLocked(long from, long to, Preallocation mode) throws BlockException {
        long perL2 = 1L << (clusterBits + l2Bits);
        boolean oneRun = mode == Preallocation.FALLOC || mode == Preallocation.FULL;
        long start = from & -clusterSize;
        // A grow from an old end inside a cluster: the guest bytes before it (from the backing file,
        // or zeroes) must survive that cluster being mapped, so they are read now and copied into
        // it below, as qemu's copy on write does. With subclusters the new cluster's subclusters
        // stay unallocated and still read through, so nothing needs copying.
        ByteBuffer head = null;
        if (start < from && !external && !extL2) {
            head = ByteBuffer.allocate((int) (from - start));
            readLocked(start, head);
            head.flip();
        }
        long headHost = -1;
        long lastHost = -1;
        long host = -1;
        if (oneRun && !external) {
            int total = 0;
            for (long region = start & -perL2; region < to; region += perL2) {
                total += unmapped(l2ForWrite(Math.max(region, start)), Math.max(region, start),
                        Math.min(region + perL2, to));
            }
            host = total == 0 ? -1 : refcounts.allocate(total);
            file.zeroStale(host, (long) total << clusterBits, false);
        }
        long runStart = host;
        long last = 0;
        for (long region = start & -perL2; region < to; region += perL2) {
            long first = Math.max(region, start);
            long end = Math.min(region + perL2, to);
            L2Cache.Table t = l2ForWrite(first);
            int unmapped = unmapped(t, first, end);
            if (unmapped == 0) {
                continue;
            }
            if (!oneRun && !external) {
                host = refcounts.allocate(unmapped);
                file.zeroStale(host, (long) unmapped << clusterBits, true);
            }
            for (long guest = first; guest < end; guest += clusterSize) {
                int idx = l2Index(guest);
                if (word(t, idx) != 0) {
                    continue;
                }
                long h = external ? guest : host; // a data file maps 1:1
                // with subclusters, qemu gives the cluster a host offset but leaves every subcluster
                // unallocated (it still reads as zeroes or from the backing file)
                setEntry(t, idx, h | OFLAG_COPIED, extL2 ? 0 : ALL_SUBCLUSTERS);
                if (guest == start) {
                    headHost = h;
                }
                if (guest + clusterSize >= to) {
                    lastHost = h;
                }
                host += clusterSize;
                last = Math.max(last, h + clusterSize);
            }
        }
        if (external) {
            // As qemu: a newly mapped last cluster that the guest uses only in part gets zeroes
            // written past the guest's end (the data file then ends on a cluster boundary); the
            // data file grows to the end with the mode asked for (metadata reserves nothing there).
            long clusterEnd = (to + clusterSize - 1) & -clusterSize;
            if (clusterEnd > to && last == clusterEnd) {
                data.write(to, ByteBuffer.allocate((int) (clusterEnd - to)));
            }
            data.growWith(to, mode == Preallocation.METADATA ? Preallocation.OFF : mode);
        } else if (oneRun) {
            // only the data run is reserved, as qemu reserves it: what lies before it (the rest of
            // the L1 table's cluster, new L2 tables, written at the flush below) stays plain
            if (runStart > 0) {
                file.ensureSize(runStart);
            }
            file.growWith(last, mode);
        } else {
            file.ensureSize(last);
        }
        if (head != null && headHost >= 0) {
            file.write(headHost, head);
        }
        long tail = (to + clusterSize - 1 & -clusterSize) - to;
        if (mode == Preallocation.METADATA && !external && !extL2 && tail > 0 && lastHost >= 0) {
            // as qemu's copy on write past the guest's end: the rest of a partly used last cluster
            // is written with zeroes (falloc and full reserved it already, and qemu leaves it)
            file.write(lastHost + clusterSize - tail, ByteBuffer.allocate((int) tail));
        }
        flushLocked();
    }

    private int unmapped(L2Cache.Table t, long first, long end) {
        int n = 0;
        for (long guest = first; guest < end; guest += clusterSize) {
            if (word(t, l2Index(guest)) == 0) {
                n++;
            }
        }
        return n;
    }

    // ---- amend and rebase -------------------------------------------------------------------

    @Override
    public void changeBackingFile(String filename, String format) throws BlockException {
        lock.lock();
        try {
            prepareWrite();
            flushLocked();
            rewriteHeader(header.version(), filename, filename == null ? null : format, header.compatibleFeatures());
        } finally {
            lock.unlock();
        }
    }

    @Override
    public void makeEmpty() throws BlockException {
        lock.lock();
        try {
            prepareWrite();
            quiesce(); // no read or write of the old mapping is still in flight
            long perL2 = 1L << (clusterBits + l2Bits);
            for (int i = 0; i < l1.length; i++) {
                if ((l1[i] & L1_OFFSET_MASK) == 0) {
                    continue;
                }
                L2Cache.Table t = l2.get(l1[i] & L1_OFFSET_MASK);
                for (int j = 0; j < (1 << l2Bits); j++) {
                    long guest = i * perL2 + ((long) j << clusterBits);
                    if (guest < size && (word(t, j) != 0 || bitmap(t, j) != 0)) {
                        makeUnallocated(guest);
                        t = l2For(guest); // a shared table was copied on the first change
                    }
                }
            }
            flushLocked();
        } finally {
            lock.unlock();
        }
    }

    @Override
    public void amend(Options o, boolean force) throws BlockException {
        lock.lock();
        try {
            prepareWrite();
            quiesce();
            new Amend(this).apply(o);
            lazyRefcounts = header.version() >= 3 && header.lazyRefcounts();
            if (!lazyRefcounts && header.dirty()) {
                flushLocked(); // lazy refcounts switched off: write them out, the image is clean again
                writeIncompatible(header.incompatibleFeatures() & ~Qcow2Header.INCOMPAT_DIRTY);
            }
        } finally {
            lock.unlock();
        }
        if (o.has("size")) {
            long newSize = o.getSize("size", size);
            if (newSize != size) {
                truncate(newSize, false, Preallocation.OFF);
            }
        }
    }

    // ---- for Amend (callers hold the lock) --------------------------------------------------------

    /** Replaces the refcount structure (after a refcount width change) and re-reads the header. */
    void replaceRefcounts() throws BlockException {
        header = rereadHeader();
        refcounts = new Refcounts(file, header, this::refcountTableMoved, forCheck);
        refcounts.setGuard(this::isKnownMetadata);
        refcounts.setBeforeIncrease(this::markDirtyIfLazy);
    }

    /** Version 2 has no zero flag: zero clusters become unallocated (no backing) or real zeroes. */
    void expandZeroClusters() throws BlockException {
        long perL2 = 1L << (clusterBits + l2Bits);
        for (int i = 0; i < l1.length; i++) {
            if ((l1[i] & L1_OFFSET_MASK) == 0) {
                continue;
            }
            for (int j = 0; j < (1 << l2Bits); j++) {
                long guest = i * perL2 + ((long) j << clusterBits);
                if (guest >= size) {
                    break;
                }
                L2Cache.Table t = l2For(guest);
                long w = word(t, j);
                if ((w & OFLAG_COMPRESSED) != 0 || (w & OFLAG_ZERO) == 0) {
                    continue;
                }
                if ((w & L2_OFFSET_MASK) == 0 && backing == null) {
                    makeUnallocated(guest);
                } else {
                    writeLocked(guest, ByteBuffer.allocate((int) Math.min(clusterSize, size - guest)));
                }
            }
        }
    }

    /**
     * The same for the snapshots' L2 tables, after the active ones: each table is rewritten in
     * place, once however many snapshots share it (the change means the same to each of them).
     * A zero cluster without a host cluster becomes unallocated (no backing file) or gets a new
     * cluster of zeroes, counted once for every reference to its table; one with a host cluster
     * gets that cluster written with zeroes when nothing else refers to it, else a new one (qemu
     * 7.2 writes zeroes into a shared one, and another snapshot's data with it). The active
     * tables hold no zero cluster any more, so none of these tables is one of theirs.
     */
    void expandSnapshotZeroClusters() throws BlockException {
        flushLocked();
        java.util.Set<Long> done = new java.util.HashSet<>();
        ByteBuffer zeroes = ByteBuffer.allocate(clusterSize);
        for (Snapshots.Entry e : snapshotEntries()) {
            for (long entry : readL1(e.l1TableOffset(), e.l1Size())) {
                long table = entry & L1_OFFSET_MASK;
                if (table == 0 || !done.add(table)) {
                    continue;
                }
                ByteBuffer b = file.read(table, clusterSize, "snapshot L2 table");
                boolean changed = false;
                for (int j = 0; j < (1 << l2Bits); j++) {
                    long w = b.getLong(j * 8);
                    if ((w & OFLAG_COMPRESSED) != 0 || (w & OFLAG_ZERO) == 0) {
                        continue;
                    }
                    long host = w & L2_OFFSET_MASK;
                    long refs = refcounts.get(table >>> clusterBits);
                    if (host == 0 && backing == null) {
                        w = 0;
                    } else if (host != 0 && refcounts.get(host >>> clusterBits) == refs) {
                        // only this table refers to it: zeroes in place
                        file.write(host, zeroes.clear());
                        w &= ~OFLAG_ZERO;
                    } else {
                        // no cluster, or one that other tables still map as data (a snapshot taken
                        // before the zero write): a new cluster of zeroes, the old one released
                        if (host != 0) {
                            for (long k = 0; k < refs; k++) {
                                refcounts.queueFree(host, clusterSize);
                            }
                        }
                        long fresh = refcounts.allocate(1);
                        if (refs > 1) {
                            refcounts.increment(fresh >>> clusterBits, refs - 1);
                        }
                        file.write(fresh, zeroes.clear());
                        w = fresh | (refs == 1 ? OFLAG_COPIED : 0);
                    }
                    b.putLong(j * 8, w);
                    changed = true;
                }
                if (changed) {
                    file.write(table, b.clear());
                }
            }
        }
        l2.clear(); // a cached copy of a rewritten table would be stale
        flushLocked();
    }

    /** Writes a new header for the current state (see {@link Qcow2Header#rewrite}) and reads it back. */
    void rewriteHeader(int version, String backingFile, String backingFormat, long compatible)
            throws BlockException {
        byte[] old = header.version() >= 3 && version >= 3
                ? file.read(0, header.headerLength(), "qcow2 header").array() : new byte[0];
        ByteBuffer b = Qcow2Header.rewrite(header, old, version, backingFile, backingFormat, compatible, size, l1.length,
                l1Offset, refcounts.tableOffset(), refcounts.tableClusters());
        file.write(0, b);
        file.flush();
        header = rereadHeader();
        if (header.version() != version || header.size() != size) {
            throw new IllegalStateException("header rewrite did not round-trip");
        }
    }

    // ---- info, check, snapshots ---------------------------------------------------------------

    @Override
    public long allocatedSize() throws BlockException {
        return file.node().allocatedSize();
    }

    @Override
    public Map<String, Object> info() throws BlockException {
        lock.lock();
        try {
            checkOpen();
            return infoLocked();
        } finally {
            lock.unlock();
        }
    }

    private Map<String, Object> infoLocked() throws BlockException {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("cluster-size", (long) clusterSize);
        Map<String, Object> data = new LinkedHashMap<>();
        data.put("compat", header.version() >= 3 ? "1.1" : "0.10");
        data.put("compression-type", header.compressionType() == Qcow2Header.COMPRESSION_ZSTD ? "zstd" : "zlib");
        if (header.version() >= 3) {
            data.put("lazy-refcounts", header.lazyRefcounts());
        }
        if (bitmaps != null && !bitmaps.isEmpty()) {
            data.put("bitmaps", bitmaps.info());
        }
        data.put("refcount-bits", (long) header.refcountBits());
        if (external) {
            if (header.dataFile() != null) {
                data.put("data-file", header.dataFile());
            }
            data.put("data-file-raw", rawExternal);
        }
        if (header.version() >= 3) {
            data.put("corrupt", header.corrupt());
            data.put("extended-l2", extL2);
        }
        Map<String, Object> fs = new LinkedHashMap<>();
        fs.put("type", "qcow2");
        fs.put("data", data);
        m.put("format-specific", fs);
        if (header.backingFile() != null) {
            m.put("backing-filename", header.backingFile());
            if (header.backingFormat() != null) {
                m.put("backing-filename-format", header.backingFormat());
            }
        }
        m.put("dirty-flag", header.dirty());
        List<Snapshot> snaps = snapshotsLocked();
        if (!snaps.isEmpty()) {
            List<Object> list = new ArrayList<>();
            for (Snapshot s : snaps) {
                Map<String, Object> e = new LinkedHashMap<>();
                if (s.icount() != -1) {
                    e.put("icount", s.icount()); // -1: recorded without one, and qemu leaves it out
                }
                e.put("vm-clock-nsec", s.vmClockNsec() % 1_000_000_000L);
                e.put("name", s.name());
                e.put("date-sec", s.dateSec());
                e.put("date-nsec", s.dateNsec());
                e.put("vm-clock-sec", s.vmClockNsec() / 1_000_000_000L);
                e.put("id", s.id());
                e.put("vm-state-size", s.vmStateSize());
                list.add(e);
            }
            m.put("snapshots", list);
        }
        return m;
    }

    @Override
    public CheckResult check(CheckResult.Repair repair) throws BlockException {
        return check(repair, finding -> { });
    }

    @Override
    public CheckResult check(CheckResult.Repair repair, java.util.function.Consumer<String> findings)
            throws BlockException {
        lock.lock();
        try {
            checkOpen();
            quiesce();
            if (repair != CheckResult.Repair.NONE) {
                checkWritable();
            }
            if (!readOnly) {
                flushLocked();
            }
            CheckResult r = new Qcow2Check(this, findings).run(repair);
            if (repair == CheckResult.Repair.ALL && r.corruptionsFixed() > 0) {
                flushLocked(); // the repaired COPIED flags
            }
            return r;
        } finally {
            lock.unlock();
        }
    }

    List<Snapshots.Entry> snapshotEntries() throws BlockException {
        if (header.nbSnapshots() == 0) {
            return List.of();
        }
        if (forCheck && !Qcow2Header.validTableOffset(header.snapshotsOffset(), 40L * header.nbSnapshots(),
                clusterSize)) {
            // opens for check take the header as it is; Qcow2Check reports the offset before this
            throw Qcow2Header.corrupt("Snapshot table offset " + header.snapshotsOffset() + " is invalid");
        }
        return Snapshots.read(file, header, new long[1], forCheck);
    }

    @Override
    public List<Snapshot> snapshots() throws BlockException {
        lock.lock();
        try {
            checkOpen();
            return snapshotsLocked();
        } finally {
            lock.unlock();
        }
    }

    private List<Snapshot> snapshotsLocked() throws BlockException {
        List<Snapshot> out = new ArrayList<>();
        for (Snapshots.Entry e : snapshotEntries()) {
            out.add(new Snapshot(e.id(), e.name(), e.vmStateSize(), e.dateSec(), e.dateNsec(), e.vmClockNsec(),
                    e.icount()));
        }
        return out;
    }

    @Override
    public void createSnapshot(String name) throws BlockException {
        lock.lock();
        try {
            prepareWrite();
            flushLocked();
            new SnapshotOps(this).create(name);
        } finally {
            lock.unlock();
        }
    }

    @Override
    public void applySnapshot(String nameOrId) throws BlockException {
        lock.lock();
        try {
            prepareWrite();
            if (bitmaps != null && !bitmaps.isEmpty()) {
                throw BlockException.invalid("Device has active dirty bitmaps");
            }
            flushLocked();
            new SnapshotOps(this).apply(nameOrId);
            invalidateInflated();
        } finally {
            lock.unlock();
        }
    }

    @Override
    public void deleteSnapshot(String nameOrId) throws BlockException {
        lock.lock();
        try {
            prepareWrite();
            flushLocked();
            new SnapshotOps(this).delete(nameOrId);
        } finally {
            lock.unlock();
        }
    }

    /**
     * Reads go to the snapshot's L1 table from now on (qemu's snapshot_load_tmp): the node is
     * read-only, so nothing is written and the virtual size stays as it is, as in qemu.
     */
    @Override
    public void loadSnapshotReadOnly(String id, String name) throws BlockException {
        lock.lock();
        try {
            checkOpen();
            if (!readOnly) {
                throw BlockException.invalid("Device is not readonly");
            }
            Snapshots.Entry sn = null;
            for (Snapshots.Entry e : snapshotEntries()) {
                if ((id == null || e.id().equals(id)) && (name == null || e.name().equals(name))) {
                    sn = e;
                    break;
                }
            }
            if (sn == null) {
                throw new BlockException(Reason.NOT_FOUND, "Can't find snapshot");
            }
            quiesce(); // no read of the active mapping is still in flight
            l1 = readL1(sn.l1TableOffset(), sn.l1Size());
            l1Offset = sn.l1TableOffset();
            l2.clear();
            invalidateInflated();
        } finally {
            lock.unlock();
        }
    }

    // ---- persistent dirty bitmaps (PersistentBitmaps does the work) -------------------------------

    private PersistentBitmaps bitmapsOrFail() throws BlockException {
        checkOpen();
        if (bitmaps == null) {
            throw new IllegalStateException("bitmaps not opened");
        }
        return bitmaps;
    }

    @Override
    public List<Bitmap> bitmaps() throws BlockException {
        lock.lock();
        try {
            return bitmapsOrFail().list();
        } finally {
            lock.unlock();
        }
    }

    @Override
    public void addBitmap(String name, long granularity, boolean disabled) throws BlockException {
        lock.lock();
        try {
            checkWritable();
            bitmapsOrFail().add(name, granularity, disabled);
        } finally {
            lock.unlock();
        }
    }

    @Override
    public void removeBitmap(String name) throws BlockException {
        lock.lock();
        try {
            checkWritable();
            bitmapsOrFail().remove(name);
        } finally {
            lock.unlock();
        }
    }

    @Override
    public void clearBitmap(String name) throws BlockException {
        lock.lock();
        try {
            checkWritable();
            bitmapsOrFail().clear(name);
        } finally {
            lock.unlock();
        }
    }

    @Override
    public void enableBitmap(String name, boolean enabled) throws BlockException {
        lock.lock();
        try {
            checkWritable();
            bitmapsOrFail().setEnabled(name, enabled);
        } finally {
            lock.unlock();
        }
    }

    @Override
    public void setBitmapDirty(String name, long offset, long length) throws BlockException {
        lock.lock();
        try {
            checkWritable();
            bitmapsOrFail().setDirty(name, offset, length);
        } finally {
            lock.unlock();
        }
    }

    @Override
    public DirtyRange nextDirty(String name, long offset) throws BlockException {
        lock.lock();
        try {
            return bitmapsOrFail().nextDirty(name, offset);
        } finally {
            lock.unlock();
        }
    }

    /**
     * For PersistentBitmaps (lock held): a header with {@code ext} as its bitmaps extension (null:
     * none) and the bitmaps autoclear bit set to match.
     */
    void replaceBitmapsExtension(byte[] ext) throws BlockException {
        Qcow2Header h = header;
        List<Qcow2Header.Extension> exts = new ArrayList<>();
        for (Qcow2Header.Extension e : h.unknownExtensions()) {
            if (e.type() != Qcow2Header.EXT_BITMAPS) {
                exts.add(e);
            }
        }
        if (ext != null) {
            exts.add(new Qcow2Header.Extension(Qcow2Header.EXT_BITMAPS, ext));
        }
        long autoclear = ext != null ? h.autoclearFeatures() | Qcow2Header.AUTOCLEAR_BITMAPS
                : h.autoclearFeatures() & ~Qcow2Header.AUTOCLEAR_BITMAPS;
        header = new Qcow2Header(h.version(), h.backingFileOffset(), h.backingFileSize(), clusterBits, size,
                h.cryptMethod(), l1.length, l1Offset, refcounts.tableOffset(), refcounts.tableClusters(),
                h.nbSnapshots(), h.snapshotsOffset(), h.incompatibleFeatures(), h.compatibleFeatures(), autoclear,
                h.refcountOrder(), h.headerLength(), h.compressionType(), h.backingFile(), h.backingFormat(),
                h.dataFile(), h.featureNames(), List.copyOf(exts));
        rewriteHeader(h.version(), h.backingFile(), h.backingFormat(), h.compatibleFeatures());
    }

    /**
     * Writes {@code entries} as a new snapshot table (check's repair of incomplete entries), in the
     * order that keeps a crash harmless: the new clusters are allocated and their refcounts made
     * durable, the table is written and synced, one write of header bytes 60..71 switches to it,
     * and only then are the old table's clusters freed. A crash leaks at most the new clusters.
     * Caller holds the lock and has flushed.
     */
    void rewriteSnapshotTable(List<Snapshots.Entry> entries) throws BlockException {
        byte[] table = Snapshots.serialize(entries);
        long oldOffset = header.snapshotsOffset();
        long oldBytes = header.nbSnapshots() == 0 ? 0 : Snapshots.tableBytes(file, header, forCheck);
        // only the part inside the file has refcounts (check reads a table past the end as zeroes)
        oldBytes = Math.max(0, Math.min(oldBytes, file.size() - oldOffset));
        long offset = 0;
        if (table.length > 0) {
            long clusters = Qcow2Header.ceilShift(table.length, clusterBits);
            offset = refcounts.allocate((int) clusters);
            refcounts.writeIncreases();
            file.write(offset, table);
            file.flush();
        }
        ByteBuffer b = ByteBuffer.allocate(12).putInt(entries.size()).putLong(offset).flip();
        file.write(60, b);
        file.flush();
        header = rereadHeader();
        // as qemu: the old table's clusters that are free now are discarded in the file (read as zero)
        refcounts.queueFree(oldOffset, oldBytes, true);
        refcounts.applyQueuedFrees();
    }

    // ---- for SnapshotOps (callers hold the lock) ------------------------------------------------

    long[] readTable(long offset, int entries) throws BlockException {
        return readL1(offset, entries);
    }

    /**
     * After {@link MetadataCommit} switched the header: the tables, refcounts and size are read
     * back from the image and every cache of the old state is dropped.
     */
    void reloadMetadata() throws BlockException {
        header = rereadHeader();
        size = header.size();
        l1Offset = header.l1TableOffset();
        l1 = readL1(l1Offset, header.l1Size());
        l1DirtyClusters.clear();
        l2.clear();
        refcounts = new Refcounts(file, header, this::refcountTableMoved, forCheck);
        refcounts.setGuard(this::isKnownMetadata);
        refcounts.setBeforeIncrease(this::markDirtyIfLazy);
        invalidateInflated();
        compressedFreeGeneration = -1;
    }

    @Override
    public void close() throws BlockException {
        lock.lock();
        try {
            if (closed) {
                return;
            }
            quiesce();
            if (!readOnly) {
                flushLocked();
                if (bitmaps != null) {
                    bitmaps.store();
                }
                if (header.dirty()) {
                    // everything is on disk and consistent: a clean close clears the dirty bit
                    writeIncompatible(header.incompatibleFeatures() & ~Qcow2Header.INCOMPAT_DIRTY);
                }
            }
            closed = true;
            l2.clear();
        } finally {
            lock.unlock();
        }
    }
}
