package org.blockhaus.shell.impl;

import java.io.PrintStream;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicLong;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.api.Preallocation;
import org.blockhaus.api.Sizes;
import org.blockhaus.api.spi.AmendableNode;
import org.blockhaus.api.spi.CheckResult;
import org.blockhaus.api.spi.CheckableNode;
import org.blockhaus.api.spi.SnapshotNode;
import org.blockhaus.core.BlockCore;
import org.blockhaus.shell.impl.Args.UsageException;
import org.blockhaus.shell.impl.Img.CommandException;
import org.blockhaus.shell.impl.Results.Output;
import org.blockhaus.shell.impl.Results.Text;

/**
 * qemu-img's commands that change or inspect an existing image: check, resize, measure,
 * snapshot, amend, commit, rebase, bench and dd. Like {@link Img}, each returns a result.
 */
final class ImgMaintenance {
    private static final int CHUNK = 2 << 20;
    /** The most a QEMU mirror job (qemu-img commit) copies in one operation. */
    private static final int COMMIT_OP = 1 << 20;

    private final BlockCore core;
    private final Img img;
    private final PrintStream out;

    ImgMaintenance(BlockCore core, Img img, PrintStream out) {
        this.core = core;
        this.img = img;
        this.out = out;
    }

    static final Set<String> COMMANDS = Set.of("check", "resize", "measure", "snapshot", "amend", "commit",
            "rebase", "bench", "dd");

    Object run(String command, String[] args) throws UsageException, BlockException, CommandException {
        return switch (command) {
            case "check" -> check(args);
            case "resize" -> resize(args);
            case "measure" -> measure(args);
            case "snapshot" -> snapshot(args);
            case "amend" -> amend(args);
            case "commit" -> commit(args);
            case "rebase" -> rebase(args);
            case "bench" -> bench(args);
            case "dd" -> dd(args);
            default -> throw new UsageException("Command not found: " + command);
        };
    }

    // ---- check --------------------------------------------------------------------------

    Object check(String[] argv) throws UsageException, BlockException, CommandException {
        Args a = Args.parse(argv, "frT", "hqU", Set.of("output", "object"), Set.of("image-opts", "force-share",
                "help"));
        Output output = Img.output(a);
        String filename = Img.single(a, "Expecting one image file name");
        Img.checkCacheModes(a, false, true);
        CheckResult.Repair repair = CheckResult.Repair.NONE;
        if (a.has("r")) {
            repair = switch (a.get("r")) {
                case "leaks" -> CheckResult.Repair.LEAKS;
                case "all" -> CheckResult.Repair.ALL;
                default -> throw new UsageException("Unknown option value for -r (expecting 'leaks' or 'all'): "
                        + a.get("r"));
            };
        }
        Image image = img.openForCheck(filename, a.get("f"), a.has("image-opts"), repair != CheckResult.Repair.NONE,
                a.has("U") || a.has("force-share"));
        try {
            if (!(image.driverNode() instanceof CheckableNode checkable)) {
                throw new CommandException("This image format does not support checks", 63);
            }
            // findings go to stderr as they come, as qemu-img prints them
            java.util.function.Consumer<String> findings = img::errorLine;
            CheckResult result;
            try {
                result = checkable.check(repair, findings);
                if (result.corruptionsFixed() > 0 || result.leaksFixed() > 0) {
                    // qemu-img checks a repaired image once more and reports that, with the repair counts
                    CheckResult again = checkable.check(CheckResult.Repair.NONE, findings);
                    result = new CheckResult(again.corruptions(), again.leaks(), again.checkErrors(),
                            result.corruptionsFixed(), result.leaksFixed(), again.imageEndOffset(),
                            again.totalClusters(), again.allocatedClusters(), again.fragmentedClusters(),
                            again.compressedClusters());
                }
            } catch (BlockException e) {
                throw new CommandException("Check failed: " + e.getMessage(), 1);
            }
            Results.Check c = new Results.Check(image.filename(), image.driverName(), result, output);
            return a.has("q") ? new Results.Quiet(c.exitCode()) : c;
        } finally {
            image.close();
        }
    }

    // ---- resize -------------------------------------------------------------------------

