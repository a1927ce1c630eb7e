/*
 * qcow2 ("QEMU copy-on-write", version 2 and 3) is QEMU's native image format: a virtual disk is
 * cut into clusters that a two-level table (L1, L2) maps to clusters of the image file, allocated
 * on first write and reference counted, so that images can be sparse, layered on a backing file,
 * compressed per cluster and snapshotted internally. The on-disk format is specified in QEMU's
 * repository, docs/interop/qcow2.rst; the names in this package (cluster, L1/L2, refcount table and
 * block, COPIED, compressed descriptor, header extension) are the spec's.
 *
 * This driver: header (Qcow2Header), the file below (HostFile), cluster mapping and I/O (Qcow2Node
 * with its L2Cache), refcounts and allocation (Refcounts), compressed clusters (Compression),
 * internal snapshots (Snapshots), qemu-img check (Qcow2Check) and create (Qcow2Create).
 */
package org.blockhaus.format.qcow2;

import java.nio.ByteBuffer;
import java.util.List;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.spi.BlockDriver;
import org.blockhaus.api.spi.CheckResult;
import org.blockhaus.api.Options;
import org.blockhaus.api.spi.CreateContext;
import org.blockhaus.api.spi.MeasureResult;
import org.blockhaus.api.spi.DriverDescriptor;
import org.blockhaus.api.spi.OpenContext;
import org.blockhaus.api.spi.OptionSpec;
import org.blockhaus.api.spi.OptionSpec.OptionType;
import org.osgi.service.component.annotations.Component;

/** The qcow2 format driver (QEMU name "qcow2"). */
@Component(service = BlockDriver.class, property = {"blk.driver=qcow2", "blk.kind=format"})
public final class Qcow2Driver implements BlockDriver {
    static final long DEFAULT_L2_CACHE = 32L << 20;

    /** In the order qemu-img 7.2 prints them in its "Formatting" line. */
    private static final List<OptionSpec> CREATE_OPTIONS = List.of(
            OptionSpec.of("encryption", OptionType.BOOL,
                    "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)"),
            OptionSpec.of("encrypt.*", OptionType.STRING, "Encryption options (format, key-secret, cipher-alg ...)"),
            OptionSpec.of("cluster_size", OptionType.SIZE, "65536", "qcow2 cluster size"),
            OptionSpec.of("extended_l2", OptionType.BOOL, "off", "Extended L2 tables"),
            OptionSpec.choice("preallocation", null,
                    "Preallocation mode (allowed values: off, metadata, falloc, full)",
                    "off", "metadata", "falloc", "full"),
            OptionSpec.choice("compression_type", "zlib", "Compression method used for image cluster compression",
                    "zlib", "zstd"),
            OptionSpec.of("size", OptionType.SIZE, "Virtual disk size"),
            OptionSpec.of("compat", OptionType.STRING, "Compatibility level (v2 [0.10] or v3 [1.1])"),
            OptionSpec.of("backing_file", OptionType.STRING, "File name of a base image"),
            OptionSpec.of("backing_fmt", OptionType.STRING, "Image format of the base image"),
            OptionSpec.of("data_file", OptionType.STRING, "File name of an external data file"),
            OptionSpec.of("data_file_raw", OptionType.BOOL, "The external data file must stay valid as a raw image"),
            OptionSpec.of("lazy_refcounts", OptionType.BOOL, "off", "Postpone refcount updates"),
            OptionSpec.of("refcount_bits", OptionType.NUMBER, "16", "Width of a reference count entry in bits"));

