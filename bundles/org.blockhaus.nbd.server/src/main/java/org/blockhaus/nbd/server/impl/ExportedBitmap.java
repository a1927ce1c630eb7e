package org.blockhaus.nbd.server.impl;

import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.Capabilities;
import org.blockhaus.api.Image;
import org.blockhaus.api.spi.BitmapNode;
import org.blockhaus.nbd.server.NbdServer;

/**
 * A persistent dirty bitmap served as QEMU's {@code qemu:dirty-bitmap:NAME} meta context
 * (qemu-nbd's {@code -B NAME}, docs/interop/nbd.rst): block status answers 1 (NBD_STATE_DIRTY)
 * where the bitmap has bits set, 0 elsewhere. As qemu-nbd does, the bitmap is looked up in the
 * served image and then down its backing chain.
 */
record ExportedBitmap(String name, BitmapNode node) {
    static final String CONTEXT_PREFIX = "qemu:dirty-bitmap:";
    static final int STATE_DIRTY = 1;
    /** Backing chains deeper than this are not searched (the core caps chains lower). */
    private static final int MAX_DEPTH = 64;

    String context() {
        return CONTEXT_PREFIX + name;
    }

    /**
     * The bitmaps an export names, found and checked when the server starts, with qemu-nbd's
     * messages: a name found nowhere in the chain (also on formats without bitmaps, such as raw)
     * is "not found"; one stored "in-use" (not saved after its last use) is inconsistent; an
     * enabled bitmap of a writable image exported read-only is refused, since writes by others
     * would change it under the clients (qemu-nbd -r opens the image read-only, so only the API
     * can ask for this). A name given twice is served once.
     */
    static List<ExportedBitmap> resolve(NbdServer.Export export) throws BlockException {
        List<ExportedBitmap> out = new ArrayList<>();
        for (String name : new LinkedHashSet<>(export.bitmaps())) {
            ExportedBitmap b = find(export.node(), name);
            Capabilities caps = export.node().capabilities();
            boolean writable = caps != null && caps.can(Capabilities.Feature.WRITE);
            if (export.readOnly() && writable && b.enabled()) {
                throw BlockException.invalid("Enabled bitmap '" + name + "' incompatible with readonly export");
            }
            out.add(b);
        }
        return List.copyOf(out);
    }

    private boolean enabled() throws BlockException {
        for (BitmapNode.Bitmap bm : node.bitmaps()) {
            if (bm.name().equals(name)) {
                return bm.enabled();
            }
        }
        return false;
    }

    private static ExportedBitmap find(BlockNode served, String name) throws BlockException {
        BlockNode n = served;
        if (n instanceof ServedNode s) {
            // qemu-nbd's --offset puts a raw layer with an offset in front, which hides the image's
            // bitmaps: qemu-nbd then says "not found", and so do we
            n = s.offset() == 0 ? s.inner() : null;
        }
        for (int depth = 0; n != null && depth < MAX_DEPTH; depth++) {
            BlockNode driver = n instanceof Image img ? img.driverNode() : n;
            if (driver instanceof BitmapNode b) {
                for (BitmapNode.Bitmap bm : b.bitmaps()) {
                    if (bm.name().equals(name)) {
                        if (bm.inconsistent()) {
                            throw BlockException.invalid("Bitmap '" + name + "' is inconsistent and cannot be used");
                        }
                        return new ExportedBitmap(name, b);
                    }
                }
            }
            n = n instanceof Image img ? img.backing() : null;
        }
        throw new BlockException(BlockException.Reason.NOT_FOUND, "Bitmap '" + name + "' is not found");
    }

    /**
     * {length, value} extents for {@code [offset, offset+length)} of the export: clean and dirty
     * runs alternate (the bitmap gives whole runs), at most {@code max} of them, one with {@code one}
     * (NBD_CMD_FLAG_REQ_ONE). Past the bitmap's end (a backing file smaller than the export) is clean.
     */
    List<long[]> extents(long offset, long length, boolean one, int max) throws BlockException {
        long end = offset + length;
        List<long[]> out = new ArrayList<>();
        long pos = offset;
        while (pos < end && out.size() < max) {
            BitmapNode.DirtyRange d = node.nextDirty(name, pos);
            long dirtyAt = d == null ? end : Math.min(end, Math.max(pos, d.offset()));
            if (dirtyAt > pos) {
                out.add(new long[] {dirtyAt - pos, 0});
                pos = dirtyAt;
            } else {
                long dirtyEnd = Math.min(end, d.offset() + Math.max(1, d.length()));
                out.add(new long[] {dirtyEnd - pos, STATE_DIRTY});
                pos = dirtyEnd;
            }
            if (one) {
                break;
            }
        }
        return out;
    }
}
