package org.blockhaus.shell.impl;

import java.io.PrintStream;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.BlockStatus;
import org.blockhaus.api.ConvertOptions;
import org.blockhaus.api.Image;
import org.blockhaus.api.spi.BitmapNode;
import org.blockhaus.api.Options;
import org.blockhaus.api.Sizes;
import org.blockhaus.api.spi.OptionSpec;
import org.blockhaus.core.BlockCore;
import org.blockhaus.shell.impl.Args.UsageException;
import org.blockhaus.shell.impl.Results.Compare;
import org.blockhaus.shell.impl.Results.Converted;
import org.blockhaus.shell.impl.Results.Created;
import org.blockhaus.shell.impl.Results.Drivers;
import org.blockhaus.shell.impl.Results.Info;
import org.blockhaus.shell.impl.Results.MapEntry;
import org.blockhaus.shell.impl.Results.MapResult;
import org.blockhaus.shell.impl.Results.Output;
import org.blockhaus.shell.impl.Results.Text;

/**
 * qemu-img's subcommands: each parses qemu-img's arguments and returns a result object; nothing
 * here prints data (progress bars and warnings go to the given streams as qemu-img's do).
 */
final class Img {
    /** A failure with the exit code qemu-img gives for it (2 for compare errors, else 1). */
    static final class CommandException extends Exception {
        final int exitCode;

        /** Whether qemu-img ends the message with a newline (it does, but for a few). */
        final boolean newline;

        CommandException(String message, int exitCode) {
            this(message, exitCode, true);
        }

        CommandException(String message, int exitCode, boolean newline) {
            super(message);
            this.exitCode = exitCode;
            this.newline = newline;
        }
    }

    private final BlockCore core;
    private final PrintStream out;
    private final PrintStream err;

    Img(BlockCore core, PrintStream out, PrintStream err) {
        this.core = core;
        this.out = out;
        this.err = err;
    }

    static final Set<String> OWN = Set.of("drivers", "create", "info", "convert", "compare", "map", "bitmap");
    static final Set<String> SUBCOMMANDS;

    static {
        Set<String> all = new java.util.TreeSet<>(OWN);
        all.addAll(ImgMaintenance.COMMANDS);
        SUBCOMMANDS = java.util.Collections.unmodifiableSet(all);
    }

    /** Warnings qemu-img prints after the error that caused them. */
    private final List<String> deferred = new ArrayList<>();

    void warnLater(String message) {
        deferred.add(message);
    }

    List<String> deferredWarnings() {
        return deferred;
    }

    Object run(String command, String[] args) throws UsageException, BlockException, CommandException {
        // --object definitions last as long as the command, as they do in a qemu-img process;
        // resize's last argument is its size (maybe "-1G"), never an option
        String[] options = command.equals("resize") && args.length > 0 ? Arrays.copyOf(args, args.length - 1) : args;
        List<String> objectIds = new ArrayList<>();
        try {
            applyObjects(options, objectIds);
            if (command.equals("bitmap")) {
                return new ImgBitmap(this).run(args);
            }
            if (ImgMaintenance.COMMANDS.contains(command)) {
                return new ImgMaintenance(core, this, out).run(command, args);
            }
            return runOwn(command, args);
        } catch (Args.HelpRequested e) {
            // qemu-img answers -h after any command with its whole help, exit code 0
            return new Text(Usage.TEXT);
        } finally {
            objectIds.forEach(core::removeObject);
        }
    }

    private Object runOwn(String command, String[] args) throws UsageException, BlockException, CommandException {
        return switch (command) {
            case "drivers" -> new Drivers(core.drivers());
            case "create" -> create(args);
            case "info" -> info(args);
            case "convert" -> convert(args);
            case "compare" -> compare(args);
            case "map" -> map(args);
            default -> throw new UsageException("Command not found: " + command);
        };
    }

    /**
     * {@code --object qom-type,id=ID,...}: each object is created at once by its type (the core's
     * {@code secret}; TLS credentials from the nbd bundles, which load their files now), so a bad
     * definition fails the command with qemu-img's words whether or not anything uses it.
     */
    void applyObjects(String[] args) throws BlockException {
        applyObjects(args, new ArrayList<>());
    }

    /** As above, adding the ids of the objects (secrets too) it defined to {@code definedIds}. */
    void applyObjects(String[] args, List<String> definedIds) throws BlockException {
        for (int i = 0; i < args.length; i++) {
            String def = null;
            if (args[i].equals("--object") && i + 1 < args.length) {
                def = args[++i];
            } else if (args[i].startsWith("--object=")) {
                def = args[i].substring("--object=".length());
            } else if (args[i].equals("--") || args[i].equals("-h") || args[i].equals("--help")) {
                // qemu-img creates objects as its option parser meets them: none after a help request
                return;
            }
            if (def != null) {
                definedIds.add(core.createObject(def).id());
            }
        }
    }

    // ---- create -------------------------------------------------------------------------

