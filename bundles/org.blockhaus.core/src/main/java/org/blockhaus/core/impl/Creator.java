package org.blockhaus.core.impl;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.EnumSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.function.Consumer;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.BlockService.CreateResult;
import org.blockhaus.api.Options;
import org.blockhaus.api.Sizes;
import org.blockhaus.api.spi.CreateContext;
import org.blockhaus.api.spi.DriverDescriptor;
import org.blockhaus.api.spi.DriverDescriptor.Kind;
import org.blockhaus.api.spi.OptionSpec;
import org.blockhaus.api.spi.Permission;

/**
 * qemu-img create: checks every option against the format's and the protocol's create options
 * before anything is touched, tells the caller what it will create ("Formatting ..."), then
 * lets the format driver build the image. A failed create removes a file it made.
 */
final class Creator {
    private final DriverRegistry registry;
    private final ChainResolver resolver;
    private final Secrets secrets;

    Creator(DriverRegistry registry, ChainResolver resolver, Secrets secrets) {
        this.registry = registry;
        this.resolver = resolver;
        this.secrets = secrets;
    }

    /** Format and protocol create options together, as {@code -o help} and create see them. */
    List<OptionSpec> createOptions(String format, String filename) throws BlockException {
        DriverRegistry.Entry fmt = requireFormat(format);
        List<OptionSpec> all = new ArrayList<>(fmt.descriptor().createOptions());
        if (fmt.descriptor().kind() != Kind.PROTOCOL) {
            DriverRegistry.Entry proto = filename == null ? registry.find("file") : resolver.protocolFor(filename);
            if (proto != null) {
                for (OptionSpec s : proto.descriptor().createOptions()) {
                    if (all.stream().noneMatch(o -> o.name().equals(s.name()))) {
                        all.add(s);
                    }
                }
            }
        }
        return all;
    }

    DriverRegistry.Entry requireFormat(String format) throws BlockException {
        DriverRegistry.Entry fmt = registry.find(format);
        if (fmt == null) {
            throw new BlockException(Reason.NOT_FOUND, "Unknown file format '" + format + "'");
        }
        return fmt;
    }