    /**
     * qemu-img resize: the size is always the last argument, taken before the options are read, so
     * "-1G" needs no "--"; it is parsed (and refused) before the image is opened. A relative size
     * is added with qemu's 64-bit wrap-around, then checked to be positive.
     */
    Object resize(String[] argv) throws UsageException, BlockException {
        if (argv.length < 2) {
            throw new UsageException("Not enough arguments");
        }
        String sizeText = argv[argv.length - 1];
        Args a = Args.parse(java.util.Arrays.copyOf(argv, argv.length - 1), "f", "hq",
                Set.of("object", "preallocation"), Set.of("image-opts", "shrink", "help"));
        List<String> pos = a.positional();
        if (pos.size() != 1) {
            throw new UsageException("Expecting image file name and size");
        }
        String filename = pos.get(0);
        Preallocation prealloc = Preallocation.OFF;
        if (a.has("preallocation")) {
            try {
                prealloc = Preallocation.parse(a.get("preallocation"));
            } catch (BlockException e) {
                throw BlockException.invalid("Invalid preallocation mode '" + a.get("preallocation") + "'");
            }
        }
        int relative = sizeText.startsWith("+") ? 1 : sizeText.startsWith("-") ? -1 : 0;
        long n = Sizes.parseOption("size", relative == 0 ? sizeText : sizeText.substring(1), img::warn);
        Image image = img.open(filename, a.get("f"), a.has("image-opts"), true, false);
        try {
            long current = image.size();
            long size = current + relative * n; // n is unsigned: this wraps as qemu-img's int64_t sum does
            if (relative == 0) {
                size = n;
            }
            if (size <= 0) {
                throw BlockException.invalid("New image size must be positive");
            }
            if (size <= current && prealloc != Preallocation.OFF) {
                throw BlockException.invalid("Preallocation can only be used for growing images");
            }
            if (size < current && !a.has("shrink")) {
                img.warnLater("Shrinking an image will delete all data beyond the shrunken image's end. Before"
                        + " performing such an operation, make sure there is no important data there.");
                throw BlockException.invalid("Use the --shrink option to perform a shrink operation.");
            }
            image.truncate(size, false, prealloc);
            image.flush();
        } finally {
            image.close();
        }
        return new Text(a.has("q") ? "" : "Image resized.\n");
    }

    // ---- measure ------------------------------------------------------------------------

    Object measure(String[] argv) throws UsageException, BlockException {
        Args a;
        try {
            a = Args.parse(argv, "fOol", "hU", Set.of("output", "object", "size"), Set.of("image-opts",
                    "force-share", "help"));
        } catch (Args.HelpRequested e) {
            throw e;
        } catch (UsageException e) {
            // qemu-img 7.2's measure alone lets getopt print the complaint (named after the
            // command), then shows the whole help and exits 0
            img.errorLine("measure: " + e.getoptMessage);
            return new Text(Usage.TEXT);
        }
        Output output = Img.output(a);
        List<String> pos = a.positional();
        if (a.has("size") == !pos.isEmpty()) {
            throw BlockException.invalid(a.has("size") ? "--size N cannot be used together with a filename."
                    : "Either --size N or one filename must be specified.");
        }
        if (pos.size() > 1) {
            throw new UsageException("Expecting one image file name");
        }
        String outFmt = a.get("O", "raw");
        String optText = Img.optionList(a);
        Options o = Options.parseKeyValue(optText, null);
        List<org.blockhaus.api.spi.OptionSpec> specs = core.createOptions(outFmt, null);
        for (String key : o.asMap().keySet()) {
            org.blockhaus.api.spi.OptionSpec spec = specs.stream().filter(sp -> sp.matches(key)).findFirst()
                    .orElseThrow(() -> BlockException.invalid("Invalid parameter '" + key + "'\nqemu-img: Invalid"
                            + " options for file format '" + outFmt + "'"));
            try {
                // values are parsed by type before the driver sees them, as qemu-img's option parser does
                switch (spec.type()) {
                    case SIZE -> o.getSize(key, 0);
                    case BOOL -> o.getBool(key, false);
                    case NUMBER -> o.getLong(key, 0);
                    default -> { }
                }
            } catch (BlockException e) {
                throw BlockException.invalid(e.getMessage() + "\nqemu-img: Invalid options for file format '"
                        + outFmt + "'");
            }
        }
        if (a.has("size")) {
            long size;
            size = Img.parseSize(a.get("size"), "image size", Long.MAX_VALUE, img::warn);
            return new Results.Measure(withoutBitmaps(core.measure(outFmt, o, size, null)), output);
        }
        Image image = img.open(pos.get(0), a.get("f"), a.has("image-opts"), false, a.has("U")
                || a.has("force-share"));
        try {
            if (a.has("l")) {
                img.loadSnapshot(image, a.get("l"));
            }
            var m = core.measure(outFmt, o, image.size(), image);
            // qemu-img counts bitmaps only for a source format that stores them (qcow2)
            return new Results.Measure(image.driverName().equals("qcow2") && outFmt.equals("qcow2")
                    ? new org.blockhaus.api.spi.MeasureResult(m.required(), m.fullyAllocated(), Math.max(0, m.bitmaps()))
                    : withoutBitmaps(m), output);
        } finally {
            image.close();
        }
    }