    Object create(String[] argv) throws UsageException, BlockException, CommandException {
        Args a = Args.parse(argv, "foFb", "quh", Set.of("object"), Set.of("help"));
        String fmt = a.get("f", "raw");
        String optText = Img.optionList(a);
        List<String> pos = a.positional();
        if (isHelp(optText)) {
            return new Text(optionHelp(fmt, pos.isEmpty() ? null : pos.get(0)));
        }
        if (pos.isEmpty()) {
            throw new UsageException("Expecting image file name");
        }
        if (pos.size() > 2) {
            throw new UsageException("Unexpected argument: " + pos.get(2));
        }
        String filename = pos.get(0);
        Options o = Options.parseKeyValue(optText, null);
        if (pos.size() == 2) {
            long size;
            size = parseSize(pos.get(1), "image size", Long.MAX_VALUE, this::warn);
            if (o.has("size")) {
                throw BlockException.invalid(filename + ": The image size must be specified only once");
            }
            o = o.with("size", Long.toString(size));
        }
        if (a.has("b")) {
            o = o.with("backing_file", a.get("b"));
        }
        if (a.has("F")) {
            o = o.with("backing_fmt", a.get("F"));
        }
        List<OptionSpec> specs;
        try {
            specs = core.createOptions(fmt, filename);
        } catch (BlockException e) {
            throw e.prepend(filename + ": ");
        }
        String backingFile = o.get("backing_file");
        boolean unsafe = a.has("u");
        if (backingFile != null) {
            if (specs.stream().noneMatch(sp -> sp.name().equals("backing_file"))) {
                throw BlockException.invalid(filename + ": Backing file not supported for file format '" + fmt + "'");
            }
            // with -u the core neither opens it nor takes its size; an empty name or the image's own
            // name the core refuses in qemu-img's words before anything is opened
            if (!unsafe && !backingFile.isEmpty() && !backingFile.equals(filename)) {
                checkBacking(filename, backingFile, o.get("backing_fmt"));
            }
        }
        boolean quiet = a.has("q");
        String[] summary = new String[1];
        try {
            core.create(filename, fmt, o, unsafe, s -> {
                summary[0] = s;
                if (!quiet) {
                    // qemu-img shows what it will create before it tries, so a late failure follows it
                    out.print("Formatting '" + filename + "', " + summary[0] + "\n");
                    out.flush();
                }
            }, this::warn);
        } catch (BlockException e) {
            throw qemuWording(e);
        }
        return new Created(filename, summary[0], true);
    }

    /**
     * qemu-img create opens the backing file before it formats anything (unless -u): a missing
     * backing file or format is reported first, in qemu-img's words.
     */
    private void checkBacking(String filename, String backing, String backingFmt)
            throws BlockException, CommandException {
        String name = backing;
        java.nio.file.Path parent = java.nio.file.Path.of(filename).getParent();
        if (!backing.startsWith("/") && !backing.contains(":") && parent != null) {
            name = parent.resolve(backing).toString();
        }
        Image b;
        try {
            b = core.open(name, backingFmt == null ? Options.empty() : Options.of("driver", backingFmt),
                    new OpenMode(false, true, w -> { }));
        } catch (BlockException e) {
            String msg = e.getMessage();
            if (!msg.startsWith("Could not open '")) {
                msg = msg.startsWith(name + ": ") ? msg.substring(name.length() + 2) : msg;
            }
            throw new BlockException(e.reason(), filename + ": " + msg + "\nCould not open backing image.");
        }
        String detected = b.driverName();
        closeQuietly(b);
        if (backingFmt == null) {
            // qemu-img names the probed format and ends its message without a newline
            throw new CommandException(filename + ": Backing file specified without backing format\nDetected format"
                    + " of " + detected + ".", 1, false);
        }
    }

    /** The core's create errors where qemu-img 7.2 words them differently. */
    private static BlockException qemuWording(BlockException e) {
        String m = e.getMessage();
        int i = m.indexOf(": Could not open backing image: ");
        if (i > 0) {
            return new BlockException(e.reason(), m.substring(0, i) + ": "
                    + m.substring(i + ": Could not open backing image: ".length()) + "\nCould not open backing image.");
        }
        return e;
    }

    /**
     * Every {@code -o} joined by commas, each first checked as qemu-img checks it: not empty, not
     * starting with a comma, not ending in an unescaped one (",," is an escaped comma).
     */
    static String optionList(Args a) throws BlockException {
        for (String o : a.all("o")) {
            int trailing = 0;
            while (trailing < o.length() && o.charAt(o.length() - 1 - trailing) == ',') {
                trailing++;
            }
            if (o.isEmpty() || o.charAt(0) == ',' || trailing % 2 == 1) {
                throw BlockException.invalid("Invalid option list: " + o);
            }
        }
        return String.join(",", a.all("o"));
    }

    static boolean isHelp(String optText) {
        for (String item : optText.split(",")) {
            if (item.equals("help") || item.equals("?")) {
                return true;
            }
        }
        return false;
    }

    /**
     * QEMU's crypto creation options, which a format with an {@code encrypt.*} option takes under
     * that prefix; {@code -o help} lists them one by one.
     */
    private static final List<OptionSpec> ENCRYPT_OPTIONS = List.of(
            OptionSpec.of("encrypt.cipher-alg", OptionSpec.OptionType.STRING, "Name of encryption cipher algorithm"),
            OptionSpec.of("encrypt.cipher-mode", OptionSpec.OptionType.STRING, "Name of encryption cipher mode"),
            OptionSpec.of("encrypt.format", OptionSpec.OptionType.STRING,
                    "Encrypt the image, format choices: 'aes', 'luks'"),
            OptionSpec.of("encrypt.hash-alg", OptionSpec.OptionType.STRING, "Name of encryption hash algorithm"),
            OptionSpec.of("encrypt.iter-time", OptionSpec.OptionType.NUMBER, "Time to spend in PBKDF in milliseconds"),
            OptionSpec.of("encrypt.ivgen-alg", OptionSpec.OptionType.STRING, "Name of IV generator algorithm"),
            OptionSpec.of("encrypt.ivgen-hash-alg", OptionSpec.OptionType.STRING, "Name of IV generator hash algorithm"),
            OptionSpec.of("encrypt.key-secret", OptionSpec.OptionType.STRING,
                    "ID of secret providing qcow AES key or LUKS passphrase"));

    /**
     * {@code -o help}: with a filename, the format's options merged with its protocol's; without
     * one, the format's own (options it only passes down to the protocol are the protocol's) and a
     * hint. Sorted by name, the help text in a column after 24 characters.
     */
    String optionHelp(String fmt, String filename) throws BlockException {
        List<OptionSpec> specs = core.createOptions(fmt, filename);
        if (filename == null) {
            List<OptionSpec> protocol;
            try {
                protocol = core.createOptions("file", null);
            } catch (BlockException e) {
                protocol = List.of();
            }
            List<OptionSpec> own = new ArrayList<>();
            for (OptionSpec s : specs) {
                boolean passedDown = protocol.stream().anyMatch(p -> p.name().equals(s.name())
                        && p.help().equals(s.help()));
                if (s.name().equals("size") || !passedDown) {
                    own.add(s);
                }
            }
            specs = own;
        }
        Map<String, OptionSpec> sorted = new TreeMap<>();
        for (OptionSpec s : specs) {
            if (s.name().equals("encrypt.*")) {
                ENCRYPT_OPTIONS.forEach(e -> sorted.put(e.name(), e));
            } else {
                sorted.put(s.name(), s);
            }
        }
        StringBuilder sb = new StringBuilder(filename == null ? "Supported " + fmt + " options:\n"
                : "Supported options:\n");
        sb.append(helpLines(sorted.values()));
        if (filename == null) {
            sb.append("\nThe protocol level may support further options.\n"
                    + "Specify the target filename to include those options.\n");
        }
        return sb.toString();
    }

