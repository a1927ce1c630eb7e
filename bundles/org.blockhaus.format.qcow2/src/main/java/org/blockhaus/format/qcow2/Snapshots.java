package org.blockhaus.format.qcow2;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import org.blockhaus.api.BlockException;

/**
 * The internal snapshot table (spec: "Snapshots"): variable-length entries, each with its own L1
 * table. Parsing is bounded by the header's count and the file size.
 */
final class Snapshots {
    /**
     * One snapshot table entry; {@code extraSize} is the size of its extra data on disk (entries we
     * write always carry {@link #EXTRA} bytes).
     */
    record Entry(long l1TableOffset, int l1Size, String id, String name, long dateSec, long dateNsec,
            long vmClockNsec, long vmStateSize, long diskSize, long icount, int extraSize) {
        Entry(long l1TableOffset, int l1Size, String id, String name, long dateSec, long dateNsec,
                long vmClockNsec, long vmStateSize, long diskSize, long icount) {
            this(l1TableOffset, l1Size, id, name, dateSec, dateNsec, vmClockNsec, vmStateSize, diskSize, icount,
                    EXTRA);
        }

        /**
         * Version 3 requires the large VM state size and the disk size in the extra data (spec:
         * "Snapshots"); qemu-img check calls an entry without them incomplete. Such an entry is
         * still used, with the image's size as its disk size, and a rewrite of the table completes it.
         */
        boolean incomplete(int version) {
            return version >= 3 && extraSize < MIN_EXTRA_V3;
        }
    }

    /** Extra data a version 3 entry must have: large VM state size and disk size. */
    static final int MIN_EXTRA_V3 = 16;

    /** Largest snapshot table qemu accepts. */
    static final long MAX_TABLE_BYTES = 64L << 20;
    static final int MAX_EXTRA = 1024;

    private Snapshots() {
    }

    /** Reads the table; returns the entries and, through {@code tableBytes[0]}, its size in bytes. */
    static List<Entry> read(HostFile file, Qcow2Header h, long[] tableBytes) throws BlockException {
        return read(file, h, tableBytes, false);
    }

    /**
     * As {@link #read(HostFile, Qcow2Header, long[])}; with {@code pastEndAsZero} (opens for check
     * only) the table may reach past the end of the file, which reads as zeroes there, as qemu-img
     * check reads it (such entries are empty and incomplete; check reports them). The offset must
     * have been validated ({@link Qcow2Header#validTableOffset}).
     */
    static List<Entry> read(HostFile file, Qcow2Header h, long[] tableBytes, boolean pastEndAsZero)
            throws BlockException {
        List<Entry> out = new ArrayList<>();
        long pos = h.snapshotsOffset();
        long total = 0;
        for (int i = 0; i < h.nbSnapshots(); i++) {
            ByteBuffer fixed = read(file, pos, 40, "Snapshot table entry " + i, pastEndAsZero);
            long l1Offset = fixed.getLong(0);
            long l1Size = Integer.toUnsignedLong(fixed.getInt(8));
            int idLen = Short.toUnsignedInt(fixed.getShort(12));
            int nameLen = Short.toUnsignedInt(fixed.getShort(14));
            long dateSec = Integer.toUnsignedLong(fixed.getInt(16));
            long dateNsec = Integer.toUnsignedLong(fixed.getInt(20));
            long vmClock = fixed.getLong(24);
            long vmState = Integer.toUnsignedLong(fixed.getInt(32));
            long extraLen = Integer.toUnsignedLong(fixed.getInt(36));
            if (extraLen > MAX_EXTRA) {
                throw Qcow2Header.corrupt("Snapshot " + i + " has " + extraLen + " bytes of extra data (at most "
                        + MAX_EXTRA + ")");
            }
            long entryLen = 40 + extraLen + idLen + nameLen;
            entryLen = (entryLen + 7) & ~7L;
            total += entryLen;
            if (total > MAX_TABLE_BYTES) {
                throw Qcow2Header.corrupt("Snapshot table is larger than " + MAX_TABLE_BYTES + " bytes");
            }
            ByteBuffer rest = read(file, pos + 40, (int) (extraLen + idLen + nameLen), "Snapshot table entry " + i,
                    pastEndAsZero);
            long diskSize = h.size();
            long icount = -1;
            if (extraLen >= 8) {
                vmState = rest.getLong(0);
            }
            if (extraLen >= 16) {
                diskSize = rest.getLong(8);
            }
            if (extraLen >= 24) {
                icount = rest.getLong(16);
            }
            byte[] id = new byte[idLen];
            rest.get((int) extraLen, id);
            byte[] name = new byte[nameLen];
            rest.get((int) extraLen + idLen, name);
            if (l1Size * 8 > Qcow2Header.MAX_L1_BYTES) {
                throw Qcow2Header.corrupt("Snapshot " + i + " L1 table too large: " + l1Size + " entries");
            }
            if (l1Size > 0) {
                Qcow2Header.checkTable("Snapshot " + i + " L1 table", l1Offset, l1Size * 8, h.clusterSize(),
                        file.size());
            }
            out.add(new Entry(l1Offset, (int) l1Size, new String(id, StandardCharsets.UTF_8),
                    new String(name, StandardCharsets.UTF_8), dateSec, dateNsec, vmClock, vmState, diskSize, icount,
                    (int) extraLen));
            pos += entryLen;
        }
        tableBytes[0] = total;
        return out;
    }

