package org.blockhaus.format.qcow2;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.blockhaus.api.BlockException;

/**
 * A bounded, least-recently-used cache of L2 tables. Dirty tables are written back on flush, or on
 * eviction through {@link Writer}, which first puts the refcount increases they depend on on disk.
 */
final class L2Cache {
    /** One L2 table (a cluster of 64-bit words; extended entries take two words). */
    static final class Table {
        final long offset;
        final long[] words;
        boolean dirty;

        Table(long offset, long[] words) {
            this.offset = offset;
            this.words = words;
        }
    }

    interface Writer {
        void writeBack(Table t) throws BlockException;
    }

    private final HostFile file;
    private final int clusterSize;
    private final int maxTables;
    private final Writer writer;
    private final LinkedHashMap<Long, Table> tables = new LinkedHashMap<>(16, 0.75f, true);

    L2Cache(HostFile file, int clusterSize, long cacheBytes, Writer writer) {
        this.file = file;
        this.clusterSize = clusterSize;
        this.maxTables = (int) Math.max(4, Math.min(1 << 20, cacheBytes / clusterSize));
        this.writer = writer;
    }

    Table get(long offset) throws BlockException {
        Table t = tables.get(offset);
        if (t != null) {
            return t;
        }
        if ((offset & (clusterSize - 1)) != 0) {
            throw Qcow2Header.corrupt("L2 table offset " + offset + " is not cluster aligned");
        }
        ByteBuffer b = file.read(offset, clusterSize, "L2 table");
        long[] words = new long[clusterSize / 8];
        b.asLongBuffer().get(words);
        t = new Table(offset, words);
        put(t);
        return t;
    }

    void put(Table t) throws BlockException {
        tables.put(t.offset, t);
        if (tables.size() > maxTables) {
            Iterator<Map.Entry<Long, Table>> it = tables.entrySet().iterator();
            Table eldest = it.next().getValue();
            if (eldest == t) {
                return;
            }
            if (eldest.dirty) {
                writer.writeBack(eldest);
            }
            tables.remove(eldest.offset);
        }
    }

    /** A fresh, empty table for a newly allocated cluster. */
    Table create(long offset) throws BlockException {
        Table t = new Table(offset, new long[clusterSize / 8]);
        t.dirty = true;
        put(t);
        return t;
    }

    List<Table> dirtyTables() {
        List<Table> out = new ArrayList<>();
        for (Table t : tables.values()) {
            if (t.dirty) {
                out.add(t);
            }
        }
        out.sort((a, b) -> Long.compare(a.offset, b.offset));
        return out;
    }

    void write(Table t) throws BlockException {
        ByteBuffer b = ByteBuffer.allocate(clusterSize);
        b.asLongBuffer().put(t.words);
        file.write(t.offset, b);
        t.dirty = false;
    }

    void clear() {
        tables.clear();
    }
}
