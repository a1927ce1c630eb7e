package org.blockhaus.format.qcow2;

import java.io.RandomAccessFile;
import java.nio.file.Path;

/** Byte surgery on image files, to build broken and hostile images from good ones. */
final class Patch {
    private Patch() {
    }

    static long readLong(Path p, long off) throws Exception {
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "r")) {
            f.seek(off);
            return f.readLong();
        }
    }

    static int readInt(Path p, long off) throws Exception {
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "r")) {
            f.seek(off);
            return f.readInt();
        }
    }

    static void writeLong(Path p, long off, long v) throws Exception {
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.seek(off);
            f.writeLong(v);
        }
    }

    static void writeInt(Path p, long off, int v) throws Exception {
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.seek(off);
            f.writeInt(v);
        }
    }

    static void writeShort(Path p, long off, int v) throws Exception {
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.seek(off);
            f.writeShort(v);
        }
    }

    static void truncate(Path p, long len) throws Exception {
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.setLength(len);
        }
    }

    /** Offset of the L2 table behind active L1 entry {@code i}. */
    static long l2Offset(Path p, int i) throws Exception {
        return readLong(p, readLong(p, 40) + 8L * i) & 0x00ff_ffff_ffff_fe00L;
    }

    /** Offset of refcount block {@code i}. */
    static long refcountBlock(Path p, int i) throws Exception {
        return readLong(p, readLong(p, 48) + 8L * i);
    }
}