    /** One line per option, sorted by name, the help text in a column after 24 characters. */
    static String helpLines(java.util.Collection<OptionSpec> specs) {
        Map<String, OptionSpec> sorted = new TreeMap<>();
        specs.forEach(s -> sorted.put(s.name(), s));
        StringBuilder sb = new StringBuilder();
        for (OptionSpec s : sorted.values()) {
            sb.append(String.format("  %-22s - %s%n", s.name() + "=<" + s.type().label() + ">", s.help()));
        }
        return sb.toString();
    }

    /**
     * The options amend takes for a format, as its driver declares them ({@code -o help} lists
     * them); a format that declares none cannot be amended, in qemu-img's words.
     */
    List<OptionSpec> amendOptions(String fmt) throws BlockException {
        List<OptionSpec> specs = core.amendOptions(fmt);
        if (specs.isEmpty()) {
            throw new BlockException(BlockException.Reason.UNSUPPORTED, "Format driver '" + fmt
                    + "' does not support option amendment");
        }
        return specs;
    }

    // ---- info ---------------------------------------------------------------------------

    Object info(String[] argv) throws UsageException, BlockException {
        Args a = Args.parse(argv, "f", "hU", Set.of("output", "object"),
                Set.of("backing-chain", "force-share", "image-opts", "help"));
        Output output = output(a);
        String filename = single(a, "Expecting one image file name");
        boolean share = a.has("U") || a.has("force-share");
        // As qemu-img: each image is opened without its backing file (a missing one does not stop
        // info), and --backing-chain then opens the next by the name the image records.
        List<Map<String, Object>> images = new ArrayList<>();
        Set<String> seen = new java.util.HashSet<>();
        String name = filename;
        String fmt = a.get("f");
        boolean imageOpts = a.has("image-opts");
        while (true) {
            Image img = open(name, fmt, imageOpts, false, share, false);
            Map<String, Object> d;
            try {
                d = describe(img);
                seen.add(canonical(img.filename()));
            } finally {
                img.close();
            }
            images.add(d);
            Object next = d.get("full-backing-filename");
            if (!a.has("backing-chain") || next == null) {
                break;
            }
            if (seen.contains(canonical(next.toString()))) {
                throw BlockException.invalid("Backing file '" + next + "' creates an infinite loop.");
            }
            name = next.toString();
            fmt = (String) d.get("backing-filename-format");
            imageOpts = false;
        }
        return new Info(images, a.has("backing-chain"), output);
    }

    private static String canonical(String name) {
        try {
            return java.nio.file.Path.of(name).toAbsolutePath().normalize().toString();
        } catch (java.nio.file.InvalidPathException e) {
            return name;
        }
    }

    /** A backing file name as the image records it, made a path relative to the image's folder. */
    static String fullBackingName(String imageFilename, String backing) {
        if (backing.startsWith("/") || backing.contains(":") || imageFilename.startsWith("json:")) {
            return backing;
        }
        int slash = imageFilename.lastIndexOf('/');
        return slash < 0 ? backing : imageFilename.substring(0, slash + 1) + backing;
    }

    /** qemu-img info's facts about one image, with its JSON member names. */
    static Map<String, Object> describe(Image img) throws BlockException {
        Map<String, Object> m = new LinkedHashMap<>();
        Map<String, Object> extra = img.info();
        m.put("virtual-size", img.size());
        m.put("filename", displayName(img));
        m.put("format", img.driverName());
        long actual = actualSize(img);
        if (actual >= 0) {
            m.put("actual-size", actual);
        }
        m.put("dirty-flag", false);
        m.putAll(extra);
        Image backing = img.backing();
        if (backing != null) {
            m.put("full-backing-filename", backing.filename());
        } else if (extra.get("backing-filename") instanceof String b && storageName(img) != null) {
            m.put("full-backing-filename", fullBackingName(storageName(img), b));
        }
        return m;
    }

    /**
     * The name relative backing names resolve against: the image's own, or for an image named
     * json:{...} the first plain name down its file children (QEMU's directory of a node); null
     * when there is none.
     */
    static String storageName(Image img) {
        for (Image i = img; i != null; i = i.file()) {
            String name = i == img ? displayName(i) : i.filename();
            if (!name.startsWith("json:")) {
                return name;
            }
        }
        return null;
    }

    /**
     * The name qemu-img shows: a json: description that says no more than "this format over
     * this file" ({@code --image-opts driver=qcow2,file.filename=x}) is shown as the file's name.
     */
    static String displayName(Image img) {
        String f = img.filename();
        Image file = img.file();
        if (!f.startsWith("json:") || file == null || file.filename().startsWith("json:")) {
            return f;
        }
        try {
            Map<String, String> o = Options.parseJson(f.substring(5)).asMap();
            // backing=null is how info opens an image alone; it does not change its name
            Set<String> plain = Set.of("driver", "file.driver", "file.filename", "file.locking", "backing");
            boolean onlyPlain = plain.containsAll(o.keySet()) && o.containsKey("file.filename")
                    && img.driverName().equals(o.getOrDefault("driver", img.driverName()))
                    && "file".equals(o.getOrDefault("file.driver", "file"));
            return onlyPlain ? file.filename() : f;
        } catch (BlockException e) {
            return f;
        }
    }

    /** Host bytes used: the driver's answer, else the sum of its storage children's (not backing). */
    static long actualSize(Image img) throws BlockException {
        long own = img.allocatedSize();
        if (own >= 0) {
            return own;
        }
        long sum = -1;
        for (Image.Child c : img.children()) {
            if (c.role().equals("backing")) {
                continue;
            }
            long s = actualSize(c.image());
            if (s >= 0) {
                sum = Math.max(sum, 0) + s;
            }
        }
        return sum;
    }

