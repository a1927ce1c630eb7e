package org.blockhaus.nbd.common;

import org.blockhaus.api.BlockException.Reason;

/**
 * Numbers of the NBD protocol, named as in its specification (doc/proto.md of the
 * NetworkBlockDevice project) and QEMU's docs/interop/nbd.rst; one list for client and server.
 */
public final class Nbd {
    private Nbd() {
    }

    public static final int DEFAULT_PORT = 10809;

    // ---- handshake ----
    public static final long NBDMAGIC = 0x4e42444d41474943L;
    public static final long IHAVEOPT = 0x49484156454F5054L;
    public static final long OLDSTYLE_MAGIC = 0x00420281861253L;
    public static final long OPTION_REPLY_MAGIC = 0x3e889045565a9L;

    public static final int FLAG_FIXED_NEWSTYLE = 1;
    public static final int FLAG_NO_ZEROES = 2;
    public static final int FLAG_C_FIXED_NEWSTYLE = 1;
    public static final int FLAG_C_NO_ZEROES = 2;

    public static final int OPT_EXPORT_NAME = 1;
    public static final int OPT_ABORT = 2;
    public static final int OPT_LIST = 3;
    public static final int OPT_STARTTLS = 5;
    public static final int OPT_INFO = 6;
    public static final int OPT_GO = 7;
    public static final int OPT_STRUCTURED_REPLY = 8;
    public static final int OPT_LIST_META_CONTEXT = 9;
    public static final int OPT_SET_META_CONTEXT = 10;

    public static final int REP_ACK = 1;
    public static final int REP_SERVER = 2;
    public static final int REP_INFO = 3;
    public static final int REP_META_CONTEXT = 4;
    public static final int REP_FLAG_ERROR = 1 << 31;
    public static final int REP_ERR_UNSUP = REP_FLAG_ERROR | 1;
    public static final int REP_ERR_POLICY = REP_FLAG_ERROR | 2;
    public static final int REP_ERR_INVALID = REP_FLAG_ERROR | 3;
    public static final int REP_ERR_PLATFORM = REP_FLAG_ERROR | 4;
    public static final int REP_ERR_TLS_REQD = REP_FLAG_ERROR | 5;
    public static final int REP_ERR_UNKNOWN = REP_FLAG_ERROR | 6;
    public static final int REP_ERR_SHUTDOWN = REP_FLAG_ERROR | 7;
    public static final int REP_ERR_BLOCK_SIZE_REQD = REP_FLAG_ERROR | 8;
    public static final int REP_ERR_TOO_BIG = REP_FLAG_ERROR | 9;

    public static final int INFO_EXPORT = 0;
    public static final int INFO_NAME = 1;
    public static final int INFO_DESCRIPTION = 2;
    public static final int INFO_BLOCK_SIZE = 3;

    // ---- transmission flags ----
    public static final int FLAG_HAS_FLAGS = 1;
    public static final int FLAG_READ_ONLY = 1 << 1;
    public static final int FLAG_SEND_FLUSH = 1 << 2;
    public static final int FLAG_SEND_FUA = 1 << 3;
    public static final int FLAG_ROTATIONAL = 1 << 4;
    public static final int FLAG_SEND_TRIM = 1 << 5;
    public static final int FLAG_SEND_WRITE_ZEROES = 1 << 6;
    public static final int FLAG_SEND_DF = 1 << 7;
    public static final int FLAG_CAN_MULTI_CONN = 1 << 8;
    public static final int FLAG_SEND_CACHE = 1 << 10;
    public static final int FLAG_SEND_FAST_ZERO = 1 << 11;

    // ---- transmission ----
    public static final int REQUEST_MAGIC = 0x25609513;
    public static final int SIMPLE_REPLY_MAGIC = 0x67446698;
    public static final int STRUCTURED_REPLY_MAGIC = 0x668e33ef;
    public static final int REQUEST_SIZE = 28;

    public static final int CMD_READ = 0;
    public static final int CMD_WRITE = 1;
    public static final int CMD_DISC = 2;
    public static final int CMD_FLUSH = 3;
    public static final int CMD_TRIM = 4;
    public static final int CMD_CACHE = 5;
    public static final int CMD_WRITE_ZEROES = 6;
    public static final int CMD_BLOCK_STATUS = 7;