    private static ByteBuffer read(HostFile file, long offset, int len, String what, boolean pastEndAsZero)
            throws BlockException {
        if (!pastEndAsZero) {
            return file.read(offset, len, what);
        }
        if (offset > Long.MAX_VALUE - len) {
            throw Qcow2Header.corrupt(what + " at offset " + Long.toUnsignedString(offset) + " overflows");
        }
        ByteBuffer b = ByteBuffer.allocate(len);
        file.readClamped(offset, b);
        return b.clear();
    }

    /** Size in bytes of the table the header describes. */
    static long tableBytes(HostFile file, Qcow2Header h) throws BlockException {
        return tableBytes(file, h, false);
    }

    /** As {@link #tableBytes(HostFile, Qcow2Header)}, reading past the end of the file as zeroes (opens for check). */
    static long tableBytes(HostFile file, Qcow2Header h, boolean pastEndAsZero) throws BlockException {
        long[] bytes = new long[1];
        read(file, h, bytes, pastEndAsZero);
        return bytes[0];
    }

    /** Size of the extra data we write: large VM state size, disk size, icount (as qemu 7.2). */
    static final int EXTRA = 24;

    /** Serializes a whole snapshot table, entries padded to 8 bytes. */
    static byte[] serialize(List<Entry> entries) {
        java.io.ByteArrayOutputStream out = new java.io.ByteArrayOutputStream();
        for (Entry e : entries) {
            byte[] id = e.id().getBytes(StandardCharsets.UTF_8);
            byte[] name = e.name().getBytes(StandardCharsets.UTF_8);
            int len = 40 + EXTRA + id.length + name.length;
            ByteBuffer b = ByteBuffer.allocate((len + 7) & ~7);
            b.putLong(e.l1TableOffset()).putInt(e.l1Size()).putShort((short) id.length).putShort((short) name.length)
                    .putInt((int) e.dateSec()).putInt((int) e.dateNsec()).putLong(e.vmClockNsec())
                    .putInt((int) Math.min(e.vmStateSize(), 0xffffffffL)).putInt(EXTRA)
                    .putLong(e.vmStateSize()).putLong(e.diskSize()).putLong(e.icount()).put(id).put(name);
            out.writeBytes(b.array());
        }
        return out.toByteArray();
    }

    /** Finds a snapshot by ID first, then by name, as qemu-img does. */
    static int find(List<Entry> entries, String nameOrId) {
        for (int i = 0; i < entries.size(); i++) {
            if (entries.get(i).id().equals(nameOrId)) {
                return i;
            }
        }
        for (int i = 0; i < entries.size(); i++) {
            if (entries.get(i).name().equals(nameOrId)) {
                return i;
            }
        }
        return -1;
    }

    /** The next unique ID: one more than the largest numeric ID. */
    static String nextId(List<Entry> entries) {
        long max = 0;
        for (Entry e : entries) {
            try {
                max = Math.max(max, Long.parseLong(e.id()));
            } catch (NumberFormatException ignored) {
                // non-numeric IDs do not take part in numbering
            }
        }
        return Long.toString(max + 1);
    }
}
