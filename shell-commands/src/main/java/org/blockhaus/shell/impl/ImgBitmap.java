package org.blockhaus.shell.impl;

import java.util.ArrayList;
import java.util.List;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.Image;
import org.blockhaus.api.spi.BitmapNode;
import org.blockhaus.shell.impl.Args.UsageException;
import org.blockhaus.shell.impl.Results.Text;

/**
 * qemu-img bitmap: {@code bitmap [--object OBJ] [--image-opts | -f FMT] {--add [-g GRANULARITY]
 * [--disable] | --remove | --clear | --enable | --disable | --merge SOURCE [-b SRC_FILE
 * [-F SRC_FMT]]}... FILENAME BITMAP}. The actions run in the order given; the image is closed
 * (which stores the bitmaps) also when one fails, as qemu-img does. Also {@code convert --bitmaps}.
 */
final class ImgBitmap {
    private final Img img;

    ImgBitmap(Img img) {
        this.img = img;
    }

    private record Action(String op, String source) {
    }

    /**
     * Parsed by hand: the actions' order matters. As in qemu-img, {@code --add --disable} is two
     * actions (add an enabled bitmap, then disable it).
     */
    Object run(String[] argv) throws UsageException, BlockException {
        List<Action> actions = new ArrayList<>();
        List<String> positional = new ArrayList<>();
        String fmt = null;
        String granularity = null;
        String srcFile = null;
        String srcFmt = null;
        boolean imageOpts = false;
        boolean onlyPositional = false;
        for (int i = 0; i < argv.length; i++) {
            String arg = argv[i];
            if (onlyPositional || arg.equals("-") || !arg.startsWith("-")) {
                positional.add(arg);
                continue;
            }
            String name = arg;
            String value = null;
            int eq = arg.indexOf('=');
            if (arg.startsWith("--") && eq > 0) {
                name = arg.substring(0, eq);
                value = arg.substring(eq + 1);
            } else if (!arg.startsWith("--") && arg.length() > 2) {
                name = arg.substring(0, 2); // -g64k
                value = arg.substring(2);
            }
            boolean takesValue = switch (name) {
                case "-f", "--format", "-g", "--granularity", "-b", "--source-file", "-F", "--source-format",
                        "--merge", "--object" -> true;
                case "--add", "--remove", "--clear", "--enable", "--disable", "--image-opts", "-h", "--help", "--" ->
                        false;
                default -> throw new UsageException("unrecognized option '" + arg + "'");
            };
            if (takesValue && value == null) {
                if (i + 1 >= argv.length) {
                    throw new UsageException("option requires an argument -- '" + name.replaceFirst("^-+", "") + "'");
                }
                value = argv[++i];
            } else if (!takesValue && value != null) {
                throw new UsageException(arg.startsWith("--") ? "option '" + name + "' doesn't allow an argument"
                        : "unrecognized option '" + arg + "'");
            }
            switch (name) {
                case "--" -> onlyPositional = true;
                case "-h", "--help" -> {
                    return new Text(Usage.TEXT);
                }
                case "-f", "--format" -> fmt = value;
                case "-g", "--granularity" -> granularity = value;
                case "-b", "--source-file" -> srcFile = value;
                case "-F", "--source-format" -> srcFmt = value;
                case "--object" -> { } // applied by Img before the command runs
                case "--image-opts" -> imageOpts = true;
                case "--add" -> actions.add(new Action("add", null));
                case "--merge" -> actions.add(new Action("merge", value));
                default -> actions.add(new Action(name.substring(2), null));
            }
        }
        if (actions.isEmpty()) {
            throw BlockException.invalid("Need at least one of --add, --remove, --clear, --enable, --disable, or --merge");
        }
        boolean add = actions.stream().anyMatch(x -> x.op().equals("add"));
        boolean merge = actions.stream().anyMatch(x -> x.op().equals("merge"));
        if (granularity != null && !add) {
            throw BlockException.invalid("granularity only supported with --add");
        }
        if (srcFmt != null && srcFile == null) {
            throw BlockException.invalid("-F only supported with -b");
        }
        if (srcFile != null && !merge) {
            throw BlockException.invalid("Merge bitmap source file only supported with --merge");
        }
        if (positional.size() != 2) {
            throw BlockException.invalid("Expecting filename and bitmap name");
        }
        long gran = 0;
        if (granularity != null) {
            gran = Img.parseSize(granularity, "granularity", Long.MAX_VALUE, img::warn);
        }
        String filename = positional.get(0);
        String bitmap = positional.get(1);
        if (imageOpts && fmt != null) {
            throw BlockException.invalid("--image-opts and --format are mutually exclusive");
        }
        Image image = img.open(filename, fmt, imageOpts, true, false);
        try {
            BitmapNode node = image.driverNode() instanceof BitmapNode b ? b : null;
            for (Action act : actions) {
                try {
                    apply(act, node, image, bitmap, gran, srcFile, srcFmt);
                } catch (BlockException e) {
                    throw e.prepend("Operation " + act.op() + " on bitmap " + bitmap + " failed: ");
                }
            }
        } finally {
            image.close();
        }
        return new Text("");
    }