    /** qemu's qcow2 runtime options; the tuning ones we do not need are accepted and have no effect. */
    private static final List<OptionSpec> OPEN_OPTIONS = List.of(
            OptionSpec.of("l2-cache-size", OptionType.SIZE, "Maximum L2 table cache size"),
            OptionSpec.of("cache-size", OptionType.SIZE, "Maximum metadata cache size (the L2 cache gets it)"),
            OptionSpec.of("refcount-cache-size", OptionType.SIZE, "Accepted for compatibility; no effect"),
            OptionSpec.of("l2-cache-entry-size", OptionType.SIZE, "Accepted for compatibility; no effect"),
            OptionSpec.of("cache-clean-interval", OptionType.NUMBER, "Accepted for compatibility; no effect"),
            OptionSpec.of("lazy-refcounts", OptionType.BOOL,
                    "Postpone refcount updates (default: the image's lazy_refcounts bit; needs compat 1.1)"),
            OptionSpec.of("pass-discard-request", OptionType.BOOL,
                    "Free clusters of guest discards are discarded in the file too (default: discard=unmap)"),
            OptionSpec.of("pass-discard-snapshot", OptionType.BOOL, "on",
                    "Clusters freed by snapshot operations are discarded in the file too"),
            OptionSpec.of("pass-discard-other", OptionType.BOOL, "Accepted for compatibility; no effect"),
            OptionSpec.of("overlap-check.*", OptionType.STRING,
                    "Accepted for compatibility; allocation never overwrites known metadata"));

    /**
     * What qemu-img amend takes for an existing image: the layout options are creation-only, and
     * an encrypted image's keyslots replace the encryption creation options. The encrypt.* ones
     * are listed as qemu lists them; this driver has no encryption, so amending them fails.
     */
    private static final List<OptionSpec> AMEND_OPTIONS = List.of(
            createOption("backing_file"), createOption("backing_fmt"), createOption("compat"),
            createOption("data_file"), createOption("data_file_raw"),
            OptionSpec.of("encrypt.iter-time", OptionType.NUMBER, "Time to spend in PBKDF in milliseconds"),
            OptionSpec.of("encrypt.keyslot", OptionType.NUMBER, "Select a single keyslot to modify explicitly"),
            OptionSpec.of("encrypt.new-secret", OptionType.STRING,
                    "New secret to set in the matching keyslots. Empty string to erase"),
            OptionSpec.of("encrypt.old-secret", OptionType.STRING, "Select all keyslots that match this password"),
            OptionSpec.of("encrypt.state", OptionType.STRING,
                    "Select new state of affected keyslots (active/inactive)"),
            createOption("lazy_refcounts"), createOption("refcount_bits"), createOption("size"));

    private static final DriverDescriptor DESCRIPTOR = new DriverDescriptor("qcow2", DriverDescriptor.Kind.FORMAT,
            "QEMU copy-on-write image, version 2 and 3", List.of(), OPEN_OPTIONS, CREATE_OPTIONS, true,
            AMEND_OPTIONS);

    private static OptionSpec createOption(String name) {
        return CREATE_OPTIONS.stream().filter(s -> s.name().equals(name)).findFirst().orElseThrow();
    }

    @Override
    public DriverDescriptor descriptor() {
        return DESCRIPTOR;
    }

    @Override
    public int probe(ByteBuffer head, String filename) {
        if (head.remaining() < 8) {
            return 0;
        }
        int p = head.position();
        int version = head.getInt(p + 4);
        return head.getInt(p) == Qcow2Header.MAGIC && (version == 2 || version == 3) ? 100 : 0;
    }