    /**
     * @param unsafeBacking qemu-img create -u: the backing file is named in the image but not
     *                      opened, so its format and the size must be given
     */
    CreateResult create(String filename, String format, Options given, boolean unsafeBacking,
            Consumer<String> formatting, Consumer<String> warnings) throws BlockException {
        DriverRegistry.Entry fmt;
        try {
            fmt = requireFormat(format);
        } catch (BlockException e) {
            throw e.prepend(filename + ": ");
        }
        DriverRegistry.Entry proto = fmt.descriptor().kind() == Kind.PROTOCOL ? fmt : resolver.protocolFor(filename);
        List<OptionSpec> specs = createOptions(format, filename);
        for (String key : given.asMap().keySet()) {
            if (specs.stream().noneMatch(s -> s.matches(key))) {
                throw BlockException.invalid(filename + ": Invalid parameter '" + key + "'");
            }
        }
        for (OptionSpec s : specs) {
            String v = given.get(s.name());
            if (v != null) {
                try {
                    checkValue(s, v, warnings);
                } catch (BlockException e) {
                    throw e.prepend(filename + ": ");
                }
            }
        }
        Options opts = given;
        String backingName = opts.get("backing_file");
        if (backingName != null && backingName.equals(filename)) {
            throw BlockException.invalid(filename + ": Error: Trying to create an image with the same filename as the"
                    + " backing file");
        }
        if (backingName != null && backingName.isEmpty()) {
            throw BlockException.invalid(filename + ": Expected backing file name, got empty string");
        }
        boolean unopenedBacking = unsafeBacking && opts.get("backing_file") != null;
        if (unopenedBacking && opts.get("backing_fmt") == null) {
            // nothing is opened to detect the format, and qemu-img no longer records a guess
            throw BlockException.invalid(filename + ": Backing file specified without backing format");
        }
        long size;
        if (opts.has("size")) {
            size = Sizes.parse(opts.get("size"));
            opts = opts.with("size", Long.toString(size));
        } else if (opts.get("backing_file") != null && !unopenedBacking) {
            size = backingSize(filename, opts.get("backing_file"), opts.get("backing_fmt"), warnings);
            opts = opts.with("size", Long.toString(size));
        } else {
            throw BlockException.invalid(filename + ": Image creation needs a size parameter");
        }
        String summary = summary(format, specs, opts);
        formatting.accept(summary);

        Path path = localPath(proto, filename);
        boolean existed = path == null || Files.exists(path);
        final Options effective = opts;
        final long finalSize = size;
        List<BlockNode> opened = new ArrayList<>();
        CreateContext ctx = new CreateContext() {
            @Override public String filename() { return filename; }
            @Override public Options options() { return effective; }
            @Override public long size() { return finalSize; }
            @Override public byte[] secret(String id) throws BlockException { return secrets.get(id); }
            @Override public void warn(String message) { warnings.accept(message); }
            @Override public boolean unsafeBacking() { return unopenedBacking; }

            @Override
            public BlockNode createFile(Options protocolOptions) throws BlockException {
                // Protocol options the format does not know about go to the protocol unchanged.
                Options p = protocolOptions;
                for (OptionSpec s : proto.descriptor().createOptions()) {
                    if (fmt.descriptor().createOption(s.name()) == null && effective.has(s.name()) && !p.has(s.name())) {
                        p = p.with(s.name(), effective.get(s.name()));
                    }
                }
                BlockNode n = createProtocolFile(filename, p, warnings);
                opened.add(n);
                return n;
            }

            @Override
            public BlockNode createFile(String other, Options protocolOptions) throws BlockException {
                String name = other;
                Path parent = Path.of(filename).getParent();
                if (!other.startsWith("/") && !other.contains("://") && parent != null) {
                    name = parent.resolve(other).toString();
                }
                BlockNode n = createProtocolFile(name, protocolOptions, warnings);
                opened.add(n);
                return n;
            }

            @Override
            public BlockNode openBacking(String backingFilename, String backingFormat) throws BlockException {
                if (unopenedBacking) {
                    throw new IllegalStateException("create -u: the driver must not open the backing file");
                }
                BlockNode n = openBackingForCreate(filename, backingFilename, backingFormat, warnings);
                opened.add(n);
                return n;
            }
        };
        try {
            fmt.driver().create(ctx);
        } catch (BlockException | RuntimeException e) {
            closeAll(opened);
            if (!existed) {
                try {
                    Files.deleteIfExists(path);
                } catch (Exception ignored) {
                    // the create error is what the user needs to see
                }
            }
            if (e instanceof RuntimeException re) {
                throw new BlockException(Reason.IO, filename + ": Driver '" + format + "' failed: " + re, re);
            }
            if (fileTooLarge((BlockException) e)) {
                // as qemu's image creation: a file too large (EFBIG) is told in the format's words
                boolean clusterSize = specs.stream().anyMatch(sp -> sp.name().equals("cluster_size"));
                throw new BlockException(Reason.OUT_OF_RANGE, filename + ": The image size is too large for file"
                        + " format '" + format + "'" + (clusterSize ? " (try using a larger cluster size)" : ""), e);
            }
            throw ((BlockException) e).prepend(filename + ": ");
        }
        closeAll(opened);
        return new CreateResult(filename, format, summary);
    }

    /** Creates and opens, read-write, a plain file for a format's extra storage. */
    private BlockNode createProtocolFile(String name, Options protocolOptions, Consumer<String> warnings)
            throws BlockException {
        DriverRegistry.Entry proto = resolver.protocolFor(name);
        proto.driver().create(new CreateContext() {
            @Override public String filename() { return name; }
            @Override public Options options() { return protocolOptions; }
            @Override public long size() {
                return protocolOptions.has("size") ? Long.parseLong(protocolOptions.get("size")) : 0;
            }
            @Override public BlockNode createFile(Options o) throws BlockException {
                throw BlockException.unsupported("a protocol below a protocol");
            }
            @Override public BlockNode createFile(String f, Options o) throws BlockException {
                throw BlockException.unsupported("a protocol below a protocol");
            }
            @Override public BlockNode openBacking(String f, String fm) throws BlockException {
                throw BlockException.unsupported("backing files for protocols");
            }
            @Override public byte[] secret(String id) throws BlockException { return secrets.get(id); }
            @Override public void warn(String m) { warnings.accept(m); }
        });
        return resolver.openNode(name, Options.of("driver", proto.descriptor().name()),
                new ChainResolver.Request(false, false, warnings),
                EnumSet.of(Permission.CONSISTENT_READ, Permission.WRITE, Permission.RESIZE),
                EnumSet.of(Permission.CONSISTENT_READ, Permission.WRITE_UNCHANGED), false, 0, java.util.Set.of());
    }

