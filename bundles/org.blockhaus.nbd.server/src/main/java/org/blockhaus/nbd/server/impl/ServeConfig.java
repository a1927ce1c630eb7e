package org.blockhaus.nbd.server.impl;

import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.net.UnixDomainSocketAddress;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.Options;
import org.blockhaus.nbd.server.impl.QemuNbdArgs.Given;
import org.blockhaus.nbd.server.impl.QemuNbdArgs.UsageError;
import org.blockhaus.nbd.server.impl.ServedNode.DetectZeroes;

/**
 * What a qemu-nbd command line asks for, checked in qemu-nbd's order and with its messages
 * (qemu-nbd.c of QEMU 7.2): the images and their export names, the listening address, the
 * server's behaviour and the block-device options.
 */
record ServeConfig(List<Image> images, String format, boolean imageOpts, boolean readOnly, boolean allocationDepth,
        long offset, String bind, String port, Path socket, int shared, boolean persistent, List<String> objects,
        String tlsCreds, boolean fork, Path pidFile, boolean cacheDirect, boolean writeThrough, boolean noFlush,
        String aio, boolean discardUnmap, DetectZeroes detectZeroes, boolean help, boolean version) {

    static final String DEFAULT_PORT = "10809";
    static final String DEFAULT_BIND = "0.0.0.0";

    /**
     * One image operand and the export it becomes; {@code bitmaps} are its -B names in the order
     * qemu-nbd lists their contexts (the reverse of the command line's).
     */
    record Image(String filename, String exportName, String description, List<String> bitmaps) {
    }

    static ServeConfig from(QemuNbdArgs a) throws UsageError {
        boolean help = false;
        boolean version = false;
        boolean readOnly = false;
        boolean depth = false;
        boolean persistent = false;
        boolean imageOpts = false;
        boolean fork = false;
        long offset = 0;
        int shared = 1;
        String bind = DEFAULT_BIND;
        String port = DEFAULT_PORT;
        Path socket = null;
        String format = null;
        String tlsCreds = null;
        String tlsAuthz = null;
        Path pidFile = null;
        String cache = null;
        String aio = null;
        boolean discardUnmap = false;
        DetectZeroes detect = DetectZeroes.OFF;
        List<String> objects = new ArrayList<>();
        List<String> names = new ArrayList<>();
        List<Integer> namePositions = new ArrayList<>();
        List<String> descriptions = new ArrayList<>();
        List<Integer> descriptionPositions = new ArrayList<>();
        List<String> bitmaps = new ArrayList<>();
        List<Integer> bitmapPositions = new ArrayList<>();
        int index = 0;
        for (Given g : a.options) {
            String v = g.value();
            switch (g.name()) {
                case "h" -> help = true;
                case "V" -> version = true;
                case "b" -> bind = v;
                case "p" -> port = v;
                case "k" -> {
                    socket = Path.of(v);
                    if (v.length() > 107) {
                        throw new UsageError("socket path too long", false);
                    }
                }
                case "o" -> offset = offset(v);
                case "r" -> readOnly = true;
                case "A" -> depth = true;
                case "B" -> {
                    bitmaps.add(v);
                    bitmapPositions.add(index);
                }
                case "e" -> shared = shared(v);
                case "t" -> persistent = true;
                case "x" -> {
                    if (v.getBytes(java.nio.charset.StandardCharsets.UTF_8).length > 4096) {
                        throw new UsageError("Export name '" + v + "' too long", false);
                    }
                    names.add(v);
                    namePositions.add(index);
                }
                case "D" -> {
                    if (v.getBytes(java.nio.charset.StandardCharsets.UTF_8).length > 4096) {
                        throw new UsageError("Export description '" + v + "' too long", false);
                    }
                    descriptions.add(v);
                    descriptionPositions.add(index);
                }
                case "f" -> format = v;
                case "n" -> {
                    if (cache != null) {
                        throw new UsageError("-n and --cache can only be specified once", false);
                    }
                    cache = "none";
                }
                case "cache" -> {
                    if (cache != null) {
                        throw new UsageError("-n and --cache can only be specified once", false);
                    }
                    if (!List.of("none", "off", "writeback", "unsafe", "directsync", "writethrough").contains(v)) {
                        throw new UsageError("Invalid cache mode `" + v + "'", false);
                    }
                    cache = v;
                }
                case "aio" -> {
                    if (aio != null) {
                        throw new UsageError("--aio can only be specified once", false);
                    }
                    if (!List.of("native", "io_uring", "threads").contains(v)) {
                        throw new UsageError("Invalid aio mode '" + v + "'", false);
                    }
                    aio = v;
                }
                case "discard" -> {
                    switch (v) {
                        case "ignore", "off" -> discardUnmap = false;
                        case "unmap", "on" -> discardUnmap = true;
                        default -> throw new UsageError("Invalid discard mode `" + v + "'", false);
                    }
                }
                case "detect-zeroes" -> detect = switch (v) {
                    case "off" -> DetectZeroes.OFF;
                    case "on" -> DetectZeroes.ON;
                    case "unmap" -> DetectZeroes.UNMAP;
                    default -> throw new UsageError("Failed to parse detect_zeroes mode: invalid parameter value: "
                            + v, false);
                };
                case "object" -> objects.add(v);
                case "tls-creds" -> tlsCreds = v;
                case "tls-authz" -> tlsAuthz = v;
                case "image-opts" -> imageOpts = true;
                case "fork" -> fork = true;
                case "pid-file" -> pidFile = Path.of(v);
                case "v", "T" -> {
                    // verbose and tracing have nothing to add here: the server logs nothing of its own
                }
                case "c", "d" -> throw new UsageError("the kernel NBD client (-c/-d) is not supported by blk nbd",
                        false);
                case "L" -> throw new UsageError("-L (list exports) is not supported by blk nbd; use"
                        + " nbdinfo --list", false);
                case "s", "l" -> throw new UsageError("-" + g.name() + " is not supported by blk nbd", false);
                case "selinux-label" -> throw new UsageError("SELinux support not enabled in this binary", false);
                case "tls-hostname" -> throw new UsageError("--tls-hostname is only permitted with --list", false);
                default -> throw new UsageError("unexpected option " + g.name(), true);
            }
            index++;
        }
        if (help || version) {
            return new ServeConfig(List.of(), format, imageOpts, readOnly, depth, offset, bind, port, socket, shared,
                    persistent, objects, tlsCreds, fork, pidFile, false, false, false, aio, discardUnmap, detect, help,
                    version);
        }
        if (tlsAuthz != null) {
            if (tlsCreds == null) {
                throw new UsageError("--tls-authz is not permitted without --tls-creds", false);
            }
            throw new UsageError("--tls-authz is not supported by blk nbd", false);
        }
        if (a.operands.isEmpty() || a.operands.size() > 1 && names.size() != a.operands.size()) {
            throw new UsageError("Invalid number of arguments", true);
        }
        if (detect == DetectZeroes.UNMAP && !discardUnmap) {
            throw new UsageError("setting detect-zeroes to unmap is not allowed without setting discard operation"
                    + " to unmap", false);
        }
        if (imageOpts && format != null) {
            throw new UsageError("--image-opts and -f are mutually exclusive", false);
        }
        List<Image> images = new ArrayList<>();
        if (a.operands.size() == 1) {
            images.add(new Image(a.operands.getFirst(), names.isEmpty() ? "" : names.getLast(),
                    descriptions.isEmpty() ? null : descriptions.getLast(), bitmaps.reversed()));
        } else {
            // several exports: each image is named by the -x (and described by the -D) before it
            for (int i = 0; i < a.operands.size(); i++) {
                int before = a.operandPositions.get(i);
                String name = null;
                for (int j = 0; j < names.size(); j++) {
                    if (namePositions.get(j) < before) {
                        name = names.get(j);
                        namePositions.set(j, Integer.MAX_VALUE); // used
                        break;
                    }
                }
                if (name == null) {
                    throw new UsageError("Each image needs its own -x NAME before it when serving several", false);
                }
                String description = null;
                for (int j = 0; j < descriptions.size(); j++) {
                    if (descriptionPositions.get(j) < before) {
                        description = descriptions.get(j);
                        descriptionPositions.set(j, Integer.MAX_VALUE);
                        break;
                    }
                }
                for (Image other : images) {
                    if (other.exportName().equals(name)) {
                        throw new UsageError("Export name '" + name + "' is used twice", false);
                    }
                }
                // a -B belongs to the first image after it (those after the last image, to the last)
                int from = i == 0 ? Integer.MIN_VALUE : a.operandPositions.get(i - 1);
                int to = i == a.operands.size() - 1 ? Integer.MAX_VALUE : before;
                List<String> own = new ArrayList<>();
                for (int j = 0; j < bitmaps.size(); j++) {
                    if (bitmapPositions.get(j) >= from && bitmapPositions.get(j) < to) {
                        own.add(bitmaps.get(j));
                    }
                }
                images.add(new Image(a.operands.get(i), name, description, own.reversed()));
            }
        }
        String c = cache == null ? "writeback" : cache;
        boolean direct = c.equals("none") || c.equals("off") || c.equals("directsync");
        boolean writeThrough = c.equals("writethrough") || c.equals("directsync");
        boolean noFlush = c.equals("unsafe");
        return new ServeConfig(List.copyOf(images), format, imageOpts, readOnly, depth, offset, bind, port, socket,
                shared, persistent, List.copyOf(objects), tlsCreds, fork, pidFile, direct, writeThrough, noFlush, aio,
                discardUnmap, detect, false, false);
    }

    private static long offset(String v) throws UsageError {
        long o;
        try {
            o = Long.decode(v);
        } catch (NumberFormatException e) {
            throw new UsageError("Invalid offset '" + v + "'", false);
        }
        if (o < 0) {
            throw new UsageError("Offset must be positive", false);
        }
        return o;
    }

    private static int shared(String v) throws UsageError {
        try {
            int n = Integer.decode(v);
            if (n >= 0) {
                return n;
            }
        } catch (NumberFormatException e) {
            // the message below
        }
        throw new UsageError("Invalid shared device number '" + v + "'", false);
    }

    /** Where to listen: the unix socket when given (qemu-nbd then ignores -b and -p), else bind:port. */
    SocketAddress address() throws BlockException {
        if (socket != null) {
            return UnixDomainSocketAddress.of(socket);
        }
        int p;
        try {
            p = Integer.parseInt(port);
            if (p < 0 || p > 65535) {
                throw new NumberFormatException();
            }
        } catch (NumberFormatException e) {
            throw BlockException.invalid("address resolution failed for " + bind + ":" + port
                    + ": Servname not supported for ai_socktype");
        }
        String host = bind.startsWith("[") && bind.endsWith("]") ? bind.substring(1, bind.length() - 1) : bind;
        InetSocketAddress a = new InetSocketAddress(host, p);
        if (a.isUnresolved()) {
            throw BlockException.invalid("address resolution failed for " + bind + ":" + port
                    + ": Name or service not known");
        }
        return a;
    }

    /** The open options for one image: -f or --image-opts, and --cache/--aio for the protocol. */
    Options openOptions(String filename) throws BlockException {
        Options o = imageOpts ? Options.parseKeyValue(filename, "file") : Options.empty();
        if (format != null) {
            o = o.with("driver", format);
        }
        if (cacheDirect && !o.has("file.cache.direct")) {
            o = o.with("file.cache.direct", "on");
        }
        if (aio != null && !o.has("file.aio")) {
            o = o.with("file.aio", aio);
        }
        if (discardUnmap && !o.has("discard")) {
            // as qemu-nbd: the node is opened with discard=unmap, so a format passes the clusters
            // a trim frees down to its file too (qcow2's pass-discard-request follows it)
            o = o.with("discard", "unmap");
        }
        return o;
    }
}