    private static org.blockhaus.api.spi.MeasureResult withoutBitmaps(org.blockhaus.api.spi.MeasureResult m) {
        return new org.blockhaus.api.spi.MeasureResult(m.required(), m.fullyAllocated(), -1);
    }

    // ---- snapshot -----------------------------------------------------------------------

    Object snapshot(String[] argv) throws UsageException, BlockException {
        Args a = Args.parse(argv, "acd", "hlqU", Set.of("object"), Set.of("image-opts", "force-share", "help"));
        String filename = Img.single(a, "Expecting one image file name");
        int actions = (a.has("l") ? 1 : 0) + (a.has("a") ? 1 : 0) + (a.has("c") ? 1 : 0) + (a.has("d") ? 1 : 0);
        if (actions > 1) {
            throw new UsageException("Cannot mix '-l', '-a', '-c', '-d'");
        }
        if (actions == 0) {
            // qemu-img snapshot without an action does nothing
            return new Text("");
        }
        boolean list = a.has("l");
        Image image = img.open(filename, null, a.has("image-opts"), !list, list && (a.has("U")
                || a.has("force-share")));
        try {
            SnapshotNode sn = image.driverNode() instanceof SnapshotNode s ? s : null;
            if (list) {
                return new Results.Snapshots(filename, sn == null ? List.of() : sn.snapshots());
            }
            String name = a.has("c") ? a.get("c") : a.has("a") ? a.get("a") : a.get("d");
            String verb = a.has("c") ? "create" : a.has("a") ? "apply" : "delete";
            String prefix = "Could not " + verb + " snapshot '" + name + "': ";
            if (sn == null) {
                // qemu-img's words for a format without internal snapshots, per action
                throw new BlockException(Reason.UNSUPPORTED, prefix + switch (verb) {
                    case "create" -> "-95 (Operation not supported)";
                    case "apply" -> "Block driver does not support snapshots";
                    default -> "snapshot not found";
                });
            }
            if (verb.equals("delete") && sn.snapshots().stream().noneMatch(x -> x.name().equals(name))) {
                // qemu-img snapshot -d finds snapshots by name only (-a takes an id too)
                throw new BlockException(Reason.NOT_FOUND, prefix + "snapshot not found");
            }
            try {
                switch (verb) {
                    case "create" -> sn.createSnapshot(name);
                    case "apply" -> sn.applySnapshot(name);
                    default -> sn.deleteSnapshot(name);
                }
            } catch (BlockException e) {
                if (e.reason() == Reason.NOT_FOUND && !verb.equals("create")) {
                    throw new BlockException(Reason.NOT_FOUND, prefix + (verb.equals("apply")
                            ? "Failed to load snapshot: No such file or directory" : "snapshot not found"));
                }
                throw e.prepend(prefix);
            }
            return new Text("");
        } finally {
            image.close();
        }
    }

    // ---- amend --------------------------------------------------------------------------

