package org.blockhaus.core.impl;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.EnumSet;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.function.Consumer;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.api.spi.BlockDriver;
import org.blockhaus.api.spi.DriverDescriptor;
import org.blockhaus.api.spi.DriverDescriptor.Kind;
import org.blockhaus.api.spi.OpenContext;
import org.blockhaus.api.spi.OptionSpec;
import org.blockhaus.api.spi.Permission;
import org.blockhaus.api.spi.PermissionAwareNode;

/**
 * Turns a filename and options into a chain of nodes, as QEMU's bdrv_open does: the protocol
 * from the URI scheme or {@code prefix:} (else "file"), the format by probing the top layer,
 * children through the driver's {@link OpenContext}, backing files depth-capped and loop-checked.
 */
final class ChainResolver {
    /** Longest backing chain we follow; deeper chains are almost surely loops or hostile. */
    static final int MAX_BACKING_DEPTH = 64;
    /** Bytes of the top layer that format probes see. */
    static final int PROBE_BYTES = 2048;

    /** Options every node accepts (QEMU's bdrv_runtime_opts and friends). */
    static final Set<String> COMMON_OPTIONS = Set.of("driver", "node-name", "read-only", "auto-read-only",
            "discard", "cache.direct", "cache.no-flush", "detect-zeroes", "force-share");
    /** Roles whose subtrees a format's options may carry. */
    static final Set<String> CHILD_ROLES = Set.of("file", "backing", "data-file", "extents", "log");

    private static final Pattern URI_SCHEME = Pattern.compile("^([A-Za-z][A-Za-z0-9+.-]*)://");
    private static final Pattern PREFIX = Pattern.compile("^([A-Za-z][A-Za-z0-9+_-]*):");

    private final DriverRegistry registry;
    private final Secrets secrets;

    ChainResolver(DriverRegistry registry, Secrets secrets) {
        this.registry = registry;
        this.secrets = secrets;
    }

    /** Everything one open call needs to know while it walks down the chain. */
    record Request(boolean readOnly, boolean forceShare, Consumer<String> warnings, boolean noFlush, boolean check) {
        Request(boolean readOnly, boolean forceShare, Consumer<String> warnings) {
            this(readOnly, forceShare, warnings, false, false);
        }
    }

    Image openTop(String filename, Options options, boolean writable, boolean forceShare, Consumer<String> warnings)
            throws BlockException {
        return openTop(filename, options, writable, forceShare, warnings, false);
    }

    /** @param check opened for a consistency check: the top format skips its repairs on opening */
    Image openTop(String filename, Options options, boolean writable, boolean forceShare, Consumer<String> warnings,
            boolean check) throws BlockException {
        Options opts = options == null ? Options.empty() : options;
        if (filename != null && filename.startsWith("json:")) {
            opts = Options.parseJson(filename.substring(5)).merge(opts);
            filename = null;
        }
        if (filename == null && opts.has("filename")) {
            filename = opts.get("filename");
            opts = opts.without("filename");
        }
        boolean ro = !writable || opts.getBool("read-only", false);
        forceShare = forceShare || opts.getBool("force-share", false);
        if (forceShare && !ro) {
            throw BlockException.invalid("force-share=on can only be used with read-only images");
        }
        Set<Permission> perm = ro ? EnumSet.of(Permission.CONSISTENT_READ)
                : EnumSet.of(Permission.CONSISTENT_READ, Permission.WRITE);
        // QEMU's users share everything at the top; metadata formats then refuse to share writes
        // and resizes of their own file (childShared), which is what keeps a qcow2 safe.
        Set<Permission> shared = Permission.all();
        // cache.no-flush=on (qemu-img convert's default "unsafe" cache for its target): flushes
        // are dropped for the whole chain, as QEMU does
        Request req = new Request(ro, forceShare, warnings == null ? w -> { } : warnings,
                opts.getBool("cache.no-flush", false), check);
        return openNode(filename, opts, req, perm, shared, true, 0, new HashSet<>());
    }

