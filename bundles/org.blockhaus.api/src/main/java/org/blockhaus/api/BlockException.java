package org.blockhaus.api;

import java.io.IOException;
import java.io.Serial;

/**
 * The one checked exception of the block layer. The {@link Reason} lets callers act (exit codes,
 * NBD error numbers); the message is written for a person and says what to do where it can.
 */
public class BlockException extends Exception {
    @Serial private static final long serialVersionUID = 1L;

    /** Why an operation failed; mirrors the errno classes QEMU's block layer distinguishes. */
    public enum Reason {
        /** The driver or node cannot do this (ENOTSUP). */
        UNSUPPORTED,
        /** A parameter, option or request is wrong (EINVAL). */
        INVALID_ARGUMENT,
        /** On-disk data violates the format (EUCLEAN, QEMU's "corrupt"). */
        CORRUPT,
        /** The underlying storage or peer failed (EIO). */
        IO,
        /** No space left (ENOSPC). */
        NO_SPACE,
        /** Write to a read-only node (EROFS / EACCES for writes). */
        READ_ONLY,
        /** The host refused access (EACCES / EPERM). */
        PERMISSION,
        /** Another user holds a conflicting image lock. */
        LOCKED,
        /** A file, export or driver does not exist (ENOENT). */
        NOT_FOUND,
        /** The node was closed, for example because its driver bundle stopped. */
        CLOSED,
        /** A range exceeds the image or a number overflows (EFBIG / ERANGE). */
        OUT_OF_RANGE
    }

    private final Reason reason;

    public BlockException(Reason reason, String message) {
        super(message);
        this.reason = reason;
    }

    public BlockException(Reason reason, String message, Throwable cause) {
        super(message, cause);
        this.reason = reason;
    }

    public Reason reason() {
        return reason;
    }

    public static BlockException unsupported(String what) {
        return new BlockException(Reason.UNSUPPORTED, what + " is not supported");
    }

    public static BlockException invalid(String message) {
        return new BlockException(Reason.INVALID_ARGUMENT, message);
    }

    public static BlockException corrupt(String message) {
        return new BlockException(Reason.CORRUPT, message);
    }

    public static BlockException io(String message, IOException cause) {
        return new BlockException(Reason.IO, message + (cause.getMessage() == null ? "" : ": " + cause.getMessage()), cause);
    }

    /** Adds context in front of the message (QEMU's error_prepend), keeping the reason. */
    public BlockException prepend(String context) {
        BlockException e = new BlockException(reason, context + getMessage(), getCause());
        e.setStackTrace(getStackTrace());
        return e;
    }
}
