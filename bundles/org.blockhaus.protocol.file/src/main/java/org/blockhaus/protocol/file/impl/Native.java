package org.blockhaus.protocol.file.impl;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static java.lang.foreign.ValueLayout.JAVA_SHORT;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.StructLayout;
import java.lang.invoke.MethodHandle;
import java.lang.invoke.VarHandle;
import java.util.Locale;

/**
 * The Linux calls {@code FileChannel} lacks, bound with the FFM API: a raw descriptor of our own
 * ({@code open}), OFD locks ({@code fcntl}), {@code lseek SEEK_DATA/SEEK_HOLE}, {@code fallocate},
 * {@code fstat}, block-device {@code ioctl}s and {@code pread/pwrite} for O_DIRECT. Only glibc on
 * x86_64 and aarch64 is bound (struct layouts differ elsewhere); {@link #get()} returns null on
 * other systems or when the JVM denies native access, and callers fall back.
 */
final class Native {
    static final int O_RDONLY = 0;
    static final int O_RDWR = 2;
    static final int O_CLOEXEC = 0x80000;
    static final int O_DIRECT;

    static final int F_OFD_GETLK = 36;
    static final int F_OFD_SETLK = 37;
    static final short F_RDLCK = 0;
    static final short F_WRLCK = 1;
    static final short F_UNLCK = 2;

    static final int SEEK_SET = 0;
    static final int SEEK_END = 2;
    static final int SEEK_DATA = 3;
    static final int SEEK_HOLE = 4;

    static final int FALLOC_FL_KEEP_SIZE = 1;
    static final int FALLOC_FL_PUNCH_HOLE = 2;
    static final int FALLOC_FL_ZERO_RANGE = 16;

    static final long BLKGETSIZE64 = 0x80081272L;
    static final long BLKSSZGET = 0x1268L;
    static final long BLKPBSZGET = 0x127BL;

    static final int ENOENT = 2;
    static final int ENXIO = 6;
    static final int EACCES = 13;
    static final int EINVAL = 22;
    static final int ENOSPC = 28;
    static final int ENOSYS = 38;
    static final int EOPNOTSUPP = 95;

    static final int S_IFMT = 0xF000;
    static final int S_IFREG = 0x8000;
    static final int S_IFBLK = 0x6000;
    static final int S_IFCHR = 0x2000;
    static final int S_IFDIR = 0x4000;

    private static final boolean X86_64;
    private static final Native INSTANCE;
    private static final String UNAVAILABLE;

    static {
        String arch = System.getProperty("os.arch", "").toLowerCase(Locale.ROOT);
        X86_64 = arch.equals("amd64") || arch.equals("x86_64");
        O_DIRECT = X86_64 ? 0x4000 : 0x10000;
        Native n = null;
        String why = null;
        if (!System.getProperty("os.name", "").toLowerCase(Locale.ROOT).contains("linux")) {
            why = "not Linux";
        } else if (!X86_64 && !arch.equals("aarch64")) {
            why = "no bindings for " + arch;
        } else {
            try {
                n = new Native();
            } catch (Throwable t) { // IllegalCallerException when native access is denied, or a missing symbol
                why = t.toString();
            }
        }
        INSTANCE = n;
        UNAVAILABLE = why;
    }

    /** The bindings, or null when native calls cannot be made here. */
    static Native get() {
        return INSTANCE;
    }

    /** Why {@link #get()} is null. */
    static String unavailableReason() {
        return UNAVAILABLE;
    }

    /** A failed system call, with its errno and glibc's text for it (what QEMU prints). */
    static final class Errno extends Exception {
        private static final long serialVersionUID = 1L;
        final int errno;

        Errno(int errno, String text) {
            super(text);
            this.errno = errno;
        }
    }

    /** The fields of struct stat we use. */
    record Stat(int mode, long size, long blocks, long blockSize) {
        int type() {
            return mode & S_IFMT;
        }
    }

    private static final StructLayout CAPTURE = Linker.Option.captureStateLayout();
    private static final VarHandle ERRNO = CAPTURE.varHandle(MemoryLayout.PathElement.groupElement("errno"));
    private static final long STAT_SIZE = 144;
    private static final long FLOCK_SIZE = 32;

    private final MethodHandle open;
    private final MethodHandle close;
    private final MethodHandle fcntl;
    private final MethodHandle lseek;
    private final MethodHandle fallocate;
    private final MethodHandle fstat;
    private final boolean fstatIsXstat;
    private final MethodHandle ioctl;
    private final MethodHandle ftruncate;
    private final MethodHandle pread;
    private final MethodHandle pwrite;
    private final MethodHandle fdatasync;
    private final MethodHandle strerror;