    ManagedNode openNode(String filename, Options opts, Request req, Set<Permission> perm, Set<Permission> shared,
            boolean probe, int depth, Set<String> chain) throws BlockException {
        String driverName = opts.get("driver");
        // A name typed by the user goes through the protocol's filename parser; a "filename"
        // option is already the protocol's own option and is taken as it is.
        String typed = filename;
        if (filename == null && opts.get("filename") != null) {
            filename = opts.get("filename");
        }
        DriverRegistry.Entry entry = null;
        if (driverName != null) {
            entry = registry.find(driverName);
            if (entry == null) {
                throw new BlockException(Reason.NOT_FOUND, "Unknown driver '" + driverName + "'");
            }
            if (entry.descriptor().kind() == Kind.PROTOCOL) {
                return openProtocol(entry, typed, opts, req, perm, shared);
            }
            return openFormat(entry, filename, opts, null, req, perm, shared, depth, chain, false);
        }
        Options fileTree = opts.subtree("file");
        // No name, but the storage described by file.* options: probe the format on it (QEMU
        // does the same for --image-opts file.filename=x)
        boolean storageByOptions = filename == null && probe && (fileTree.has("filename") || fileTree.has("driver"));
        if (filename == null && !storageByOptions) {
            throw BlockException.invalid("A block device must be specified for \"file\"");
        }
        DriverRegistry.Entry protocol;
        if (storageByOptions) {
            String d = fileTree.get("driver");
            protocol = d != null ? registry.find(d) : protocolFor(fileTree.get("filename"));
            if (protocol == null) {
                throw new BlockException(Reason.NOT_FOUND, "Unknown driver '" + d + "'");
            }
        } else {
            protocol = protocolFor(filename);
        }
        if (!probe) {
            return openProtocol(protocol, filename, opts, req, perm, shared);
        }
        // No format given: open the protocol layer claiming only a read, probe, then tell it the
        // permissions the chosen format needs (a remote export is connected to once, and a
        // file's lock bytes end up exactly as QEMU's would).
        ManagedNode file = openProtocol(protocol, filename, inherit(opts, fileTree), req,
                EnumSet.of(Permission.CONSISTENT_READ), Permission.all());
        if (storageByOptions) {
            filename = null; // named by its options once open
        }
        try {
            DriverRegistry.Entry fmt = probeFormat(file, file.filename());
            if (fmt == null) {
                throw new BlockException(Reason.NOT_FOUND, "Could not determine the image format: no format driver"
                        + " is installed");
            }
            if (file.driverNode() instanceof PermissionAwareNode aware) {
                aware.updatePermissions(childPerm(fmt.descriptor(), perm),
                        req.forceShare() ? Permission.all() : childShared(fmt.descriptor(), shared));
            }
            if (fmt.descriptor().name().equals("raw") && !req.readOnly()) {
                req.warnings().accept("WARNING: Image format was not specified for '" + file.filename()
                        + "' and probing guessed raw.\n"
                        + "         Automatically detecting the format is dangerous for raw images, write operations"
                        + " on block 0 will be restricted.\n"
                        + "         Specify the 'raw' format explicitly to remove the restrictions.");
            }
            boolean guard = fmt.descriptor().name().equals("raw") && !req.readOnly();
            return openFormat(fmt, filename, opts, file, req, perm, shared, depth, chain, guard);
        } catch (BlockException | RuntimeException e) {
            closeQuietly(file);
            throw e;
        }
    }

    DriverRegistry.Entry protocolFor(String filename) throws BlockException {
        Matcher m = URI_SCHEME.matcher(filename);
        String key = null;
        if (m.find()) {
            key = m.group(1);
        } else {
            Matcher p = PREFIX.matcher(filename);
            if (p.find()) {
                key = p.group(1) + ":";
            }
        }
        if (key != null) {
            DriverRegistry.Entry e = registry.findProtocol(key);
            if (e == null && key.endsWith(":")) {
                // "a:b" may be an ordinary file name; qemu calls it an unknown protocol unless it is.
                e = registry.findProtocol(key.substring(0, key.length() - 1));
            }
            if (e != null) {
                return e;
            }
            String name = key.endsWith(":") ? key.substring(0, key.length() - 1) : key;
            throw new BlockException(Reason.NOT_FOUND, "Unknown protocol '" + name + "'");
        }
        DriverRegistry.Entry claimed = null;
        int best = 0;
        for (DriverRegistry.Entry e : registry.protocols()) {
            int score;
            try {
                score = e.driver().probeDevice(filename);
            } catch (RuntimeException ex) {
                continue;
            }
            if (score > best) {
                best = score;
                claimed = e;
            }
        }
        if (claimed != null) {
            return claimed;
        }
        DriverRegistry.Entry file = registry.find("file");
        if (file == null) {
            throw new BlockException(Reason.NOT_FOUND, "Unknown protocol 'file': the file protocol driver is not"
                    + " installed");
        }
        return file;
    }