    // ---- map ----------------------------------------------------------------------------

    Object map(String[] argv) throws UsageException, BlockException {
        Args a = Args.parse(argv, "f", "hU", Set.of("output", "object", "start-offset", "max-length"),
                Set.of("force-share", "image-opts", "help"));
        Output output = output(a);
        String filename = single(a, "Expecting one image file name");
        long start = a.has("start-offset") ? parseOffset(a.get("start-offset"), "start offset") : 0;
        long maxLength = a.has("max-length") ? parseOffset(a.get("max-length"), "max length") : Long.MAX_VALUE;
        Image img = open(filename, a.get("f"), a.has("image-opts"), false, a.has("U") || a.has("force-share"));
        try {
            long size = img.size();
            long end = Math.min(size, start + Math.min(maxLength, Long.MAX_VALUE - start));
            List<MapEntry> entries = new ArrayList<>();
            for (long off = start; off < end; ) {
                MapEntry e = mapEntry(img, off, end - off);
                MapEntry last = entries.isEmpty() ? null : entries.get(entries.size() - 1);
                if (last != null && mergeable(last, e)) {
                    entries.set(entries.size() - 1, new MapEntry(last.start(), last.length() + e.length(),
                            last.depth(), last.present(), last.zero(), last.data(), last.offset(), last.file()));
                } else {
                    entries.add(e);
                }
                off += e.length();
            }
            if (output == Output.HUMAN) {
                // the table can only show data with a host offset; qemu-img stops at the first without
                for (int i = 0; i < entries.size(); i++) {
                    MapEntry e = entries.get(i);
                    if (e.data() && e.offset() < 0) {
                        return new MapResult(List.copyOf(entries.subList(0, i)), output,
                                "File contains external, encrypted or compressed clusters.");
                    }
                }
            }
            return new MapResult(entries, output, null);
        } finally {
            img.close();
        }
    }

    private static boolean mergeable(MapEntry a, MapEntry b) {
        return a.depth() == b.depth() && a.present() == b.present() && a.zero() == b.zero() && a.data() == b.data()
                && (a.offset() < 0) == (b.offset() < 0)
                && (a.offset() < 0 || a.offset() + a.length() == b.offset())
                && java.util.Objects.equals(a.file(), b.file());
    }

    /** One extent of the chain: which layer (depth) decides it, and where its data lives. */
    static MapEntry mapEntry(Image top, long off, long len) throws BlockException {
        org.blockhaus.core.ChainStatus st = BlockCore.chainStatus(top, off, len);
        // the offset is reported in the bottom-most node that holds the data
        String file = st.allocated() && st.file() instanceof Image fileImage ? fileImage.filename() : null;
        return new MapEntry(st.offset(), st.length(), st.depth(), st.allocated(), st.isZero(), st.isData(),
                st.allocated() ? st.hostOffset() : -1, file);
    }

    // ---- compare ------------------------------------------------------------------------

    Object compare(String[] argv) throws UsageException, CommandException {
        Args a;
        try {
            a = Args.parse(argv, "fFT", "hpqsU", Set.of("object"), Set.of("force-share", "image-opts", "help"));
        } catch (UsageException e) {
            throw e;
        }
        List<String> pos = a.positional();
        if (pos.size() != 2) {
            throw new UsageException("Expecting two image file names");
        }
        try {
            checkCacheModes(a, false, true);
        } catch (BlockException e) {
            throw new CommandException(e.getMessage(), 2);
        }
        boolean strict = a.has("s");
        boolean quiet = a.has("q");
        boolean share = a.has("U") || a.has("force-share");
        List<String> lines = new ArrayList<>();
        Image i1 = null;
        Image i2 = null;
        try {
            i1 = open(pos.get(0), a.get("f"), a.has("image-opts"), false, share);
            i2 = open(pos.get(1), a.get("F"), a.has("image-opts"), false, share);
            boolean progress = a.has("p") && !quiet;
            int rc = compareImages(i1, i2, strict, lines, progress);
            return new Compare(quiet ? List.of() : lines, rc, progress);
        } catch (BlockException e) {
            throw new CommandException(e.getMessage(), 2);
        } finally {
            closeQuietly(i1);
            closeQuietly(i2);
        }
    }

    private int compareImages(Image a, Image b, boolean strict, List<String> lines, boolean progress)
            throws BlockException {
        long sa = a.size();
        long sb = b.size();
        if (sa != sb && strict) {
            lines.add("Strict mode: Image size mismatch!");
            return 1;
        }
        long common = Math.min(sa, sb);
        int chunk = 2 << 20;
        ByteBuffer ba = ByteBuffer.allocateDirect(chunk);
        ByteBuffer bb = ByteBuffer.allocateDirect(chunk);
        Progress p = new Progress(progress ? out : null, 2.0);
        for (long off = 0; off < common; ) {
            // zero ranges are skipped whole, data is read at most a buffer at a time
            BlockStatus s1 = statusOfChain(a, off, common - off);
            BlockStatus s2 = statusOfChain(b, off, common - off);
            long n = Math.min(s1.length(), s2.length());
            if (!(s1.isZero() && s2.isZero())) {
                n = Math.min(n, chunk);
            }
            if (strict && qemuStatus(s1, sa) != qemuStatus(s2, sb)) {
                lines.add("Strict mode: Offset " + off + " block status mismatch!");
                return 1;
            }
            if (!(s1.isZero() && s2.isZero())) {
                ba.clear().limit((int) n);
                bb.clear().limit((int) n);
                readOrZero(a, off, ba, s1);
                readOrZero(b, off, bb, s2);
                ba.flip();
                bb.flip();
                int mm = ba.mismatch(bb);
                if (mm >= 0) {
                    lines.add("Content mismatch at offset " + ((off + mm) & ~511L) + "!");
                    return 1;
                }
            }
            off += n;
            p.update(100.0 * off / Math.max(1, Math.max(sa, sb)));
        }
        if (sa != sb) {
            // qemu-img warns only once the common part has compared equal
            lines.add("Warning: Image size mismatch!");
        }
        Image longer = sa > sb ? a : b;
        for (long off = common; off < Math.max(sa, sb); ) {
            long len = Math.min(chunk, Math.max(sa, sb) - off);
            BlockStatus s = statusOfChain(longer, off, len);
            if (!s.isZero()) {
                ByteBuffer buf = ba.clear().limit((int) s.length());
                longer.read(off, buf);
                buf.flip();
                for (int i = 0; i < buf.limit(); i++) {
                    if (buf.get(i) != 0) {
                        lines.add("Content mismatch at offset " + ((off + i) & ~511L) + "!");
                        return 1;
                    }
                }
            }
            off += s.length();
        }
        p.finishInLine();
        lines.add("Images are identical.");
        return 0;
    }

