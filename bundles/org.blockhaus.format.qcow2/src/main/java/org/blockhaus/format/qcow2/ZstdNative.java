package org.blockhaus.format.qcow2;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.invoke.MethodHandle;
import java.util.concurrent.ConcurrentLinkedQueue;

/**
 * The system's libzstd through FFM (no JNI), for compressed clusters: about three times faster
 * than the pure-Java aircompressor at qemu's level, which matters because convert -c spends its
 * time compressing. {@link #get()} is null when the library or native access is missing; {@link
 * Zstd} then falls back to aircompressor. Contexts are pooled (creating one per cluster cost as
 * much as compressing it); the calls take the Java arrays directly (critical downcalls, no copy).
 */
final class ZstdNative {
    /** ZSTD_CLEVEL_DEFAULT, the level qemu's qcow2 driver compresses with (it sets none). */
    static final int LEVEL = 3;

    private static final ZstdNative INSTANCE = load();

    private final MethodHandle createCCtx;
    private final MethodHandle compressCCtx;
    private final MethodHandle createDCtx;
    private final MethodHandle decompressDCtx;
    private final MethodHandle isError;
    private final ConcurrentLinkedQueue<MemorySegment> cctxs = new ConcurrentLinkedQueue<>();
    private final ConcurrentLinkedQueue<MemorySegment> dctxs = new ConcurrentLinkedQueue<>();

    private ZstdNative(SymbolLookup lib) {
        Linker linker = Linker.nativeLinker();
        Linker.Option critical = Linker.Option.critical(true);
        createCCtx = linker.downcallHandle(lib.findOrThrow("ZSTD_createCCtx"), FunctionDescriptor.of(ADDRESS));
        createDCtx = linker.downcallHandle(lib.findOrThrow("ZSTD_createDCtx"), FunctionDescriptor.of(ADDRESS));
        compressCCtx = linker.downcallHandle(lib.findOrThrow("ZSTD_compressCCtx"),
                FunctionDescriptor.of(JAVA_LONG, ADDRESS, ADDRESS, JAVA_LONG, ADDRESS, JAVA_LONG, JAVA_INT), critical);
        decompressDCtx = linker.downcallHandle(lib.findOrThrow("ZSTD_decompressDCtx"),
                FunctionDescriptor.of(JAVA_LONG, ADDRESS, ADDRESS, JAVA_LONG, ADDRESS, JAVA_LONG), critical);
        isError = linker.downcallHandle(lib.findOrThrow("ZSTD_isError"), FunctionDescriptor.of(JAVA_INT, JAVA_LONG));
    }

    private static ZstdNative load() {
        if (Boolean.getBoolean("blk.zstd.java")) {
            return null; // forced fallback (tests of the pure-Java path)
        }
        try {
            ZstdNative z = new ZstdNative(SymbolLookup.libraryLookup("libzstd.so.1", Arena.global()));
            z.compress(new byte[] {1}, 1, new byte[64]); // fails here, not on the first image, if unusable
            return z;
        } catch (Throwable e) { // no library, no native access, another platform: aircompressor then
            return null;
        }
    }

    /** The binding, or null when the system has no usable libzstd. */
    static ZstdNative get() {
        return INSTANCE;
    }

    /** Compresses {@code src[0, len)} as one frame into {@code dst}; returns its length, or -1 if it did not fit. */
    int compress(byte[] src, int len, byte[] dst) {
        MemorySegment ctx = cctxs.poll();
        try {
            if (ctx == null) {
                ctx = (MemorySegment) createCCtx.invokeExact();
                if (ctx.address() == 0) {
                    throw new OutOfMemoryError("ZSTD_createCCtx");
                }
            }
            long n = (long) compressCCtx.invokeExact(ctx, MemorySegment.ofArray(dst), (long) dst.length,
                    MemorySegment.ofArray(src), (long) len, LEVEL);
            return (int) isError.invokeExact(n) != 0 ? -1 : (int) n;
        } catch (RuntimeException | Error e) {
            throw e;
        } catch (Throwable e) {
            throw new IllegalStateException(e);
        } finally {
            if (ctx != null && ctx.address() != 0) {
                cctxs.offer(ctx);
            }
        }
    }

    /** Decompresses one frame; returns the bytes produced, or -1 if the frame is not valid. */
    int decompress(byte[] src, int len, byte[] dst) {
        MemorySegment ctx = dctxs.poll();
        try {
            if (ctx == null) {
                ctx = (MemorySegment) createDCtx.invokeExact();
                if (ctx.address() == 0) {
                    throw new OutOfMemoryError("ZSTD_createDCtx");
                }
            }
            long n = (long) decompressDCtx.invokeExact(ctx, MemorySegment.ofArray(dst), (long) dst.length,
                    MemorySegment.ofArray(src), (long) len);
            return (int) isError.invokeExact(n) != 0 ? -1 : (int) n;
        } catch (RuntimeException | Error e) {
            throw e;
        } catch (Throwable e) {
            throw new IllegalStateException(e);
        } finally {
            if (ctx != null && ctx.address() != 0) {
                dctxs.offer(ctx);
            }
        }
    }
}
