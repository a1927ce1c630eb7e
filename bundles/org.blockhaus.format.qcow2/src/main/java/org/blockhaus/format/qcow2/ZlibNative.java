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
 * The system's zlib through FFM (no JNI) for compressing clusters with exactly qemu's deflate
 * settings: level Z_DEFAULT_COMPRESSION, raw deflate with a 4 KiB window (windowBits -12),
 * memLevel 9, the default strategy, one Z_FINISH over the whole cluster. java.util.zip cannot set
 * the window, so {@link Compression}'s Java path emulates the 4 KiB limit with a full flush every
 * 4 KiB, which resets the dictionary: measured on text, its clusters came out about a third
 * larger than qemu-img's. Through libz the compressed clusters are byte-for-byte qemu-img's.
 * {@link #get()} is null when libz or native access is missing; the Java path is used then.
 *
 * <p>A z_stream keeps pointers to its buffers and zlib's state points back at the stream, so
 * each pooled context owns native memory for the stream and for one cluster in and out; the
 * cluster is copied in and the result out (two copies of a cluster, small beside deflating it).
 */
final class ZlibNative {
    private static final int Z_OK = 0;
    private static final int Z_STREAM_END = 1;
    private static final int Z_FINISH = 4;
    private static final int Z_DEFAULT_COMPRESSION = -1;
    private static final int Z_DEFLATED = 8;
    private static final int Z_DEFAULT_STRATEGY = 0;
    /** qemu's deflateInit2 arguments: a 4 KiB window, raw deflate (negative: no zlib header). */
    private static final int WINDOW_BITS = -12;
    private static final int MEM_LEVEL = 9;
    /** sizeof(z_stream) on the LP64 Linux ABIs (x86_64, aarch64); zlib checks it at init. */
    private static final int STREAM_SIZE = 112;
    private static final long NEXT_IN = 0;
    private static final long AVAIL_IN = 8;
    private static final long NEXT_OUT = 24;
    private static final long AVAIL_OUT = 32;

    private static final ZlibNative INSTANCE = load();

    private final MethodHandle deflateInit2;
    private final MethodHandle deflate;
    private final MethodHandle deflateReset;
    private final MethodHandle deflateEnd;
    private final MemorySegment version;
    private final ConcurrentLinkedQueue<Context> contexts = new ConcurrentLinkedQueue<>();

    /** One deflate stream with native buffers for clusters up to {@code capacity} bytes. */
    private record Context(MemorySegment stream, MemorySegment in, MemorySegment out, int capacity) {
    }

    private ZlibNative(SymbolLookup lib) throws Throwable {
        Linker linker = Linker.nativeLinker();
        deflateInit2 = linker.downcallHandle(lib.findOrThrow("deflateInit2_"), FunctionDescriptor.of(JAVA_INT,
                ADDRESS, JAVA_INT, JAVA_INT, JAVA_INT, JAVA_INT, JAVA_INT, ADDRESS, JAVA_INT));
        deflate = linker.downcallHandle(lib.findOrThrow("deflate"), FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_INT));
        deflateReset = linker.downcallHandle(lib.findOrThrow("deflateReset"), FunctionDescriptor.of(JAVA_INT, ADDRESS));
        deflateEnd = linker.downcallHandle(lib.findOrThrow("deflateEnd"), FunctionDescriptor.of(JAVA_INT, ADDRESS));
        MethodHandle zlibVersion = linker.downcallHandle(lib.findOrThrow("zlibVersion"), FunctionDescriptor.of(ADDRESS));
        // the library's own version string: deflateInit2_ only checks its first character
        version = ((MemorySegment) zlibVersion.invokeExact()).reinterpret(64);
    }

    private static ZlibNative load() {
        if (Boolean.getBoolean("blk.zlib.java")) {
            return null; // forced fallback (tests of the Java path)
        }
        try {
            ZlibNative z = new ZlibNative(SymbolLookup.libraryLookup("libz.so.1", Arena.global()));
            if (z.compress(new byte[4096], 4096, 4095) == null) { // fails here, not on the first image
                return null;
            }
            return z;
        } catch (Throwable e) { // no library, no native access, another platform: java.util.zip then
            return null;
        }
    }

    /** The binding, or null when the system has no usable zlib. */
    static ZlibNative get() {
        return INSTANCE;
    }

    /**
     * Deflates {@code src[0, len)} as qemu does; null when the result would not fit in {@code
     * limit} bytes (qemu then stores the cluster uncompressed).
     */
    byte[] compress(byte[] src, int len, int limit) {
        Context c = contexts.poll();
        try {
            if (c == null || c.capacity < Math.max(len, limit)) {
                if (c != null) { // too small for this cluster size: its zlib state is freed
                    int ignored = (int) deflateEnd.invokeExact(c.stream);
                    c = null;
                }
                c = newContext(Math.max(len, limit));
            } else if ((int) deflateReset.invokeExact(c.stream) != Z_OK) {
                throw new IllegalStateException("deflateReset failed");
            }
            MemorySegment.copy(src, 0, c.in, java.lang.foreign.ValueLayout.JAVA_BYTE, 0, len);
            c.stream.set(ADDRESS, NEXT_IN, c.in);
            c.stream.set(JAVA_INT, AVAIL_IN, len);
            c.stream.set(ADDRESS, NEXT_OUT, c.out);
            c.stream.set(JAVA_INT, AVAIL_OUT, limit);
            int ret = (int) deflate.invokeExact(c.stream, Z_FINISH);
            if (ret != Z_STREAM_END) {
                return null; // Z_OK or Z_BUF_ERROR: the output space ran out
            }
            int n = limit - c.stream.get(JAVA_INT, AVAIL_OUT);
            return c.out.asSlice(0, n).toArray(java.lang.foreign.ValueLayout.JAVA_BYTE);
        } catch (RuntimeException | Error e) {
            throw e;
        } catch (Throwable e) {
            throw new IllegalStateException(e);
        } finally {
            if (c != null) {
                contexts.offer(c);
            }
        }
    }

    private Context newContext(int capacity) throws Throwable {
        // lives as long as the pool keeps it; a few contexts per process (one per compressing thread)
        Arena arena = Arena.ofAuto();
        MemorySegment stream = arena.allocate(STREAM_SIZE, 8); // zeroed: default allocators
        int ret = (int) deflateInit2.invokeExact(stream, Z_DEFAULT_COMPRESSION, Z_DEFLATED, WINDOW_BITS, MEM_LEVEL,
                Z_DEFAULT_STRATEGY, version, STREAM_SIZE);
        if (ret != Z_OK) {
            throw new IllegalStateException("deflateInit2 failed: " + ret);
        }
        return new Context(stream, arena.allocate(capacity, 16), arena.allocate(capacity, 16), capacity);
    }
}