    Object amend(String[] argv) throws UsageException, BlockException {
        Args a = Args.parse(argv, "oft", "hpq", Set.of("object"), Set.of("image-opts", "force", "help"));
        if (a.positional().size() != 1) {
            throw BlockException.invalid("Expecting one image file name");
        }
        String filename = a.positional().get(0);
        String optText = Img.optionList(a);
        if (optText.isEmpty()) {
            throw new UsageException("Must specify options (-o)");
        }
        Img.checkCacheModes(a, true, false);
        if (a.has("f") && !a.has("image-opts") && Img.isHelp(optText)) {
            // with the format named, qemu-img lists its options without opening the image
            return amendHelp(a.get("f"));
        }
        Image image = img.open(filename, a.get("f"), a.has("image-opts"), true, false);
        try {
            if (Img.isHelp(optText)) {
                return amendHelp(image.driverName());
            }
            List<org.blockhaus.api.spi.OptionSpec> amendOptions = img.amendOptions(image.driverName());
            if (!(image.driverNode() instanceof AmendableNode amendable)) {
                throw new BlockException(Reason.UNSUPPORTED, "Format driver '" + image.driverName()
                        + "' does not support option amendment");
            }
            Options given = Options.parseKeyValue(optText, null);
            List<org.blockhaus.api.spi.OptionSpec> specs = core.createOptions(image.driverName(), null);
            for (String key : given.asMap().keySet()) {
                if (amendOptions.stream().noneMatch(sp -> sp.matches(key))) {
                    throw BlockException.invalid("Invalid parameter '" + key + "'" + (specs.stream().anyMatch(
                            sp -> sp.matches(key)) ? "\nThis option is only supported for image creation" : ""));
                }
            }
            // qemu's rule: naming the backing file or format at all means both must stay as they are
            Object current = image.info().get("backing-filename");
            Object currentFmt = image.info().get("backing-filename-format");
            if ((given.has("backing_file") || given.has("backing_fmt"))
                    && (!java.util.Objects.equals(given.get("backing_file"), current)
                    || !java.util.Objects.equals(given.get("backing_fmt"), currentFmt))) {
                throw BlockException.invalid("Cannot amend the backing file\nYou can use 'qemu-img rebase' instead.");
            }
            Img.Progress p = new Img.Progress(a.has("p") && !a.has("q") ? out : null);
            amendable.amend(Options.parseKeyValue(optText, null), a.has("force"));
            p.update(100);
            p.finish();
            image.flush();
        } finally {
            image.close();
        }
        return new Text("");
    }

    private Text amendHelp(String fmt) throws BlockException {
        return new Text("Amend options for '" + fmt + "':\n" + Img.helpLines(img.amendOptions(fmt)));
    }

    // ---- commit -------------------------------------------------------------------------

    Object commit(String[] argv) throws UsageException, BlockException {
        Args a = Args.parse(argv, "ftbr", "hqdp", Set.of("object"), Set.of("image-opts", "help"));
        String filename = Img.single(a, "Expecting one image file name");
        Img.checkCacheModes(a, true, false);
        Img.checkRateLimit(a);
        // qemu-img opens the top for writing: someone else's lock on it fails the commit first
        img.open(filename, a.get("f"), a.has("image-opts"), true, false).close();
        // The chain is read with force-share: we hold the base open for writing ourselves.
        Image top = img.open(filename, a.get("f"), a.has("image-opts"), false, true);
        Image base = null;
        try {
            int baseDepth = 1;
            Image b = top.backing();
            if (b == null) {
                throw BlockException.invalid("Image does not have a backing file");
            }
            if (a.has("b")) {
                String wanted = java.nio.file.Path.of(a.get("b")).toAbsolutePath().normalize().toString();
                while (b != null && !java.nio.file.Path.of(b.filename()).toAbsolutePath().normalize().toString()
                        .equals(wanted)) {
                    b = b.backing();
                    baseDepth++;
                }
                if (b == null) {
                    throw BlockException.invalid("Did not find '" + a.get("b") + "' in the backing chain of '"
                            + filename + "'");
                }
            }
            base = core.open(b.filename(), Options.of("driver", b.driverName()), new OpenMode(true, false,
                    img::warn));
            long size = top.size();
            if (base.size() < size) {
                base.truncate(size, false, Preallocation.OFF);
            }
            // What the layers above the base hold is what gets committed; qemu-img's commit (a
            // mirror job) counts its progress in those bytes, one copy operation at a time.
            List<Results.MapEntry> work = new ArrayList<>();
            long total = 0;
            for (long off = 0; off < size; ) {
                Results.MapEntry e = Img.mapEntry(top, off, Math.min(CHUNK, size - off));
                if (e.present() && e.depth() < baseDepth) {
                    work.add(e);
                    total += e.length();
                }
                off += e.length();
            }
            Img.Progress p = new Img.Progress(a.has("p") && !a.has("q") ? out : null);
            ByteBuffer buf = ByteBuffer.allocateDirect(COMMIT_OP);
            long done = 0;
            for (Results.MapEntry e : work) {
                for (long off = e.start(); off < e.start() + e.length(); ) {
                    int n = (int) Math.min(COMMIT_OP, e.start() + e.length() - off);
                    if (e.zero()) {
                        base.writeZeroes(off, n, 0);
                    } else {
                        buf.clear().limit(n);
                        top.read(off, buf);
                        buf.flip();
                        base.write(off, buf, 0);
                    }
                    off += n;
                    done += n;
                    p.update(100.0 * done / total);
                }
            }
            base.flush();
            p.finish();
        } finally {
            top.close();
            if (base != null) {
                base.close();
            }
        }
        // -b implies -d: the layers above the base keep their data
        if (!a.has("d") && !a.has("b")) {
            emptyImage(filename, a.get("f"), a.has("image-opts"));
        }
        return new Text(a.has("q") ? "" : "Image committed.\n");
    }