    private static void readOrZero(Image img, long off, ByteBuffer buf, BlockStatus s) throws BlockException {
        if (s.isZero()) {
            while (buf.hasRemaining()) {
                buf.put((byte) 0);
            }
        } else {
            img.read(off, buf);
        }
    }

    /** Block status of a chain: allocated in some layer, zero or data. */
    static BlockStatus statusOfChain(Image top, long off, long len) throws BlockException {
        MapEntry e = mapEntry(top, off, len);
        int flags = (e.zero() ? BlockStatus.ZERO : 0) | (e.data() ? BlockStatus.DATA : 0)
                | (e.present() ? BlockStatus.ALLOCATED : 0);
        return new BlockStatus(off, e.length(), flags, e.offset(), null);
    }

    /**
     * What compare -s holds against each other, as qemu-img does: the whole block status, so
     * besides allocation also data, zero, whether a host offset is known, and whether the extent
     * runs to the end of its image (a fully allocated raw file differs from a sparse one there).
     */
    private static int qemuStatus(BlockStatus s, long imageSize) {
        int offsetValid = s.hostOffset() >= 0 ? 8 : 0;
        int eof = s.offset() + s.length() == imageSize ? 16 : 0;
        return s.flags() | offsetValid | eof;
    }

    // ---- convert ------------------------------------------------------------------------

    private static final Set<String> CACHE_MODES = Set.of("none", "writeback", "unsafe", "directsync",
            "writethrough");

    /**
     * A number as C's strtol reads it with base 0, which qemu-img uses for counts: an optional
     * sign, then 0x... hexadecimal, 0... octal or decimal.
     */
    static long cNumber(String text) {
        String t = text.trim();
        boolean negative = t.startsWith("-");
        if (t.startsWith("+") || negative) {
            t = t.substring(1);
        }
        long v;
        if (t.matches("0[xX][0-9a-fA-F]+")) {
            v = Long.parseUnsignedLong(t.substring(2), 16);
        } else if (t.matches("0[0-7]*")) {
            v = t.length() == 1 ? 0 : Long.parseLong(t.substring(1), 8);
        } else if (t.matches("[1-9][0-9]*")) {
            v = Long.parseLong(t);
        } else {
            throw new NumberFormatException(text);
        }
        return negative ? -v : v;
    }

    static boolean isCacheMode(String mode) {
        return CACHE_MODES.contains(mode);
    }

    /** -t (target cache) and -T (source cache): qemu-img refuses unknown modes before it opens anything. */
    static void checkCacheModes(Args a, boolean target, boolean source) throws BlockException {
        if (target && a.has("t") && !isCacheMode(a.get("t"))) {
            throw BlockException.invalid("Invalid cache option: " + a.get("t"));
        }
        if (source && a.has("T") && !isCacheMode(a.get("T"))) {
            throw BlockException.invalid("Invalid source cache option: " + a.get("T"));
        }
    }

    /** -r: a rate limit in bytes per second, with qemu-img's size suffixes. */
    static void checkRateLimit(Args a) throws BlockException {
        if (a.has("r")) {
            parseSize(a.get("r"), "rate limit");
        }
    }