    private DriverRegistry.Entry probeFormat(ManagedNode file, String filename) throws BlockException {
        long size = file.size();
        ByteBuffer head = ByteBuffer.allocate((int) Math.min(PROBE_BYTES, size));
        file.read(0, head);
        head.flip();
        DriverRegistry.Entry best = null;
        int bestScore = 0;
        for (DriverRegistry.Entry e : registry.formats()) {
            int score;
            try {
                score = e.driver().probe(head.asReadOnlyBuffer(), filename);
            } catch (RuntimeException ex) {
                continue; // a broken probe must not stop the others
            }
            if (score > bestScore) {
                best = e;
                bestScore = score;
            }
        }
        return best != null ? best : registry.find("raw");
    }

    private ManagedNode openProtocol(DriverRegistry.Entry entry, String filename, Options opts, Request req,
            Set<Permission> perm, Set<Permission> shared) throws BlockException {
        // backing=null (open the image alone) holds trivially for storage without backing files
        Options own = opts.isNull("backing") ? opts.without("backing") : opts;
        if (filename != null) {
            Options parsed = entry.driver().parseFilename(filename);
            own = parsed.merge(own.without("filename"));
        }
        checkOptions(entry.descriptor(), own, false);
        String exact = entry.driver().exactFilename(own);
        final String shownName = exact != null ? exact : filename != null ? filename
                : own.get("filename") != null ? own.get("filename") : describe(own);
        final Options nodeOpts = own.without("driver");
        OpenContext ctx = new Context(entry, shownName, nodeOpts, req, perm, shared, 0, Set.of(), List.of());
        // a driver with an exact name of its own (nbd's URL) is named by it, as QEMU's refresh_filename does
        boolean named = exact != null || filename != null || own.get("filename") != null;
        return finish(entry, named ? shownName : null, ctx, req, List.of(), false, nodeOpts, own.get("filename"));
    }

    private ManagedNode openFormat(DriverRegistry.Entry entry, String filename, Options opts, ManagedNode file,
            Request req, Set<Permission> perm, Set<Permission> shared, int depth, Set<String> chain,
            boolean guardSectorZero) throws BlockException {
        checkOptions(entry.descriptor(), opts, true);
        List<Image.Child> children = new ArrayList<>();
        if (file != null) {
            children.add(new Image.Child("file", file));
        }
        Options own = opts.without("driver").without("filename");
        // a format probed over a protocol shows the protocol's exact name, as QEMU does
        String shown = filename != null ? (file != null ? file.filename() : filename) : describe(opts);
        Context ctx = new Context(entry, shown, own, req, perm, shared, depth, chain, children);
        ctx.fileHint = filename;
        try {
            return finish(entry, filename, ctx, req, children, guardSectorZero, own, null);
        } catch (BlockException | RuntimeException e) {
            for (Image.Child c : children) {
                closeQuietly((ManagedNode) c.image());
            }
            throw e;
        }
    }

    /**
     * @param given    the name the node was opened by, or null when only options name it (its
     *                 name is then QEMU's, worked out once its children are open)
     * @param own      the node's options, for its json: name
     * @param filename its filename option (protocols), for the same
     */
    private ManagedNode finish(DriverRegistry.Entry entry, String given, OpenContext ctx, Request req,
            List<Image.Child> children, boolean guardSectorZero, Options own, String filename) throws BlockException {
        BlockNode node;
        try {
            node = entry.driver().open(ctx);
        } catch (RuntimeException e) {
            throw new BlockException(Reason.IO, "Driver '" + entry.descriptor().name() + "' failed: " + e, e);
        }
        if (node == null) {
            throw new BlockException(Reason.IO, "Driver '" + entry.descriptor().name() + "' returned no node");
        }
        String driver = entry.descriptor().name();
        java.util.Map<String, Object> full = NodeNames.fullOptions(driver, own,
                entry.descriptor().kind() == Kind.PROTOCOL ? filename != null ? filename : given : null, children);
        String shown = given;
        if (shown == null) {
            ManagedNode file = null;
            boolean onlyFile = true;
            for (Image.Child c : children) {
                if (c.role().equals("file")) {
                    file = (ManagedNode) c.image();
                } else if (!c.role().equals("backing")) {
                    onlyFile = false;
                }
            }
            boolean overProtocol = file != null && registry.find(file.driverName()) != null
                    && registry.find(file.driverName()).descriptor().kind() == Kind.PROTOCOL
                    && entry.descriptor().kind() != Kind.FILTER;
            shown = NodeNames.name(full, overProtocol, file == null ? null : file.filename(), onlyFile);
        }
        if (guardSectorZero) {
            node = new SectorZeroGuard(node, registry);
        }
        ManagedNode[] self = new ManagedNode[1];
        // Only the storage skips its flush: formats still write their cached metadata down to
        // it, as QEMU's "unsafe" mode still flushes to the OS and only skips the disk.
        boolean noFlush = req.noFlush() && entry.descriptor().kind() == Kind.PROTOCOL;
        ManagedNode m = new ManagedNode(entry.descriptor().name(), shown, node, req.readOnly(), noFlush, children,
                () -> registry.untrack(entry.driver(), self[0]));
        self[0] = m;
        m.fullOpenOptions(full);
        try {
            registry.track(entry.driver(), m);
        } catch (BlockException e) {
            closeQuietly(m);
            throw e;
        }
        return m;
    }