    /** After a commit the top's data lives in the base: discard it so reads go through again. */
    private void emptyImage(String filename, String fmt, boolean imageOpts) throws BlockException {
        Image top = img.open(filename, fmt, imageOpts, true, false, false);
        try {
            // qemu empties the top with the format's make_empty, which its dirty bitmaps do not see
            List<String> paused = new ArrayList<>();
            if (top.driverNode() instanceof org.blockhaus.api.spi.BitmapNode bn) {
                for (org.blockhaus.api.spi.BitmapNode.Bitmap b : bn.bitmaps()) {
                    if (b.enabled() && !b.inconsistent()) {
                        bn.enableBitmap(b.name(), false);
                        paused.add(b.name());
                    }
                }
            }
            boolean emptied = false;
            if (top.driverNode() instanceof org.blockhaus.api.spi.AmendableNode amendable) {
                try {
                    amendable.makeEmpty(); // qemu's make_empty: unallocated, not zero clusters
                    emptied = true;
                } catch (BlockException e) {
                    if (e.reason() != BlockException.Reason.UNSUPPORTED) {
                        throw e;
                    }
                }
            }
            if (!emptied) {
                top.discard(0, top.size());
            }
            for (String name : paused) {
                ((org.blockhaus.api.spi.BitmapNode) top.driverNode()).enableBitmap(name, true);
            }
        } finally {
            top.close();
        }
    }

    // ---- rebase -------------------------------------------------------------------------