    Object convert(String[] argv) throws UsageException, BlockException, CommandException {
        Args a = Args.parse(argv, "fOoSmtTBFlr", "hpqncUWC", Set.of("object"),
                Set.of("force-share", "image-opts", "target-image-opts", "help", "target-is-zero", "salvage",
                        "bitmaps", "skip-broken-bitmaps"));
        List<String> pos = a.positional();
        if (a.has("skip-broken-bitmaps") && !a.has("bitmaps")) {
            throw BlockException.invalid("Use of --skip-broken-bitmaps requires --bitmaps");
        }
        if (a.has("bitmaps") && pos.size() > 2) {
            throw BlockException.invalid("Copying bitmaps only possible with single source");
        }
        String outFmt = a.get("O", "raw");
        checkRateLimit(a);
        String optText = Img.optionList(a);
        long minSparse = 4096;
        if (a.has("S")) {
            long s;
            s = parseSize(a.get("S"), "buffer size for sparse output");
            if (s % 512 != 0 || s > 16L << 20) {
                throw BlockException.invalid("Invalid buffer size for sparse output specified. Valid sizes are"
                        + " multiples of 512 up to 16777216. Select 0 to disable sparse detection (fully allocates"
                        + " output).");
            }
            minSparse = s;
        }
        int parallel = 8;
        if (a.has("m")) {
            try {
                parallel = (int) Math.max(-1, Math.min(Integer.MAX_VALUE, cNumber(a.get("m"))));
            } catch (NumberFormatException e) {
                parallel = -1;
            }
            if (parallel < 1 || parallel > 16) {
                throw BlockException.invalid("Invalid number of coroutines. Allowed number of coroutines is between"
                        + " 1 and 16");
            }
        }
        boolean noCreate = a.has("n");
        if (a.has("target-is-zero") && !noCreate) {
            throw BlockException.invalid("--target-is-zero requires use of -n flag");
        }
        if (a.has("target-image-opts") && !noCreate) {
            throw BlockException.invalid("--target-image-opts requires use of -n flag");
        }
        if (a.has("target-image-opts") && a.has("O")) {
            throw BlockException.invalid("--image-opts and --format are mutually exclusive");
        }
        if (a.has("T") && !CACHE_MODES.contains(a.get("T"))) {
            throw BlockException.invalid("Invalid source cache option: " + a.get("T"));
        }
        String target = pos.size() >= 2 ? pos.get(pos.size() - 1) : null;
        if (isHelp(optText)) {
            return new Text(optionHelp(outFmt, target));
        }
        if (target == null) {
            throw BlockException.invalid("Must specify image file name");
        }
        if (noCreate && !optText.isEmpty()) {
            throw BlockException.invalid("-o has no effect when skipping image creation");
        }
        String backing = a.get("B");
        String backingFmt = a.get("F");
        Options given = Options.parseKeyValue(optText, null);
        if (backing == null && given.get("backing_file") != null) {
            // -o backing_file=... is -B by another name (and backing_fmt -F)
            backing = given.get("backing_file");
            backingFmt = backingFmt != null ? backingFmt : given.get("backing_fmt");
        }
        boolean share = a.has("U") || a.has("force-share");
        if (a.has("l") && pos.size() > 2) {
            throw BlockException.invalid("No support for concatenating multiple snapshot");
        }
        List<Image> sources = new ArrayList<>();
        Image dst = null;
        try {
            long total = 0;
            for (String s : pos.subList(0, pos.size() - 1)) {
                Image img = open(s, a.get("f"), a.has("image-opts"), false, share);
                sources.add(img);
                total = Math.addExact(total, img.size());
            }
            if (a.has("l")) {
                loadSnapshot(sources.get(0), a.get("l"));
            }
            List<BitmapNode.Bitmap> bitmaps = a.has("bitmaps") && !sources.isEmpty()
                    ? ImgBitmap.bitmapsToCopy(this, sources.get(0), a.has("skip-broken-bitmaps")) : List.of();
            if (!noCreate) {
                List<OptionSpec> specs = core.createOptions(outFmt, target);
                Options o = Options.parseKeyValue(optText, null);
                for (String key : o.asMap().keySet()) {
                    if (specs.stream().noneMatch(sp -> sp.matches(key))) {
                        throw BlockException.invalid("Invalid parameter '" + key + "'");
                    }
                }
                if (backing != null && specs.stream().noneMatch(sp -> sp.name().equals("backing_file"))) {
                    throw BlockException.invalid("Backing file not supported for file format '" + outFmt + "'");
                }
                if (backing != null && backingFmt == null) {
                    throw BlockException.invalid("Use of backing file requires explicit backing format");
                }
                if (a.has("c") && core.drivers().stream().noneMatch(d -> d.name().equals(outFmt)
                        && d.compressedWrites())) {
                    throw BlockException.invalid("Compression not supported for this file format");
                }
                o = o.with("size", Long.toString(total));
                if (backing != null) {
                    o = o.with("backing_file", backing).with("backing_fmt", backingFmt);
                }
                try {
                    core.create(target, outFmt, o, s -> { }, this::warn);
                } catch (BlockException e) {
                    String m = e.getMessage();
                    String rest = m.startsWith(target + ": ") ? m.substring(target.length() + 2) : m;
                    throw new BlockException(e.reason(), target + ": error while converting " + outFmt + ": " + rest,
                            e);
                }
            } else if (a.has("c") && core.drivers().stream().noneMatch(d -> d.name().equals(outFmt)
                    && d.compressedWrites())) {
                throw BlockException.invalid("Compression not supported for this file format");
            }
            if (a.has("t") && !CACHE_MODES.contains(a.get("t"))) {
                throw BlockException.invalid("Invalid cache option: " + a.get("t"));
            }
            Options cacheOpts = targetCache(a.get("t", "unsafe"));
            if (a.has("target-image-opts")) {
                dst = core.open(null, Options.parseKeyValue(target, null).merge(cacheOpts),
                        new OpenMode(true, false, this::warn));
            } else {
                try {
                    dst = core.open(target, Options.of("driver", outFmt).merge(cacheOpts),
                            new OpenMode(true, false, this::warn));
                } catch (BlockException e) {
                    throw e.prepend("Could not open '" + target + "': ");
                }
            }
            if (noCreate && dst.size() < total) {
                throw BlockException.invalid("output file is smaller than input file");
            }
            if (a.has("bitmaps")) {
                ImgBitmap.checkTargetSupportsBitmaps(dst, bitmaps);
            }
            Progress p = new Progress(a.has("p") && !a.has("q") ? out : null);
            if (backing != null && sources.size() == 1) {
                copyTopLayer(sources.get(0), dst, p, minSparse);
            } else {
                boolean zero = a.has("target-is-zero") || !noCreate && dst.hasZeroInit();
                ConvertOptions copts = ConvertOptions.DEFAULT.withMinSparse(minSparse).withCompress(a.has("c"))
                        .withTargetIsZero(zero).withParallel(parallel).withOutOfOrder(a.has("W"));
                core.convert(sources, dst, copts, a.has("p") && !a.has("q") ? dataProgress(sources, p) : p::update);
            }
            if (!bitmaps.isEmpty()) {
                ImgBitmap.copyBitmaps(sources.get(0), dst, bitmaps);
            }
            p.finish();
            return new Converted(total);
        } finally {
            closeQuietly(dst);
            for (Image s : sources) {
                closeQuietly(s);
            }
        }
    }

    /**
     * qemu-img convert's bar counts data only: the share of the sources' data bytes copied, moved
     * on at the end of each data extent (at most one 2 MiB buffer long). The copy reports bytes
     * done in source order; this maps them onto the data extents they complete.
     */
    private static org.blockhaus.api.BlockService.Progress dataProgress(List<Image> sources, Progress bar)
            throws BlockException {
        List<long[]> ends = new ArrayList<>(); // {end offset in the concatenated sources, data bytes up to it}
        long base = 0;
        long data = 0;
        for (Image src : sources) {
            long size = src.size();
            for (long off = 0; off < size; ) {
                MapEntry e = mapEntry(src, off, Math.min(2 << 20, size - off));
                if (!e.zero()) {
                    data += e.length();
                    ends.add(new long[] {base + off + e.length(), data});
                }
                off += e.length();
            }
            base += size;
        }
        long total = base;
        long totalData = data;
        int[] next = {0};
        return percent -> {
            long done = Math.round(percent * total / 100);
            synchronized (next) {
                while (next[0] < ends.size() && ends.get(next[0])[0] <= done) {
                    bar.update(100.0 * ends.get(next[0])[1] / totalData);
                    next[0]++;
                }
            }
        };
    }