    /** Unknown options are errors, in qemu's words, before anything is opened. */
    private void checkOptions(DriverDescriptor d, Options opts, boolean format) throws BlockException {
        for (String key : opts.asMap().keySet()) {
            if (COMMON_OPTIONS.contains(key) || key.equals("filename") && !format) {
                continue;
            }
            String root = key.contains(".") ? key.substring(0, key.indexOf('.')) : key;
            if (format && CHILD_ROLES.contains(root)) {
                continue;
            }
            if (key.equals("backing") && opts.isNull(key)) {
                continue; // qemu-img's "no backing chain" (BDRV_O_NO_BACKING) means nothing to a protocol
            }
            if (d.openOption(key) != null) {
                continue;
            }
            throw BlockException.invalid("Block " + (format ? "format" : "protocol") + " '" + d.name()
                    + "' does not support the option '" + key + "'");
        }
    }

    /** Cache options a child takes from its parent unless it sets its own (as in QEMU). */
    static Options inherit(Options parent, Options child) {
        Options c = child;
        for (String key : List.of("cache.direct", "cache.no-flush")) {
            if (parent.has(key) && !child.has(key)) {
                c = c.with(key, parent.get(key));
            }
        }
        return c;
    }

    /** QEMU's permission rules for a format's "file" child (bdrv_default_perms for storage). */
    static Set<Permission> childPerm(DriverDescriptor format, Set<Permission> perm) {
        if (format != null && passesThrough(format)) {
            return perm;
        }
        EnumSet<Permission> p = EnumSet.noneOf(Permission.class);
        p.addAll(perm);
        p.add(Permission.CONSISTENT_READ);
        if (perm.contains(Permission.WRITE)) {
            p.add(Permission.RESIZE); // metadata formats grow their files
        }
        return p;
    }

    static Set<Permission> childShared(DriverDescriptor format, Set<Permission> shared) {
        if (format != null && passesThrough(format)) {
            return shared;
        }
        EnumSet<Permission> s = EnumSet.noneOf(Permission.class);
        s.addAll(shared);
        s.remove(Permission.WRITE);
        s.remove(Permission.RESIZE);
        return s;
    }

    /** raw and filters do not interpret what they store, so they pass permissions through. */
    private static boolean passesThrough(DriverDescriptor d) {
        return d.kind() == Kind.FILTER || d.name().equals("raw");
    }

    private static String describe(Options opts) {
        StringBuilder sb = new StringBuilder("json:{");
        boolean first = true;
        for (var e : opts.asMap().entrySet()) {
            if (!first) {
                sb.append(", ");
            }
            first = false;
            sb.append('"').append(e.getKey()).append("\": \"").append(e.getValue()).append('"');
        }
        return sb.append('}').toString();
    }

    static void closeQuietly(ManagedNode n) {
        try {
            n.close("open failed");
        } catch (BlockException ignored) {
            // the open's own error is the one to report
        }
    }

    /** The OpenContext of one node being opened. */
    private final class Context implements OpenContext {
        private final DriverRegistry.Entry entry;
        private final String filename;
        private final Options options;
        private final Request req;
        private final Set<Permission> perm;
        private final Set<Permission> shared;
        private final int depth;
        private final Set<String> chain;
        private final List<Image.Child> children;
        String fileHint;

        Context(DriverRegistry.Entry entry, String filename, Options options, Request req, Set<Permission> perm,
                Set<Permission> shared, int depth, Set<String> chain, List<Image.Child> children) {
            this.entry = entry;
            this.filename = filename;
            this.options = options;
            this.req = req;
            this.perm = perm;
            this.shared = shared;
            this.depth = depth;
            this.chain = chain;
            this.children = children;
        }

        @Override public String filename() { return filename; }
        @Override public boolean readOnly() { return req.readOnly(); }
        @Override public boolean forCheck() { return req.check(); }
        @Override public Set<Permission> permissions() { return Set.copyOf(perm); }
        @Override public Set<Permission> sharedPermissions() { return Set.copyOf(shared); }
        @Override public void warn(String message) { req.warnings().accept(message); }
        @Override public byte[] secret(String id) throws BlockException { return secrets.get(id); }
        @Override public org.blockhaus.api.spi.UserObject object(String id) throws BlockException {
            return secrets.requireObject(id);
        }

