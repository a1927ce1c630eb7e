package org.blockhaus.api.spi;

import java.util.List;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;

/**
 * A format node with persistent dirty bitmaps (qcow2): named bitmaps, one bit per
 * {@code granularity} bytes of the virtual disk, that record which ranges the guest changed while
 * the bitmap was enabled. Changes to the set of bitmaps take effect in the image when the node is
 * closed (removal at once), as in QEMU. qemu-img's {@code bitmap} command and
 * {@code convert --bitmaps} are built on this.
 */
public interface BitmapNode extends BlockNode {
    /**
     * One bitmap. {@code enabled} is the on-disk "auto" flag (writes are tracked);
     * {@code inconsistent} means it was found "in-use" (not saved after its last use) and can only
     * be removed.
     */
    record Bitmap(String name, long granularity, boolean enabled, boolean inconsistent) {
    }

    /** A run of guest bytes whose bits are set, aligned to the bitmap's granularity (clamped to the disk). */
    record DirtyRange(long offset, long length) {
    }

    /** The bitmaps in the image's directory order. */
    List<Bitmap> bitmaps() throws BlockException;

    /** Adds an empty bitmap; {@code granularity} is a power of two of at least 512. */
    void addBitmap(String name, long granularity, boolean disabled) throws BlockException;

    void removeBitmap(String name) throws BlockException;

    void clearBitmap(String name) throws BlockException;

    /** Enables ({@code true}) or disables tracking of guest writes. */
    void enableBitmap(String name, boolean enabled) throws BlockException;

    /** Sets the bits covering {@code [offset, offset+length)} (merge, copying bitmaps). */
    void setBitmapDirty(String name, long offset, long length) throws BlockException;

    /** The first dirty range at or after {@code offset}, or null when there is none. */
    DirtyRange nextDirty(String name, long offset) throws BlockException;
}