    /**
     * convert -l and measure -l: the source shows one of its internal snapshots instead of its
     * active state (read-only). {@code snapshot.id=N,snapshot.name=X} must match both given;
     * a plain name is tried as an ID first, then as a name, as qemu-img does.
     */
    void loadSnapshot(Image source, String spec) throws BlockException {
        String id = null;
        String name = null;
        boolean either = !spec.startsWith("snapshot.");
        if (either) {
            id = spec;
        } else {
            for (String kv : splitOptions(spec)) {
                int eq = kv.indexOf('=');
                String key = eq < 0 ? kv : kv.substring(0, eq);
                String value = eq < 0 ? "on" : kv.substring(eq + 1);
                if (!key.equals("snapshot.id") && !key.equals("snapshot.name")) {
                    throw BlockException.invalid("Invalid parameter '" + key + "'\nqemu-img: Failed in parsing"
                            + " snapshot param '" + spec + "'");
                }
                if (eq < 0) {
                    warn("short-form boolean option '" + key + "' deprecated\nPlease use " + key + "=on instead");
                }
                if (key.equals("snapshot.id")) {
                    id = value;
                } else {
                    name = value;
                }
            }
        }
        if (!(source.driverNode() instanceof org.blockhaus.api.spi.SnapshotNode sn)) {
            throw new BlockException(BlockException.Reason.UNSUPPORTED, "Failed to load snapshot: Block format '"
                    + source.driverName() + "' used by device '' does not support temporarily loading internal"
                    + " snapshots");
        }
        try {
            try {
                sn.loadSnapshotReadOnly(id, name);
            } catch (BlockException e) {
                if (!either || e.reason() != BlockException.Reason.NOT_FOUND) {
                    throw e;
                }
                sn.loadSnapshotReadOnly(null, spec);
            }
        } catch (BlockException e) {
            throw new BlockException(e.reason(), "Failed to load snapshot: " + e.getMessage(), e);
        }
    }

    /** qemu's option list syntax: commas separate, a doubled comma is a literal one. */
    private static List<String> splitOptions(String text) {
        List<String> out = new ArrayList<>();
        StringBuilder cur = new StringBuilder();
        for (int k = 0; k < text.length(); k++) {
            char c = text.charAt(k);
            if (c == ',' && k + 1 < text.length() && text.charAt(k + 1) == ',') {
                cur.append(',');
                k++;
            } else if (c == ',') {
                out.add(cur.toString());
                cur.setLength(0);
            } else {
                cur.append(c);
            }
        }
        out.add(cur.toString());
        return out;
    }

    /**
     * convert -B: the target's backing file stands for the source's, so only what the source's top
     * layer holds is copied (its zero ranges as zeroes); the rest stays unallocated.
     */
    private static void copyTopLayer(Image src, Image dst, Progress p, long minSparse) throws BlockException {
        long size = src.size();
        // a source without a backing file decides every byte itself
        boolean all = src.backing() == null;
        List<BlockStatus> pieces = new ArrayList<>();
        long data = 0;
        for (long off = 0; off < size; ) {
            BlockStatus st = src.blockStatus(off, size - off);
            if (all || st.isAllocated()) {
                pieces.add(st);
                data += st.isZero() ? 0 : st.length();
            }
            off += st.length();
        }
        // as convert's bar: the share of data copied, a buffer at a time
        ByteBuffer buf = ByteBuffer.allocateDirect(2 << 20);
        long done = 0;
        for (BlockStatus st : pieces) {
            if (st.isZero()) {
                dst.writeZeroes(st.offset(), st.length(), 0);
                continue;
            }
            for (long off = st.offset(), end = st.offset() + st.length(); off < end; ) {
                int n = (int) Math.min(buf.capacity(), end - off);
                buf.clear().limit(n);
                src.read(off, buf);
                buf.flip();
                writeDetectingZeroes(dst, off, buf, minSparse);
                off += n;
                done += n;
                p.update(100.0 * done / data);
            }
        }
        dst.flush();
    }

    /**
     * -S for a target with a backing file: runs of zero bytes at least {@code minSparse} long (in
     * whole granules of that size, at most 4 KiB) are written as zeroes, so they hide the backing
     * file without taking space; the rest is written as data.
     */
    private static void writeDetectingZeroes(Image dst, long off, ByteBuffer buf, long minSparse)
            throws BlockException {
        int len = buf.remaining();
        if (minSparse <= 0) {
            dst.write(off, buf, 0);
            return;
        }
        int granule = (int) Math.min(minSparse, 4096);
        ByteBuffer zero = ByteBuffer.allocate(granule);
        int dataStart = 0;
        int pos = 0;
        while (pos < len) {
            // granules are aligned to the image, not to the buffer
            int g = (int) Math.min(len - pos, granule - Math.floorMod(off + pos, granule));
            if (buf.slice(pos, g).mismatch(zero.slice(0, g)) >= 0) {
                pos += g;
                continue;
            }
            int zeroEnd = pos + g;
            while (zeroEnd < len) {
                int h = Math.min(granule, len - zeroEnd);
                if (buf.slice(zeroEnd, h).mismatch(zero.slice(0, h)) >= 0) {
                    break;
                }
                zeroEnd += h;
            }
            if (zeroEnd - pos >= minSparse) {
                if (pos > dataStart) {
                    dst.write(off + dataStart, buf.slice(dataStart, pos - dataStart), 0);
                }
                dst.writeZeroes(off + pos, zeroEnd - pos, 0);
                dataStart = zeroEnd;
            }
            pos = zeroEnd;
        }
        if (dataStart < len) {
            dst.write(off + dataStart, buf.slice(dataStart, len - dataStart), 0);
        }
    }