    @Override
    public BlockNode open(OpenContext ctx) throws BlockException {
        HostFile file = new HostFile(ctx.openFile());
        Qcow2Header h = readHeader(file, ctx.forCheck());
        boolean readOnly = ctx.readOnly();
        if (!readOnly && h.corrupt()) {
            throw new BlockException(Reason.CORRUPT, "qcow2: image is corrupt (incompatible feature bit 1 is set);"
                    + " cannot be opened read/write. Open it read-only or repair it with 'qemu-img check -r all'");
        }
        long cache = ctx.options().getSize("l2-cache-size", ctx.options().getSize("cache-size", DEFAULT_L2_CACHE));
        BlockNode backing = null;
        if (h.backingFile() != null) {
            backing = ctx.openBacking(h.backingFile(), h.backingFormat());
        }
        HostFile dataFile = null;
        if ((h.incompatibleFeatures() & Qcow2Header.INCOMPAT_DATA_FILE) != 0) {
            BlockNode df = ctx.openChild("data-file", h.dataFile(), false);
            if (df == null) {
                throw BlockException.invalid("qcow2: the image uses an external data file (incompatible feature bit"
                        + " 2) but names none; give one with the data-file option");
            }
            dataFile = new HostFile(df);
        } else if ((h.autoclearFeatures() & Qcow2Header.AUTOCLEAR_DATA_FILE_RAW) != 0) {
            throw Qcow2Header.corrupt("data-file-raw (autoclear bit 1) is set without an external data file");
        }
        Qcow2Node node = new Qcow2Node(file, dataFile, h, backing, readOnly, cache, ctx.forCheck());
        String discardMode = ctx.options().get("discard", "ignore");
        node.setDiscardPassThrough(ctx.options().getBool("pass-discard-request",
                discardMode.equals("unmap") || discardMode.equals("on")),
                ctx.options().getBool("pass-discard-snapshot", true));
        if (ctx.options().has("lazy-refcounts")) {
            node.setLazyRefcounts(ctx.options().getBool("lazy-refcounts", false));
        }
        if (!readOnly && h.dirty() && !ctx.forCheck()) {
            // Refcounts may lag behind the tables (a lazy-refcounts writer died): repaired as qemu
            // does, by 'check -r all' (refcounts recounted, rebuilt if a used cluster has none, COPIED
            // set right), then the bit is cleared. Killed during the repair, the image stays dirty and
            // is repaired again. Read-only opens read as they are, and a check sees the image as it
            // is (qemu's BDRV_O_CHECK); its clean close clears the bit, as qemu's.
            CheckResult r;
            try {
                r = node.check(CheckResult.Repair.ALL);
            } catch (BlockException e) {
                throw new BlockException(e.reason(), "Could not repair dirty image: " + e.getMessage(), e);
            }
            if (r.checkErrors() > 0) {
                throw new BlockException(Reason.CORRUPT, "Could not repair dirty image: " + r.checkErrors()
                        + " errors while checking it; run 'qemu-img check -r all'");
            }
            node.writeIncompatible(node.header().incompatibleFeatures() & ~Qcow2Header.INCOMPAT_DIRTY);
        }
        try {
            node.openBitmaps();
        } catch (BlockException e) {
            node.close();
            throw e;
        }
        return node;
    }

    /** @param forCheck an open for check: see {@link Qcow2Header#parse(ByteBuffer, long, boolean)} */
    static Qcow2Header readHeader(HostFile file, boolean forCheck) throws BlockException {
        long fileSize = file.size();
        int headLen = (int) Math.min(fileSize, Qcow2Header.V3_HEADER_LENGTH);
        ByteBuffer head = file.read(0, headLen, "qcow2 header");
        int clusterSize = 1 << Qcow2Header.MAX_CLUSTER_BITS;
        if (headLen >= 24) {
            int bits = head.getInt(20);
            if (bits >= Qcow2Header.MIN_CLUSTER_BITS && bits <= Qcow2Header.MAX_CLUSTER_BITS) {
                clusterSize = 1 << bits;
            }
        }
        if (headLen < Qcow2Header.V2_HEADER_LENGTH || head.getInt(20) < Qcow2Header.MIN_CLUSTER_BITS
                || head.getInt(20) > Qcow2Header.MAX_CLUSTER_BITS) {
            return Qcow2Header.parse(head, fileSize, forCheck); // fails with the precise reason
        }
        ByteBuffer first = file.read(0, (int) Math.min(fileSize, clusterSize), "qcow2 header");
        return Qcow2Header.parse(first, fileSize, forCheck);
    }

    @Override
    public void create(CreateContext ctx) throws BlockException {
        Qcow2Create.create(ctx);
    }

    @Override
    public MeasureResult measure(Options createOptions, long size, BlockNode source) throws BlockException {
        return Measure.measure(createOptions, size, source);
    }
}