    private static void closeAll(List<BlockNode> nodes) throws BlockException {
        BlockException first = null;
        for (int i = nodes.size() - 1; i >= 0; i--) {
            try {
                nodes.get(i).close();
            } catch (BlockException e) {
                first = first == null ? e : first;
            }
        }
        nodes.clear();
        if (first != null) {
            throw first;
        }
    }

    private long backingSize(String filename, String backing, String backingFmt, Consumer<String> warnings)
            throws BlockException {
        try (BlockNode n = openBackingForCreate(filename, backing, backingFmt, warnings)) {
            return n.size();
        }
    }

    private BlockNode openBackingForCreate(String filename, String backing, String backingFmt,
            Consumer<String> warnings) throws BlockException {
        String name = backing;
        if (!backing.startsWith("/") && !backing.contains("://") && !backing.startsWith("json:")) {
            Path parent = Path.of(filename).getParent();
            name = parent == null ? backing : parent.resolve(backing).toString();
        }
        Options o = backingFmt == null ? Options.empty() : Options.of("driver", backingFmt);
        try {
            return resolver.openTop(name, o, false, true, warnings);
        } catch (BlockException e) {
            throw e.prepend("Could not open backing image: ");
        }
    }

    /** qemu-img's summary: options with a value or a default, in the driver's order. */
    static String summary(String format, List<OptionSpec> specs, Options opts) {
        Map<String, String> shown = new LinkedHashMap<>();
        for (OptionSpec s : specs) {
            if (s.name().endsWith(".*")) {
                String prefix = s.name().substring(0, s.name().length() - 1);
                opts.asMap().forEach((k, v) -> {
                    if (k.startsWith(prefix)) {
                        shown.put(k, v);
                    }
                });
                continue;
            }
            String v = opts.get(s.name());
            if (v == null) {
                v = s.defaultValue();
            }
            if (v != null) {
                shown.put(s.name(), s.type() == OptionSpec.OptionType.SIZE ? bytes(v) : v);
            }
        }
        StringBuilder sb = new StringBuilder("fmt=").append(format);
        shown.forEach((k, v) -> sb.append(' ').append(k).append('=').append(v));
        return sb.toString();
    }

    /**
     * Whether a create failed because the file system refused the file's size (EFBIG, which the
     * file protocol reports as OUT_OF_RANGE "...: File too large"); qemu rewords only that error,
     * not other range errors a create may meet.
     */
    private static boolean fileTooLarge(BlockException e) {
        return e.reason() == Reason.OUT_OF_RANGE && e.getMessage() != null && e.getMessage().endsWith("File too large");
    }

    /** qemu-img shows size options in bytes ("cluster_size=4k" as 4096); checkValue has parsed them. */
    private static String bytes(String size) {
        try {
            return Long.toString(Sizes.parseUnsigned(size, w -> { }));
        } catch (BlockException e) {
            return size;
        }
    }

    static void checkValue(OptionSpec s, String v, Consumer<String> warnings) throws BlockException {
        switch (s.type()) {
            case SIZE -> {
                // qemu parses the -o string twice (qemu-img, then the block layer) and so prints a
                // hexadecimal number's suffix warning twice; once here
                Sizes.parseOption(s.name(), v, warnings);
            }
            case BOOL -> {
                if (!List.of("on", "off", "true", "false", "yes", "no").contains(v)) {
                    throw BlockException.invalid("Parameter '" + s.name() + "' expects 'on' or 'off'");
                }
            }
            case NUMBER -> {
                try {
                    Long.parseLong(v);
                } catch (NumberFormatException e) {
                    throw BlockException.invalid("Parameter '" + s.name() + "' expects a number");
                }
            }
            case STRING -> {
                // enumerations are checked by the driver, after "Formatting ...", as qemu-img does
            }
        }
    }

    private static Path localPath(DriverRegistry.Entry proto, String filename) {
        if (!proto.descriptor().name().equals("file")) {
            return null;
        }
        String f = filename.startsWith("file:") ? filename.substring(5) : filename;
        try {
            return Path.of(f);
        } catch (Exception e) {
            return null;
        }
    }

    static boolean isFormat(DriverDescriptor d) {
        return d.kind() == Kind.FORMAT;
    }
}
