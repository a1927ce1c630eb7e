package org.blockhaus.shell.impl;

import java.io.PrintStream;
import java.nio.ByteBuffer;
import java.util.ArrayList;
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
        CheckResult.Repair repair = CheckResult.Repair.NONE;
        if (a.has("r")) {
            repair = switch (a.get("r")) {
                case "leaks" -> CheckResult.Repair.LEAKS;
                case "all" -> CheckResult.Repair.ALL;
                default -> throw new UsageException("Invalid option for -r: " + a.get("r"));
            };
        }
        Image image = img.open(filename, a.get("f"), a.has("image-opts"), repair != CheckResult.Repair.NONE,
                a.has("U") || a.has("force-share"));
        try {
            if (!(image.driverNode() instanceof CheckableNode checkable)) {
                throw new CommandException("This image format does not support checks", 63);
            }
            CheckResult first = checkable.check(repair);
            CheckResult before = null;
            CheckResult result = first;
            if (repair != CheckResult.Repair.NONE && (first.leaks() > 0 || first.corruptions() > 0)) {
                before = first;
                result = checkable.check(CheckResult.Repair.NONE);
            }
            Results.Check c = new Results.Check(image.filename(), image.driverName(), result, before, output);
            return a.has("q") ? new QuietResult(c.exitCode()) : c;
        } finally {
            image.close();
        }
    }

    /** -q: nothing to print, only the exit code. */
    record QuietResult(int exitCode) implements Results.Result {
    }

    // ---- resize -------------------------------------------------------------------------

    Object resize(String[] argv) throws UsageException, BlockException {
        Args a = Args.parse(argv, "f", "hqU", Set.of("object", "preallocation"), Set.of("image-opts", "shrink",
                "help"));
        List<String> pos = a.positional();
        if (pos.size() != 2) {
            throw new UsageException("Expecting image file name and size");
        }
        String filename = pos.get(0);
        String sizeText = pos.get(1);
        Preallocation prealloc = a.has("preallocation") ? Preallocation.parse(a.get("preallocation"))
                : Preallocation.OFF;
        Image image = img.open(filename, a.get("f"), a.has("image-opts"), true, false);
        try {
            long current = image.size();
            long size;
            try {
                if (sizeText.startsWith("+") || sizeText.startsWith("-")) {
                    long delta = Sizes.parse(sizeText.substring(1));
                    size = sizeText.startsWith("+") ? Math.addExact(current, delta) : current - delta;
                } else {
                    size = Sizes.parse(sizeText);
                }
            } catch (BlockException | ArithmeticException e) {
                throw BlockException.invalid("Parameter 'size' expects a non-negative number below 2^64\n"
                        + "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
                        + "and exabytes, respectively.");
            }
            if (size < 0) {
                throw BlockException.invalid("New image size must be positive");
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
        Args a = Args.parse(argv, "fOol", "hU", Set.of("output", "object", "size"), Set.of("image-opts",
                "force-share", "help"));
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
        Options o = Options.parseKeyValue(String.join(",", a.all("o")), null);
        if (a.has("size")) {
            long size;
            try {
                size = Sizes.parse(a.get("size"));
            } catch (BlockException e) {
                throw BlockException.invalid("Invalid image size specified. You may use k, M, G, T, P or E suffixes"
                        + " for\nqemu-img: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
            }
            return new Results.Measure(core.measure(outFmt, o, size, null), output);
        }
        Image image = img.open(pos.get(0), a.get("f"), a.has("image-opts"), false, a.has("U")
                || a.has("force-share"));
        try {
            return new Results.Measure(core.measure(outFmt, o, image.size(), image), output);
        } finally {
            image.close();
        }
    }

    // ---- snapshot -----------------------------------------------------------------------

    Object snapshot(String[] argv) throws UsageException, BlockException {
        Args a = Args.parse(argv, "acd", "hlqU", Set.of("object"), Set.of("image-opts", "force-share", "help"));
        String filename = Img.single(a, "Expecting one image file name");
        int actions = (a.has("l") ? 1 : 0) + (a.has("a") ? 1 : 0) + (a.has("c") ? 1 : 0) + (a.has("d") ? 1 : 0);
        if (actions > 1) {
            throw new UsageException("Cannot mix '-l', '-a', '-c', '-d'");
        }
        boolean list = actions == 0 || a.has("l");
        Image image = img.open(filename, null, a.has("image-opts"), !list, list && (a.has("U")
                || a.has("force-share")));
        try {
            SnapshotNode sn = image.driverNode() instanceof SnapshotNode s ? s : null;
            if (list) {
                return new Results.Snapshots(filename, sn == null ? List.of() : sn.snapshots());
            }
            String name = a.has("c") ? a.get("c") : a.has("a") ? a.get("a") : a.get("d");
            String verb = a.has("c") ? "create" : a.has("a") ? "apply" : "delete";
            if (sn == null) {
                throw new BlockException(Reason.UNSUPPORTED, "Could not " + verb + " snapshot '" + name
                        + "': Operation not supported");
            }
            try {
                switch (verb) {
                    case "create" -> sn.createSnapshot(name);
                    case "apply" -> sn.applySnapshot(name);
                    default -> sn.deleteSnapshot(name);
                }
            } catch (BlockException e) {
                throw e.prepend("Could not " + verb + " snapshot '" + name + "': ");
            }
            return new Text("");
        } finally {
            image.close();
        }
    }

    // ---- amend --------------------------------------------------------------------------

    Object amend(String[] argv) throws UsageException, BlockException {
        Args a = Args.parse(argv, "oft", "hpq", Set.of("object"), Set.of("image-opts", "force", "help"));
        String filename = Img.single(a, "Expecting one image file name");
        String optText = String.join(",", a.all("o"));
        if (optText.isEmpty()) {
            throw new UsageException("Must specify options (-o)");
        }
        Image image = img.open(filename, a.get("f"), a.has("image-opts"), true, false);
        try {
            if (!(image.driverNode() instanceof AmendableNode amendable)) {
                throw new BlockException(Reason.UNSUPPORTED, "Format driver '" + image.driverName()
                        + "' does not support option amendment");
            }
            amendable.amend(Options.parseKeyValue(optText, null), a.has("force"));
            image.flush();
        } finally {
            image.close();
        }
        return new Text("");
    }

    // ---- commit -------------------------------------------------------------------------

    Object commit(String[] argv) throws UsageException, BlockException {
        Args a = Args.parse(argv, "ftbr", "hqdp", Set.of("object"), Set.of("image-opts", "help"));
        String filename = Img.single(a, "Expecting one image file name");
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
                    throw BlockException.invalid("'" + a.get("b") + "' is not in the backing chain of '" + filename
                            + "'");
                }
            }
            base = core.open(b.filename(), Options.of("driver", b.driverName()), new OpenMode(true, false,
                    img::warn));
            long size = top.size();
            if (base.size() < size) {
                base.truncate(size, false, Preallocation.OFF);
            }
            Img.Progress p = new Img.Progress(a.has("p") && !a.has("q") ? out : null);
            ByteBuffer buf = ByteBuffer.allocateDirect(CHUNK);
            for (long off = 0; off < size; ) {
                Results.MapEntry e = Img.mapEntry(top, off, Math.min(CHUNK, size - off));
                if (e.present() && e.depth() < baseDepth) {
                    if (e.zero()) {
                        base.writeZeroes(off, e.length(), 0);
                    } else {
                        buf.clear().limit((int) e.length());
                        top.read(off, buf);
                        buf.flip();
                        base.write(off, buf, 0);
                    }
                }
                off += e.length();
                p.update(100.0 * off / size);
            }
            base.flush();
            p.finish();
        } finally {
            top.close();
            if (base != null) {
                base.close();
            }
        }
        if (!a.has("d")) {
            emptyImage(filename, a.get("f"));
        }
        return new Text(a.has("q") ? "" : "Image committed.\n");
    }

    /** After a commit the top's data lives in the base: discard it so reads go through again. */
    private void emptyImage(String filename, String fmt) throws BlockException {
        Options o = Options.of("backing", null);
        if (fmt != null) {
            o = o.with("driver", fmt);
        }
        Image top = core.open(filename, o, new OpenMode(true, false, img::warn));
        try {
            top.discard(0, top.size());
        } finally {
            top.close();
        }
    }

    // ---- rebase -------------------------------------------------------------------------

    Object rebase(String[] argv) throws UsageException, BlockException {
        Args a = Args.parse(argv, "fFbtT", "hqpuUc", Set.of("object"), Set.of("image-opts", "force-share", "help"));
        String filename = Img.single(a, "Expecting one image file name");
        if (!a.has("b")) {
            throw new UsageException("Must specify backing file (-b) or use '' as argument");
        }
        String newBacking = a.get("b").isEmpty() ? null : a.get("b");
        String newFmt = a.get("F");
        if (newBacking != null && newFmt == null && !a.has("u")) {
            // like create: the backing format is never guessed silently
            newFmt = null;
        }
        if (a.has("u")) {
            Options o = a.get("f") == null ? Options.of("backing", null) : Options.of("driver", a.get("f"),
                    "backing", null);
            Image image = core.open(filename, o, new OpenMode(true, false, img::warn));
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
            if (newBacking != null) {
                String resolved = newBacking;
                java.nio.file.Path parent = java.nio.file.Path.of(image.filename()).getParent();
                if (!newBacking.startsWith("/") && parent != null) {
                    resolved = parent.resolve(newBacking).toString();
                }
                nb = core.open(resolved, newFmt == null ? Options.empty() : Options.of("driver", newFmt),
                        new OpenMode(false, true, img::warn));
            }
            long size = image.size();
            Img.Progress p = new Img.Progress(a.has("p") && !a.has("q") ? out : null);
            ByteBuffer oldData = ByteBuffer.allocateDirect(CHUNK);
            ByteBuffer newData = ByteBuffer.allocateDirect(CHUNK);
            for (long off = 0; off < size; ) {
                var st = image.blockStatus(off, Math.min(CHUNK, size - off));
                long n = st.length();
                if (!st.isAllocated()) {
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
                    if (oldData.mismatch(newData) >= 0) {
                        image.write(off, oldData, 0);
                    }
                }
                off += n;
                p.update(100.0 * off / size);
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

    private static void changeBacking(Image image, String name, String fmt) throws BlockException {
        if (!(image.driverNode() instanceof AmendableNode amendable)) {
            throw new BlockException(Reason.UNSUPPORTED, "Could not change the backing file to '" + name
                    + "': Operation not supported");
        }
        amendable.changeBackingFile(name, fmt);
    }

    // ---- bench --------------------------------------------------------------------------

    Object bench(String[] argv) throws UsageException, BlockException {
        Args a = Args.parse(argv, "cdfiosSt", "hnqwU", Set.of("object", "flush-interval",
                "pattern"), Set.of("image-opts", "no-drain", "force-share", "help"));
        String filename = Img.single(a, "Expecting one image file name");
        long count = parseNum(a.get("c", "75000"), "request count");
        int depth = (int) parseNum(a.get("d", "64"), "queue depth");
        int size = (int) Sizes.parse(a.get("s", "4096"));
        long step = a.has("S") ? Sizes.parse(a.get("S")) : size;
        long start = a.has("o") ? Sizes.parse(a.get("o")) : 0;
        boolean write = a.has("w");
        int pattern = a.has("pattern") ? Integer.parseInt(a.get("pattern")) : 0;
        if (depth < 1 || depth > 4096 || size < 1 || size > (64 << 20)) {
            throw BlockException.invalid("Invalid queue depth or buffer size specified");
        }
        Image image = img.open(filename, a.get("f"), a.has("image-opts"), write, !write && (a.has("U")
                || a.has("force-share")));
        String header = String.format("Sending %d %s requests, %d bytes each, %d in parallel (starting at offset %d,"
                + " step size %d)", count, write ? "write" : "read", size, depth, start, step);
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
                                    buf.put((byte) pattern);
                                }
                                buf.flip();
                                image.write(off, buf, 0);
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
            return a.has("q") ? new Text("") : new Results.Bench(header, seconds);
        } finally {
            image.close();
        }
    }

    private static long parseNum(String s, String what) throws BlockException {
        try {
            long v = Long.parseLong(s);
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
            if (eq < 0) {
                throw new UsageException("unrecognized operand " + p);
            }
            String k = p.substring(0, eq);
            String v = p.substring(eq + 1);
            switch (k) {
                case "if" -> in = v;
                case "of" -> outName = v;
                case "bs" -> {
                    try {
                        bs = Sizes.parse(v);
                    } catch (BlockException e) {
                        bs = 0;
                    }
                    if (bs <= 0 || bs > Integer.MAX_VALUE) {
                        throw BlockException.invalid("invalid number: '" + v + "'");
                    }
                }
                case "count" -> count = ddNumber(v);
                case "skip" -> skip = ddNumber(v);
                default -> throw new UsageException("unrecognized operand " + p);
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
            if (from > inSize) {
                throw BlockException.invalid("cannot skip to specified offset");
            }
            // qemu-img dd counts "count" from the start of the input, skipped blocks included
            long end = inSize;
            if (count >= 0 && Math.multiplyHigh(count, bs) == 0 && count * bs <= inSize) {
                end = count * bs;
            }
            long size = Math.max(0, end - from);
            String outFmt = a.get("O", "raw");
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

    private static long ddNumber(String v) throws BlockException {
        try {
            return Sizes.parse(v);
        } catch (BlockException e) {
            throw BlockException.invalid("invalid number: '" + v + "'");
        }
    }
}