    private void apply(Action act, BitmapNode node, Image image, String bitmap, long gran, String srcFile,
            String srcFmt) throws BlockException {
        if (node == null) {
            throw act.op().equals("add")
                    ? new BlockException(Reason.UNSUPPORTED, "Can't store persistent bitmaps to '" + image.filename()
                            + "': Operation not supported")
                    : new BlockException(Reason.NOT_FOUND, "Dirty bitmap '" + bitmap + "' not found");
        }
        switch (act.op()) {
            case "add" -> node.addBitmap(bitmap, gran == 0 ? defaultGranularity(image) : gran, false);
            case "remove" -> node.removeBitmap(bitmap);
            case "clear" -> node.clearBitmap(bitmap);
            case "enable" -> node.enableBitmap(bitmap, true);
            case "disable" -> node.enableBitmap(bitmap, false);
            case "merge" -> merge(node, bitmap, act.source(), srcFile, srcFmt);
            default -> throw new IllegalStateException(act.op());
        }
    }

    /** qemu's default: the image's cluster size, kept within 4 KiB .. 64 KiB. */
    private static long defaultGranularity(Image image) throws BlockException {
        Object cs = image.driverNode().info().get("cluster-size");
        long cluster = cs instanceof Number n ? n.longValue() : 65536;
        return Math.min(65536, Math.max(4096, cluster));
    }

    /** The target gets every bit of the source bitmap (from this image, or from {@code -b SRC_FILE}). */
    private void merge(BitmapNode target, String bitmap, String source, String srcFile, String srcFmt)
            throws BlockException {
        if (target.bitmaps().stream().noneMatch(b -> b.name().equals(bitmap))) {
            throw new BlockException(Reason.NOT_FOUND, "Dirty bitmap '" + bitmap + "' not found");
        }
        target.setBitmapDirty(bitmap, 0, 0); // an empty change: fails first for an inconsistent target, as qemu
        if (srcFile == null) {
            copyBits(target, bitmap, target, source);
            return;
        }
        Image src = img.open(srcFile, srcFmt, false, false, false);
        try {
            if (!(src.driverNode() instanceof BitmapNode from)) {
                throw new BlockException(Reason.NOT_FOUND, "Dirty bitmap '" + source + "' not found");
            }
            copyBits(target, bitmap, from, source);
        } finally {
            src.close();
        }
    }

    /** Sets in {@code to} every range dirty in {@code from}; the ranges are read first, so a bitmap may merge into itself. */
    static void copyBits(BitmapNode to, String toName, BitmapNode from, String fromName) throws BlockException {
        List<BitmapNode.DirtyRange> ranges = new ArrayList<>();
        long at = 0;
        BitmapNode.DirtyRange r;
        while ((r = from.nextDirty(fromName, at)) != null) {
            ranges.add(r);
            at = r.offset() + r.length();
        }
        for (BitmapNode.DirtyRange d : ranges) {
            to.setBitmapDirty(toName, d.offset(), d.length());
        }
    }

    // ---- convert --bitmaps -----------------------------------------------------------------------

    /**
     * The source's bitmaps that convert copies; an inconsistent one fails the command before
     * the target is created, or with --skip-broken-bitmaps is skipped with a warning (qemu-img
     * looks at them last to first).
     */
    static List<BitmapNode.Bitmap> bitmapsToCopy(Img img, Image source, boolean skipBroken) throws BlockException {
        if (!(source.driverNode() instanceof BitmapNode node)) {
            return List.of();
        }
        List<BitmapNode.Bitmap> all = node.bitmaps();
        List<BitmapNode.Bitmap> out = new ArrayList<>();
        for (BitmapNode.Bitmap b : all.reversed()) {
            if (!b.inconsistent()) {
                out.addFirst(b);
            } else if (skipBroken) {
                img.warn("Skipping inconsistent bitmap '" + b.name() + "'");
            } else {
                throw BlockException.invalid("Cannot copy inconsistent bitmap '" + b.name() + "'\nTry "
                        + "--skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it");
            }
        }
        return out;
    }

    /** qemu-img's check once the target is open: its format must store bitmaps (qcow2 v3). */
    static void checkTargetSupportsBitmaps(Image dst, List<BitmapNode.Bitmap> bitmaps) throws BlockException {
        boolean v2 = dst.driverNode().info().get("format-specific") instanceof java.util.Map<?, ?> fs
                && fs.get("data") instanceof java.util.Map<?, ?> data && "0.10".equals(data.get("compat"));
        if (!(dst.driverNode() instanceof BitmapNode) || v2) {
            throw new BlockException(Reason.UNSUPPORTED, "Format driver '" + dst.driverName()
                    + "' does not support bitmaps");
        }
    }

    /** After the data (a name clash fails only then, as in qemu-img): each bitmap is created in the target with its granularity, bits and state. */
    static void copyBitmaps(Image source, Image dst, List<BitmapNode.Bitmap> bitmaps) throws BlockException {
        BitmapNode from = (BitmapNode) source.driverNode();
        BitmapNode to = (BitmapNode) dst.driverNode();
        for (BitmapNode.Bitmap b : bitmaps.reversed()) { // qemu-img names the last clash first
            if (to.bitmaps().stream().anyMatch(x -> x.name().equals(b.name()))) {
                throw BlockException.invalid("Failed to create bitmap " + b.name() + ": Bitmap already exists: "
                        + b.name());
            }
        }
        for (BitmapNode.Bitmap b : bitmaps) {
            try {
                to.addBitmap(b.name(), b.granularity(), !b.enabled());
            } catch (BlockException e) {
                throw e.prepend("Failed to create bitmap " + b.name() + ": ");
            }
            copyBits(to, b.name(), from, b.name());
        }
    }
}