    Object rebase(String[] argv) throws UsageException, BlockException {
        // qemu-img 7.2's rebase has no -c (compression came with 8.0)
        Args a = Args.parse(argv, "fFbtT", "hqpuU", Set.of("object"), Set.of("image-opts", "force-share", "help"));
        String filename = Img.single(a, "Expecting one image file name");
        Img.checkCacheModes(a, true, true);
        if (!a.has("b") && !a.has("u")) {
            throw new UsageException("Must specify backing file (-b) or use unsafe mode (-u)");
        }
        // -u without -b drops the backing file, as -b "" does
        String newBacking = a.get("b", "").isEmpty() ? null : a.get("b");
        String newFmt = a.get("F");
        if (a.has("u")) {
            // unsafe: only the header changes, so the old backing file need not even exist
            Options o = a.has("image-opts") ? Options.parseKeyValue(filename, "file").with("backing", null)
                    : a.get("f") == null ? Options.of("backing", null)
                    : Options.of("driver", a.get("f"), "backing", null);
            Image image;
            try {
                image = core.open(a.has("image-opts") ? null : filename, o, new OpenMode(true, false, img::warn));
            } catch (BlockException e) {
                throw e.prepend("Could not open '" + filename + "': ");
            }
            try {
                changeBacking(image, newBacking, newFmt);
            } finally {
                image.close();
            }
            return new Text("");
        }
        Image image = img.open(filename, a.get("f"), a.has("image-opts"), true, false);
        Image nb = null;
        try {
            if (!(image.driverNode() instanceof AmendableNode)) {
                // refuse before any data moves: the backing file could not be changed afterwards
                changeBacking(image, newBacking, newFmt);
            }
            if (newBacking != null) {
                String resolved = newBacking;
                java.nio.file.Path parent = java.nio.file.Path.of(image.filename()).getParent();
                if (!newBacking.startsWith("/") && parent != null) {
                    resolved = parent.resolve(newBacking).toString();
                }
                try {
                    nb = core.open(resolved, newFmt == null ? Options.empty() : Options.of("driver", newFmt),
                            new OpenMode(false, true, img::warn));
                } catch (BlockException e) {
                    throw e.prepend("Could not open new backing file '" + resolved + "': ");
                }
            }
            long size = image.size();
            Img.Progress p = new Img.Progress(a.has("p") && !a.has("q") ? out : null);
            ByteBuffer oldData = ByteBuffer.allocateDirect(CHUNK);
            ByteBuffer newData = ByteBuffer.allocateDirect(CHUNK);
            // Where the new backing file is in the old chain, only the layers above it can differ.
            Image oldBacking = image.backing();
            int prefixDepth = -1;
            if (nb != null) {
                int d = 0;
                for (Image b = oldBacking; b != null; b = b.backing(), d++) {
                    if (samePath(b.filename(), nb.filename())) {
                        prefixDepth = d;
                        break;
                    }
                }
            }
            // As qemu-img: steps of at most 2 MiB; each step that had to compare moves the bar on
            // by one share (100 / whole steps in the image); allocated or unchanged ranges do not.
            double share = 100.0 / Math.max(1, size / CHUNK);
            double progress = 0;
            for (long off = 0, n; off < size; off += n) {
                n = Math.min(CHUNK, size - off);
                var st = image.blockStatus(off, n);
                n = st.length();
                if (st.isAllocated()) {
                    continue;
                }
                if (prefixDepth >= 0 && oldBacking != null) {
                    Results.MapEntry e = Img.mapEntry(oldBacking, off, n);
                    n = e.length();
                    if (!(e.present() && e.depth() < prefixDepth)) {
                        continue;
                    }
                }
                oldData.clear().limit((int) n);
                image.read(off, oldData);
                oldData.flip();
                newData.clear().limit((int) n);
                long nbSize = nb == null ? 0 : nb.size();
                if (nb != null && off < nbSize) {
                    long inNew = Math.min(n, nbSize - off);
                    newData.limit((int) inNew);
                    nb.read(off, newData);
                    newData.limit((int) n);
                }
                while (newData.hasRemaining()) {
                    newData.put((byte) 0);
                }
                newData.flip();
                writeDifferences(image, off, oldData, newData);
                progress = Math.min(100, progress + share);
                p.update(progress);
            }
            image.flush();
            p.finish();
            changeBacking(image, newBacking, newFmt);
        } finally {
            if (nb != null) {
                nb.close();
            }
            image.close();
        }
        return new Text("");
    }

    /** The value of a size written as qemu-img reads it, or null if it is not a size at all. */
    private static boolean samePath(String a, String b) {
        try {
            return java.nio.file.Path.of(a).toAbsolutePath().normalize()
                    .equals(java.nio.file.Path.of(b).toAbsolutePath().normalize());
        } catch (java.nio.file.InvalidPathException e) {
            return a.equals(b);
        }
    }

    /** Writes the runs of sectors where the old backing's content differs from the new one's. */
    private static void writeDifferences(Image image, long off, ByteBuffer oldData, ByteBuffer newData)
            throws BlockException {
        int len = oldData.remaining();
        int sector = 512;
        int runStart = -1;
        for (int p = 0; p <= len; p += sector) {
            boolean differs = p < len && oldData.slice(p, Math.min(sector, len - p))
                    .mismatch(newData.slice(p, Math.min(sector, len - p))) >= 0;
            if (differs && runStart < 0) {
                runStart = p;
            } else if (!differs && runStart >= 0) {
                int end = Math.min(p, len);
                image.write(off + runStart, oldData.slice(runStart, end - runStart), 0);
                runStart = -1;
            }
        }
    }

    private static void changeBacking(Image image, String name, String fmt) throws BlockException {
        String prefix = "Could not change the backing file to '" + (name == null ? "" : name) + "': ";
        if (!(image.driverNode() instanceof AmendableNode amendable)) {
            throw new BlockException(Reason.UNSUPPORTED, prefix + "Operation not supported");
        }
        if (name != null && fmt == null) {
            throw BlockException.invalid(prefix + "backing format must be specified");
        }
        try {
            amendable.changeBackingFile(name, fmt);
        } catch (BlockException e) {
            throw e.prepend(prefix);
        }
    }

    // ---- bench --------------------------------------------------------------------------