    public static final int CMD_FLAG_FUA = 1;
    public static final int CMD_FLAG_NO_HOLE = 1 << 1;
    public static final int CMD_FLAG_DF = 1 << 2;
    public static final int CMD_FLAG_REQ_ONE = 1 << 3;
    public static final int CMD_FLAG_FAST_ZERO = 1 << 4;

    public static final int REPLY_FLAG_DONE = 1;
    public static final int REPLY_TYPE_NONE = 0;
    public static final int REPLY_TYPE_OFFSET_DATA = 1;
    public static final int REPLY_TYPE_OFFSET_HOLE = 2;
    public static final int REPLY_TYPE_BLOCK_STATUS = 5;
    public static final int REPLY_TYPE_ERROR = (1 << 15) | 1;
    public static final int REPLY_TYPE_ERROR_OFFSET = (1 << 15) | 2;

    public static final int STATE_HOLE = 1;
    public static final int STATE_ZERO = 2;

    public static final String CONTEXT_BASE_ALLOCATION = "base:allocation";

    /** Largest request payload servers must accept and we ever send (the spec's 32 MiB). */
    public static final int MAX_PAYLOAD = 32 << 20;
    /** Longest string the spec allows (export names, context names, error messages). */
    public static final int MAX_STRING = 4096;

    // ---- error values ----
    public static final int EPERM = 1;
    public static final int EIO = 5;
    public static final int ENOMEM = 12;
    public static final int EINVAL = 22;
    public static final int ENOSPC = 28;
    public static final int EOVERFLOW = 75;
    public static final int ENOTSUP = 95;
    public static final int ESHUTDOWN = 108;

    // ---- the server's meta context ids
    public static final String CONTEXT_ALLOCATION_DEPTH = "qemu:allocation-depth";
    public static final int BASE_ALLOCATION_ID = 1;
    public static final int ALLOCATION_DEPTH_ID = 2;

    public static String optionName(int opt) {
        return switch (opt) {
            case OPT_EXPORT_NAME -> "export name";
            case OPT_ABORT -> "abort";
            case OPT_LIST -> "list";
            case OPT_STARTTLS -> "starttls";
            case OPT_INFO -> "info";
            case OPT_GO -> "go";
            case OPT_STRUCTURED_REPLY -> "structured reply";
            case OPT_LIST_META_CONTEXT -> "list meta context";
            case OPT_SET_META_CONTEXT -> "set meta context";
            default -> "<unknown>";
        };
    }

    public static String errnoName(int error) {
        return switch (error) {
            case EPERM -> "EPERM: Operation not permitted";
            case EIO -> "EIO: Input/output error";
            case ENOMEM -> "ENOMEM: Cannot allocate memory";
            case EINVAL -> "EINVAL: Invalid argument";
            case ENOSPC -> "ENOSPC: No space left on device";
            case EOVERFLOW -> "EOVERFLOW: Value too large";
            case ENOTSUP -> "ENOTSUP: Operation not supported";
            case ESHUTDOWN -> "ESHUTDOWN: Server is shutting down";
            default -> "error " + error;
        };
    }

    public static Reason reasonOf(int error) {
        return switch (error) {
            case EPERM -> Reason.PERMISSION;
            case EINVAL -> Reason.INVALID_ARGUMENT;
            case ENOSPC -> Reason.NO_SPACE;
            case EOVERFLOW -> Reason.OUT_OF_RANGE;
            case ENOTSUP -> Reason.UNSUPPORTED;
            default -> Reason.IO;
        };
    }

    public static String commandName(int type) {
        return switch (type) {
            case CMD_READ -> "read";
            case CMD_WRITE -> "write";
            case CMD_FLUSH -> "flush";
            case CMD_TRIM -> "trim";
            case CMD_CACHE -> "cache";
            case CMD_WRITE_ZEROES -> "write zeroes";
            case CMD_BLOCK_STATUS -> "block status";
            default -> "command " + type;
        };
    }
}