    private Native() {
        Linker linker = Linker.nativeLinker();
        Linker.Option errno = Linker.Option.captureCallState("errno");
        open = bind(linker, "open", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_INT, JAVA_INT), errno,
                Linker.Option.firstVariadicArg(2));
        close = bind(linker, "close", FunctionDescriptor.of(JAVA_INT, JAVA_INT), errno);
        fcntl = bind(linker, "fcntl", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, ADDRESS), errno,
                Linker.Option.firstVariadicArg(2));
        lseek = bind(linker, "lseek", FunctionDescriptor.of(JAVA_LONG, JAVA_INT, JAVA_LONG, JAVA_INT), errno);
        fallocate = bind(linker, "fallocate",
                FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, JAVA_LONG, JAVA_LONG), errno);
        MethodHandle fs;
        boolean xstat = false;
        if (linker.defaultLookup().find("fstat").isPresent()) {
            fs = bind(linker, "fstat", FunctionDescriptor.of(JAVA_INT, JAVA_INT, ADDRESS), errno);
        } else { // glibc before 2.33 exports only the versioned wrapper
            fs = bind(linker, "__fxstat", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, ADDRESS), errno);
            xstat = true;
        }
        fstat = fs;
        fstatIsXstat = xstat;
        ioctl = bind(linker, "ioctl", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_LONG, ADDRESS), errno,
                Linker.Option.firstVariadicArg(2));
        ftruncate = bind(linker, "ftruncate", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_LONG), errno);
        pread = bind(linker, "pread", FunctionDescriptor.of(JAVA_LONG, JAVA_INT, ADDRESS, JAVA_LONG, JAVA_LONG),
                errno);
        pwrite = bind(linker, "pwrite", FunctionDescriptor.of(JAVA_LONG, JAVA_INT, ADDRESS, JAVA_LONG, JAVA_LONG),
                errno);
        fdatasync = bind(linker, "fdatasync", FunctionDescriptor.of(JAVA_INT, JAVA_INT), errno);
        strerror = linker.downcallHandle(linker.defaultLookup().find("strerror").orElseThrow(),
                FunctionDescriptor.of(ADDRESS, JAVA_INT));
    }

    private static MethodHandle bind(Linker linker, String name, FunctionDescriptor fd, Linker.Option... options) {
        MemorySegment symbol = linker.defaultLookup().find(name)
                .orElseThrow(() -> new UnsatisfiedLinkError("no symbol " + name + " in the C library"));
        return linker.downcallHandle(symbol, fd, options);
    }

    private Errno fail(MemorySegment state) {
        int e = (int) ERRNO.get(state, 0L);
        return new Errno(e, strerror(e));
    }

    String strerror(int errno) {
        try {
            MemorySegment s = (MemorySegment) strerror.invokeExact(errno);
            return s.reinterpret(1024).getString(0);
        } catch (Throwable t) {
            return "errno " + errno;
        }
    }

    int open(String path, int flags) throws Errno {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment st = a.allocate(CAPTURE);
            int fd = (int) open.invokeExact(st, a.allocateFrom(path), flags, 0);
            if (fd < 0) {
                throw fail(st);
            }
            return fd;
        } catch (Errno e) {
            throw e;
        } catch (Throwable t) {
            throw new IllegalStateException(t);
        }
    }

    void close(int fd) throws Errno {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment st = a.allocate(CAPTURE);
            if ((int) close.invokeExact(st, fd) < 0) {
                throw fail(st);
            }
        } catch (Errno e) {
            throw e;
        } catch (Throwable t) {
            throw new IllegalStateException(t);
        }
    }

    /** fcntl(F_OFD_SETLK) on {@code len} bytes at {@code start}: F_RDLCK, F_WRLCK or F_UNLCK. */
    void setOfdLock(int fd, short type, long start, long len) throws Errno {
        flock(fd, F_OFD_SETLK, type, start, len);
    }

    /** fcntl(F_OFD_GETLK): the type of a lock that would block {@code type}, or F_UNLCK if none. */
    short testOfdLock(int fd, short type, long start, long len) throws Errno {
        return flock(fd, F_OFD_GETLK, type, start, len);
    }

    private short flock(int fd, int cmd, short type, long start, long len) throws Errno {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment st = a.allocate(CAPTURE);
            MemorySegment fl = a.allocate(FLOCK_SIZE, 8); // zeroed: l_pid must be 0 for OFD locks
            fl.set(JAVA_SHORT, 0, type);
            fl.set(JAVA_SHORT, 2, (short) SEEK_SET);
            fl.set(JAVA_LONG, 8, start);
            fl.set(JAVA_LONG, 16, len);
            if ((int) fcntl.invokeExact(st, fd, cmd, fl) < 0) {
                throw fail(st);
            }
            return fl.get(JAVA_SHORT, 0);
        } catch (Errno e) {
            throw e;
        } catch (Throwable t) {
            throw new IllegalStateException(t);
        }
    }

    long lseek(int fd, long offset, int whence) throws Errno {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment st = a.allocate(CAPTURE);
            long r = (long) lseek.invokeExact(st, fd, offset, whence);
            if (r < 0) {
                throw fail(st);
            }
            return r;
        } catch (Errno e) {
            throw e;
        } catch (Throwable t) {
            throw new IllegalStateException(t);
        }
    }

    void fallocate(int fd, int mode, long offset, long len) throws Errno {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment st = a.allocate(CAPTURE);
            if ((int) fallocate.invokeExact(st, fd, mode, offset, len) < 0) {
                throw fail(st);
            }
        } catch (Errno e) {
            throw e;
        } catch (Throwable t) {
            throw new IllegalStateException(t);
        }
    }

    void ftruncate(int fd, long len) throws Errno {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment st = a.allocate(CAPTURE);
            if ((int) ftruncate.invokeExact(st, fd, len) < 0) {
                throw fail(st);
            }
        } catch (Errno e) {
            throw e;
        } catch (Throwable t) {
            throw new IllegalStateException(t);
        }
    }

    void fdatasync(int fd) throws Errno {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment st = a.allocate(CAPTURE);
            if ((int) fdatasync.invokeExact(st, fd) < 0) {
                throw fail(st);
            }
        } catch (Errno e) {
            throw e;
        } catch (Throwable t) {
            throw new IllegalStateException(t);
        }
    }

    Stat fstat(int fd) throws Errno {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment st = a.allocate(CAPTURE);
            MemorySegment buf = a.allocate(STAT_SIZE, 8);
            int r = fstatIsXstat ? (int) fstat.invokeExact(st, 1, fd, buf) : (int) fstat.invokeExact(st, fd, buf);
            if (r < 0) {
                throw fail(st);
            }
            int mode = buf.get(JAVA_INT, X86_64 ? 24 : 16);
            long blockSize = X86_64 ? buf.get(JAVA_LONG, 56) : buf.get(JAVA_INT, 56);
            return new Stat(mode, buf.get(JAVA_LONG, 48), buf.get(JAVA_LONG, 64), blockSize);
        } catch (Errno e) {
            throw e;
        } catch (Throwable t) {
            throw new IllegalStateException(t);
        }
    }

    /** An ioctl that fills a 64-bit value (BLKGETSIZE64). */
    long ioctlLong(int fd, long request) throws Errno {
        return ioctl(fd, request, true);
    }

    /** An ioctl that fills an int (BLKSSZGET, BLKPBSZGET). */
    int ioctlInt(int fd, long request) throws Errno {
        return (int) ioctl(fd, request, false);
    }

    private long ioctl(int fd, long request, boolean wide) throws Errno {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment st = a.allocate(CAPTURE);
            MemorySegment out = a.allocate(8, 8);
            if ((int) ioctl.invokeExact(st, fd, request, out) < 0) {
                throw fail(st);
            }
            return wide ? out.get(JAVA_LONG, 0) : out.get(JAVA_INT, 0);
        } catch (Errno e) {
            throw e;
        } catch (Throwable t) {
            throw new IllegalStateException(t);
        }
    }

    /** pread into native memory; returns bytes read (0 at end of file). */
    long pread(int fd, MemorySegment buf, long len, long offset) throws Errno {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment st = a.allocate(CAPTURE);
            long r = (long) pread.invokeExact(st, fd, buf, len, offset);
            if (r < 0) {
                throw fail(st);
            }
            return r;
        } catch (Errno e) {
            throw e;
        } catch (Throwable t) {
            throw new IllegalStateException(t);
        }
    }

    long pwrite(int fd, MemorySegment buf, long len, long offset) throws Errno {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment st = a.allocate(CAPTURE);
            long r = (long) pwrite.invokeExact(st, fd, buf, len, offset);
            if (r < 0) {
                throw fail(st);
            }
            return r;
        } catch (Errno e) {
            throw e;
        } catch (Throwable t) {
            throw new IllegalStateException(t);
        }
    }
}