    Object bench(String[] argv) throws UsageException, BlockException {
        Args a = Args.parse(argv, "cdfiosSt", "hnqwU", Set.of("object", "flush-interval",
                "pattern"), Set.of("image-opts", "no-drain", "force-share", "help"));
        String filename = Img.single(a, "Expecting one image file name");
        long count = parseNum(a.get("c", "75000"), "request count");
        int depth = (int) parseNum(a.get("d", "64"), "queue depth");
        long sizeArg = Img.parseSize(a.get("s", "4096"), "buffer size", Integer.MAX_VALUE, img::warn);
        long stepArg = a.has("S") ? Img.parseSize(a.get("S"), "step_size", Integer.MAX_VALUE, img::warn) : 0;
        // qemu-img: no step (or -S 0) means one buffer after the other
        long step = stepArg == 0 ? sizeArg : stepArg;
        long start = a.has("o") ? benchSize(a.get("o"), "offset") : 0;
        boolean write = a.has("w");
        if (a.has("t") && !Img.isCacheMode(a.get("t"))) {
            throw BlockException.invalid("Invalid cache mode");
        }
        if (a.has("i") && !Set.of("threads", "native", "io_uring").contains(a.get("i"))) {
            throw BlockException.invalid("Invalid aio option: " + a.get("i"));
        }
        int pattern = 0;
        if (a.has("pattern")) {
            try {
                pattern = (int) Math.max(-1, Math.min(Integer.MAX_VALUE, Img.cNumber(a.get("pattern"))));
            } catch (NumberFormatException e) {
                pattern = -1;
            }
            if (pattern < 0 || pattern > 0xff) {
                throw BlockException.invalid("Invalid pattern byte specified");
            }
        }
        long flushInterval = 0;
        if (a.has("flush-interval")) {
            long interval = parseNum(a.get("flush-interval"), "flush interval");
            flushInterval = interval;
            if (!write) {
                throw BlockException.invalid("--flush-interval is only available in write tests");
            }
            if (interval < depth) {
                throw BlockException.invalid("Flush interval can't be smaller than depth");
            }
        }
        if (depth < 1 || sizeArg > (64 << 20)) {
            throw BlockException.invalid("Invalid queue depth or buffer size specified");
        }
        boolean nativeAio = a.has("n") || "native".equals(a.get("i"));
        if (nativeAio && !"none".equals(a.get("t")) && !"directsync".equals(a.get("t"))) {
            throw BlockException.invalid("Could not open '" + filename + "': aio=native was specified, but it"
                    + " requires cache.direct=on, which was not specified.");
        }
        int size = (int) sizeArg;
        final int fill = pattern;
        boolean share = a.has("U") || a.has("force-share");
        if (write && share) {
            throw BlockException.invalid("Could not open '" + filename + "': force-share=on can only be used with"
                    + " read-only images");
        }
        Image image = img.open(filename, a.get("f"), a.has("image-opts"), write, share);
        String header = String.format("Sending %d %s requests, %d bytes each, %d in parallel (starting at offset %d,"
                + " step size %d)", count, write ? "write" : "read", size, depth, start, step)
                + (flushInterval > 0 ? "\nSending flush every " + flushInterval + " requests" : "");
        final long every = flushInterval;
        try {
            long imageSize = image.size();
            if (imageSize < size) {
                throw BlockException.invalid("Image is smaller than the buffer size");
            }
            AtomicLong next = new AtomicLong();
            long t0 = System.nanoTime();
            try (ExecutorService ex = Executors.newVirtualThreadPerTaskExecutor()) {
                List<Future<Void>> workers = new ArrayList<>();
                for (int w = 0; w < depth; w++) {
                    workers.add(ex.submit(() -> {
                        ByteBuffer buf = ByteBuffer.allocateDirect(size);
                        for (long i = next.getAndIncrement(); i < count; i = next.getAndIncrement()) {
                            long off = Math.floorMod(start + i * step, imageSize - size + 1);
                            buf.clear();
                            if (write) {
                                while (buf.hasRemaining()) {
                                    buf.put((byte) fill);
                                }
                                buf.flip();
                                image.write(off, buf, 0);
                                if (every > 0 && (i + 1) % every == 0) {
                                    image.flush();
                                }
                            } else {
                                image.read(off, buf);
                            }
                        }
                        return null;
                    }));
                }
                for (Future<Void> f : workers) {
                    f.get();
                }
            } catch (java.util.concurrent.ExecutionException e) {
                if (e.getCause() instanceof BlockException be) {
                    throw be;
                }
                throw new BlockException(Reason.IO, String.valueOf(e.getCause()), e.getCause());
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new BlockException(Reason.IO, "interrupted");
            }
            if (write) {
                image.flush();
            }
            double seconds = (System.nanoTime() - t0) / 1e9;
            // qemu-img bench reports even with -q
            return new Results.Bench(header, seconds);
        } finally {
            image.close();
        }
    }