    /**
     * qemu-img convert's -t: the target's cache mode, "unsafe" unless asked otherwise (its data
     * reaches the OS but is never synced, as qemu-img does).
     */
    static Options targetCache(String mode) {
        return switch (mode) {
            case "unsafe" -> Options.of("cache.no-flush", "on");
            case "none", "directsync" -> Options.of("cache.direct", "on");
            default -> Options.empty(); // writeback, writethrough
        };
    }

    // ---- helpers ------------------------------------------------------------------------

    static Output output(Args a) throws BlockException {
        String o = a.get("output", "human");
        return switch (o) {
            case "human" -> Output.HUMAN;
            case "json" -> Output.JSON;
            default -> throw BlockException.invalid("--output must be used with human or json as argument.");
        };
    }

    static String single(Args a, String missing) throws UsageException {
        List<String> pos = a.positional();
        if (pos.isEmpty()) {
            throw new UsageException(missing);
        }
        if (pos.size() > 1) {
            throw new UsageException("Expecting one image file name");
        }
        return pos.get(0);
    }

    private static long parseOffset(String text, String what) throws BlockException {
        return parseSize(text, what);
    }

    /**
     * A size argument in qemu-img's words when it is wrong: past 2^63 - 1 it names the range,
     * otherwise the suffixes.
     */
    static long parseSize(String text, String what) throws BlockException {
        return parseSize(text, what, Long.MAX_VALUE);
    }

    /** As {@link #parseSize(String, String)} for an argument qemu-img keeps in a smaller range. */
    static long parseSize(String text, String what, long max) throws BlockException {
        return parseSize(text, what, max, w -> { });
    }

    /** As {@link #parseSize(String, String, long)}; {@code warn} gets qemu's hexadecimal-suffix warning. */
    static long parseSize(String text, String what, long max, java.util.function.Consumer<String> warn)
            throws BlockException {
        try {
            long v = Sizes.parse(text, warn);
            if (v > max) {
                throw new BlockException(BlockException.Reason.OUT_OF_RANGE, "too large");
            }
            return v;
        } catch (BlockException e) {
            if (e.reason() == BlockException.Reason.OUT_OF_RANGE) {
                throw BlockException.invalid("Invalid " + what + " specified. Must be between 0 and " + max + ".");
            }
            throw BlockException.invalid("Invalid " + what + " specified. You may use k, M, G, T, P or E suffixes for"
                    + "\nqemu-img: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
        }
    }

    Image open(String filename, String fmt, boolean imageOpts, boolean writable, boolean forceShare)
            throws BlockException {
        return open(filename, fmt, imageOpts, writable, forceShare, true);
    }

    /** @param withBacking false opens the image alone, as qemu-img info does */
    Image open(String filename, String fmt, boolean imageOpts, boolean writable, boolean forceShare,
            boolean withBacking) throws BlockException {
        return open(filename, fmt, imageOpts, new OpenMode(writable, forceShare, this::warn), withBacking);
    }

    /** Opens for check (qemu-img's BDRV_O_CHECK): the format leaves its repairs to the check. */
    Image openForCheck(String filename, String fmt, boolean imageOpts, boolean writable, boolean forceShare)
            throws BlockException {
        return open(filename, fmt, imageOpts, new OpenMode(writable, forceShare, this::warn, true), true);
    }

    private Image open(String filename, String fmt, boolean imageOpts, OpenMode mode, boolean withBacking)
            throws BlockException {
        if (imageOpts && fmt != null) {
            // qemu-img refuses the pair before it tries to open anything
            throw BlockException.invalid("--image-opts and --format are mutually exclusive");
        }
        try {
            Options o = Options.empty();
            String name = filename;
            if (imageOpts) {
                o = Options.parseKeyValue(filename, "file");
                name = null;
            } else if (fmt != null) {
                o = Options.of("driver", fmt);
            }
            if (!withBacking) {
                o = o.with("backing", null);
            }
            return core.open(name, o, mode);
        } catch (BlockException e) {
            throw e.prepend("Could not open '" + filename + "': ");
        }
    }

    /** An error qemu-img reports without failing. */
    void error(String message) {
        err.print("qemu-img: " + message + "\n");
        err.flush();
    }

    /** A line on stderr as it is, without qemu-img's name before it. */
    void errorLine(String line) {
        err.print(line + "\n");
        err.flush();
    }

    void warn(String message) {
        // qemu's raw-probing warning carries its own "WARNING:" prefix; the others get qemu-img's
        err.print(message.startsWith("WARNING") ? message + "\n" : "qemu-img: warning: " + message + "\n");
        err.flush();
    }

    private static void closeQuietly(Image img) {
        if (img != null) {
            try {
                img.close();
            } catch (BlockException ignored) {
                // closing after an error: the first error is what the user needs
            }
        }
    }

    /** qemu-img's progress line: "    (12.00/100%)" redrawn with \r, at least 1% apart. */
    static final class Progress {
        private final PrintStream out;
        private final double minStep;
        private double last = -100;

        Progress(PrintStream out) {
            this(out, 1.0);
        }

        /** @param minStep the bar is redrawn once it moved by more than this (qemu-img: 1%, compare 2%) */
        Progress(PrintStream out, double minStep) {
            this.out = out;
            this.minStep = minStep;
            if (out != null) {
                update(0);
            }
        }

        synchronized void update(double percent) {
            // redrawn once it moved by more than the step, and whenever it stands at 100%
            if (out == null || percent - last <= minStep && percent < 100) {
                return;
            }
            last = percent;
            out.print(bar(percent));
            out.flush();
        }

        /** C's "%3.2f": the exact binary value rounded half to even (3.125 shows as 3.12). */
        static String bar(double percent) {
            return "    (" + new java.math.BigDecimal(percent).setScale(2, java.math.RoundingMode.HALF_EVEN)
                    .toPlainString() + "/100%)\r";
        }

        /** compare -p: the bar reaches 100%; the verdict follows on the same line, the newline after it. */
        void finishInLine() {
            if (last < 100) {
                update(100);
            }
        }

        /** The end of a bar: 100% drawn once more (so twice once the work reached it), then a newline. */
        void finish() {
            if (out != null) {
                out.print(bar(100));
                out.print("\n");
                out.flush();
            }
        }
    }
}
