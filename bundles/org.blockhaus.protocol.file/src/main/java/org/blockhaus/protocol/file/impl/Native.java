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

    private final Downcall open;
    private final Downcall close;
    private final Downcall fcntl;
    private final Downcall lseek;
    private final Downcall fallocate;
    private final Downcall fstat;
    private final boolean fstatIsXstat;
    private final Downcall ioctl;
    private final Downcall ftruncate;
    private final Downcall pread;
    private final Downcall pwrite;
    private final Downcall fdatasync;
    private final Downcall strerror;
    private final Downcall fstatfs;

    /**
     * One C function: its symbol is looked up at once (a missing one makes {@link #get()} null),
     * its method handle is made on first use. Making a downcall handle costs milliseconds (code is
     * generated for each), 14 of them were a noticeable part of every command's start-up, and most
     * commands call four or five.
     */
    private static final class Downcall {
        private final MemorySegment symbol;
        private final FunctionDescriptor descriptor;
        private final Linker.Option[] options;
        private volatile MethodHandle handle;

        Downcall(String name, FunctionDescriptor descriptor, Linker.Option... options) {
            this.symbol = Linker.nativeLinker().defaultLookup().find(name)
                    .orElseThrow(() -> new UnsatisfiedLinkError("no symbol " + name + " in the C library"));
            this.descriptor = descriptor;
            this.options = options;
        }

        MethodHandle get() {
            MethodHandle h = handle;
            if (h == null) { // two threads may both make it: harmless
                h = Linker.nativeLinker().downcallHandle(symbol, descriptor, options);
                handle = h;
            }
            return h;
        }
    }

    private Native() {
        Linker.Option errno = Linker.Option.captureCallState("errno");
        open = new Downcall("open", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_INT, JAVA_INT), errno,
                Linker.Option.firstVariadicArg(2));
        close = new Downcall("close", FunctionDescriptor.of(JAVA_INT, JAVA_INT), errno);
        fcntl = new Downcall("fcntl", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, ADDRESS), errno,
                Linker.Option.firstVariadicArg(2));
        lseek = new Downcall("lseek", FunctionDescriptor.of(JAVA_LONG, JAVA_INT, JAVA_LONG, JAVA_INT), errno);
        fallocate = new Downcall("fallocate",
                FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, JAVA_LONG, JAVA_LONG), errno);
        Downcall fs;
        boolean xstat = false;
        if (Linker.nativeLinker().defaultLookup().find("fstat").isPresent()) {
            fs = new Downcall("fstat", FunctionDescriptor.of(JAVA_INT, JAVA_INT, ADDRESS), errno);
        } else { // glibc before 2.33 exports only the versioned wrapper
            fs = new Downcall("__fxstat", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, ADDRESS), errno);
            xstat = true;
        }
        fstat = fs;
        fstatIsXstat = xstat;
        ioctl = new Downcall("ioctl", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_LONG, ADDRESS), errno,
                Linker.Option.firstVariadicArg(2));
        ftruncate = new Downcall("ftruncate", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_LONG), errno);
        pread = new Downcall("pread", FunctionDescriptor.of(JAVA_LONG, JAVA_INT, ADDRESS, JAVA_LONG, JAVA_LONG),
                errno);
        pwrite = new Downcall("pwrite", FunctionDescriptor.of(JAVA_LONG, JAVA_INT, ADDRESS, JAVA_LONG, JAVA_LONG),
                errno);
        fdatasync = new Downcall("fdatasync", FunctionDescriptor.of(JAVA_INT, JAVA_INT), errno);
        strerror = new Downcall("strerror", FunctionDescriptor.of(ADDRESS, JAVA_INT));
        fstatfs = new Downcall("fstatfs", FunctionDescriptor.of(JAVA_INT, JAVA_INT, ADDRESS), errno);
        open.get(); // every user opens a file first: fail here, not there, if native calls cannot be made
    }

    private Errno fail(MemorySegment state) {
        int e = (int) ERRNO.get(state, 0L);
        return new Errno(e, strerror(e));
    }

    String strerror(int errno) {
        try {
            MemorySegment s = (MemorySegment) strerror.get().invokeExact(errno);
            return s.reinterpret(1024).getString(0);
        } catch (Throwable t) {
            return "errno " + errno;
        }
    }

    int open(String path, int flags) throws Errno {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment st = a.allocate(CAPTURE);
            int fd = (int) open.get().invokeExact(st, a.allocateFrom(path), flags, 0);
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
            if ((int) close.get().invokeExact(st, fd) < 0) {
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
            if ((int) fcntl.get().invokeExact(st, fd, cmd, fl) < 0) {
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
            long r = (long) lseek.get().invokeExact(st, fd, offset, whence);
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
            if ((int) fallocate.get().invokeExact(st, fd, mode, offset, len) < 0) {
                throw fail(st);
            }
        } catch (Errno e) {
            throw e;
        } catch (Throwable t) {
            throw new IllegalStateException(t);
        }
    }

    /** ext4's f_type in struct statfs. */
    static final long EXT4_SUPER_MAGIC = 0xEF53;

    /**
     * The file system type ({@code f_type} of {@code fstatfs}): the first field of struct statfs,
     * a C long on the 64-bit Linux ABIs we run on; 256 bytes covers the whole struct (120 there).
     */
    long fileSystemType(int fd) throws Errno {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment st = a.allocate(CAPTURE);
            MemorySegment buf = a.allocate(256, 8);
            if ((int) fstatfs.get().invokeExact(st, fd, buf) < 0) {
                throw fail(st);
            }
            return buf.get(JAVA_LONG, 0);
        } catch (Errno e) {
            throw e;
        } catch (Throwable t) {
            throw new IllegalStateException(t);
        }
    }

    void ftruncate(int fd, long len) throws Errno {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment st = a.allocate(CAPTURE);
            if ((int) ftruncate.get().invokeExact(st, fd, len) < 0) {
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
            if ((int) fdatasync.get().invokeExact(st, fd) < 0) {
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
            MethodHandle h = fstat.get();
            int r = fstatIsXstat ? (int) h.invokeExact(st, 1, fd, buf) : (int) h.invokeExact(st, fd, buf);
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
            if ((int) ioctl.get().invokeExact(st, fd, request, out) < 0) {
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
            long r = (long) pread.get().invokeExact(st, fd, buf, len, offset);
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
            long r = (long) pwrite.get().invokeExact(st, fd, buf, len, offset);
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