    private static long benchSize(String s, String what) throws BlockException {
        return Img.parseSize(s, what);
    }

    private static long parseNum(String s, String what) throws BlockException {
        try {
            long v = Img.cNumber(s);
            if (v < 0) {
                throw new NumberFormatException();
            }
            return v;
        } catch (NumberFormatException e) {
            throw BlockException.invalid("Invalid " + what + " specified");
        }
    }

    // ---- dd -----------------------------------------------------------------------------

    Object dd(String[] argv) throws UsageException, BlockException {
        Args a = Args.parse(argv, "fO", "hU", Set.of("object"), Set.of("image-opts", "force-share", "help"));
        String in = null;
        String outName = null;
        long bs = 512;
        long count = -1;
        long skip = 0;
        for (String p : a.positional()) {
            int eq = p.indexOf('=');
            String k = eq < 0 ? p : p.substring(0, eq);
            String v = eq < 0 ? "" : p.substring(eq + 1);
            switch (k) {
                case "if" -> in = v;
                case "of" -> outName = v;
                case "bs" -> {
                    try {
                        bs = ddNumber(v, "bs");
                    } catch (BlockException e) {
                        if (!e.getMessage().contains("Must be between")) {
                            throw e;
                        }
                        bs = 0; // past the range: qemu-img names the range bs must be in
                    }
                    if (bs <= 0 || bs > Integer.MAX_VALUE) {
                        throw BlockException.invalid("Invalid bs specified. Must be between 1 and 2147483647.");
                    }
                }
                case "count" -> count = ddNumber(v, "count");
                case "skip" -> skip = ddNumber(v, "skip");
                default -> throw BlockException.invalid("unrecognized operand " + k);
            }
        }
        if (in == null || outName == null) {
            throw BlockException.invalid("Must specify both input and output files");
        }
        Image src = img.open(in, a.get("f"), a.has("image-opts"), false, a.has("U") || a.has("force-share"));
        Image dst = null;
        try {
            long inSize = src.size();
            long from = Math.multiplyHigh(skip, bs) != 0 ? Long.MAX_VALUE : skip * bs;
            String outFmt = a.get("O", "raw");
            if (core.drivers().stream().noneMatch(d -> d.name().equals(outFmt))) {
                throw BlockException.invalid("Unknown file format");
            }
            // qemu-img dd counts "count" from the start of the input, skipped blocks included
            long end = inSize;
            if (count >= 0 && Math.multiplyHigh(count, bs) == 0 && count * bs <= inSize) {
                end = count * bs;
            }
            // so a skip is "beyond the input" when it passes that end, not only the image's
            boolean skipBeyond = from > end;
            if (skipBeyond) {
                // qemu-img reports it, leaves an empty output file and exits 0
                img.error(in + ": cannot skip to specified offset");
                from = end;
            }
            long size = skipBeyond ? 0 : Math.max(0, end - from);
            core.create(outName, outFmt, Options.of("size", Long.toString(size)), s -> { }, img::warn);
            dst = core.open(outName, Options.of("driver", outFmt), new OpenMode(true, false, img::warn));
            ByteBuffer buf = ByteBuffer.allocateDirect((int) Math.min(CHUNK, Math.max(bs, 512)));
            for (long off = 0; off < size; ) {
                int n = (int) Math.min(buf.capacity(), size - off);
                buf.clear().limit(n);
                src.read(from + off, buf);
                buf.flip();
                dst.write(off, buf, 0);
                off += n;
            }
            dst.flush();
        } finally {
            src.close();
            if (dst != null) {
                dst.close();
            }
        }
        return new Text("");
    }

    private static long ddNumber(String v, String what) throws BlockException {
        return Img.parseSize(v, what);
    }
}