        /** This node's options without its children's subtrees. */
        @Override
        public Options options() {
            Options o = options;
            for (String role : CHILD_ROLES) {
                o = o.withoutTree(role);
            }
            return o;
        }

        @Override
        public BlockNode openFile() throws BlockException {
            for (Image.Child c : children) {
                if (c.role().equals("file")) {
                    return c.image();
                }
            }
            Options sub = inherit(options, options.subtree("file"));
            String name = options.get("file");
            if (name == null && !sub.has("filename")) {
                name = fileHint;
            }
            if (name == null && !sub.has("filename") && !sub.has("driver")) {
                throw BlockException.invalid("A block device must be specified for \"file\"");
            }
            ManagedNode n = openNode(name, sub, req, childPerm(entry.descriptor(), perm),
                    (req.forceShare() ? Permission.all() : childShared(entry.descriptor(), shared)), false, depth, chain);
            children.add(new Image.Child("file", n));
            return n;
        }

        @Override
        public BlockNode openChild(String role, String childFilename, boolean probeFormat) throws BlockException {
            Options sub = options.subtree(role);
            String name = sub.get("filename");
            if (name == null && childFilename != null) {
                name = resolveRelative(childFilename);
            }
            if (name == null && sub.isEmpty()) {
                return null;
            }
            ManagedNode n = openNode(name, sub.without("filename"), req, childPerm(entry.descriptor(), perm),
                    (req.forceShare() ? Permission.all() : childShared(entry.descriptor(), shared)), probeFormat, depth, chain);
            children.add(new Image.Child(role, n));
            return n;
        }

        @Override
        public BlockNode openBacking(String backingFilename, String backingFormat) throws BlockException {
            if (options.isNull("backing")) {
                return null; // the user said backing=null
            }
            Options sub = options.subtree("backing");
            String name = sub.get("filename");
            if (name == null) {
                if (backingFilename == null || backingFilename.isEmpty()) {
                    return null;
                }
                name = resolveRelative(backingFilename);
            }
            if (backingFormat != null && !sub.has("driver")) {
                sub = sub.with("driver", backingFormat);
            }
            if (depth + 1 > MAX_BACKING_DEPTH) {
                throw BlockException.invalid("Backing chain of '" + filename + "' is deeper than "
                        + MAX_BACKING_DEPTH + " images");
            }
            String key = identity(name);
            Set<String> seen = new HashSet<>(chain);
            seen.add(identity(filename));
            if (seen.contains(key)) {
                throw BlockException.invalid("Backing file loop: '" + name + "' is already part of the chain of '"
                        + filename + "'");
            }
            seen.add(key);
            Request backingReq = new Request(true, req.forceShare(), req.warnings());
            ManagedNode n;
            try {
                n = openNode(name, sub.without("filename"), backingReq, EnumSet.of(Permission.CONSISTENT_READ),
                        EnumSet.complementOf(EnumSet.of(Permission.WRITE)), true, depth + 1, seen);
            } catch (BlockException e) {
                throw e.prepend("Could not open backing file: ");
            }
            children.add(new Image.Child("backing", n));
            return n;
        }

        /** Names relative to this image, as qemu resolves backing and extent names. */
        private String resolveRelative(String child) throws BlockException {
            if (child.startsWith("/") || URI_SCHEME.matcher(child).find() || child.startsWith("json:")) {
                return child;
            }
            String base = fileHint != null ? fileHint : filename;
            if (base == null || base.startsWith("json:")) {
                // opened from options: QEMU takes the directory from the storage below (its file)
                for (Image.Child c : children) {
                    if (c.role().equals("file") && !c.image().filename().startsWith("json:")) {
                        base = c.image().filename();
                    }
                }
            }
            if (base == null || base.startsWith("json:")) {
                throw BlockException.invalid("Cannot use relative backing file names for '" + filename + "'");
            }
            if (URI_SCHEME.matcher(base).find()) {
                int slash = base.lastIndexOf('/');
                return base.substring(0, slash + 1) + child;
            }
            Path parent = Path.of(base).getParent();
            return parent == null ? child : parent.resolve(child).toString();
        }
    }

    /** What makes two chain members the same image: the real path for files, else the name. */
    static String identity(String name) {
        if (name == null) {
            return "";
        }
        try {
            Path p = Path.of(name);
            if (Files.exists(p)) {
                return p.toRealPath().toString();
            }
        } catch (Exception ignored) {
            // not a local path
        }
        return name;
    }
}
