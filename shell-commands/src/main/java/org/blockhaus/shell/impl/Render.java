package org.blockhaus.shell.impl;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.blockhaus.api.DriverInfo;
import org.blockhaus.api.Sizes;
import org.blockhaus.shell.impl.Results.Compare;
import org.blockhaus.shell.impl.Results.Converted;
import org.blockhaus.shell.impl.Results.Created;
import org.blockhaus.shell.impl.Results.Drivers;
import org.blockhaus.shell.impl.Results.Info;
import org.blockhaus.shell.impl.Results.MapEntry;
import org.blockhaus.shell.impl.Results.MapResult;
import org.blockhaus.shell.impl.Results.Output;
import org.blockhaus.shell.impl.Results.Text;

/** The one renderer: qemu-img's human text, line for line, and its JSON, field for field. */
final class Render {
    /** qemu-img's order of the top-level info members (its QDict happens to print them so). */
    private static final List<String> INFO_ORDER = List.of("snapshots", "backing-filename-format", "virtual-size",
            "filename", "cluster-size", "format", "actual-size", "format-specific", "encrypted",
            "full-backing-filename", "backing-filename", "dirty-flag");

    private Render() {
    }

    static String render(Object result) {
        return switch (result) {
            case Info i -> info(i);
            case MapResult m -> map(m);
            case Compare c -> (c.lines().isEmpty() ? "" : String.join("\n", c.lines()) + "\n")
                    + (c.progress() ? "\n" : "");
            case Created c -> c.quiet() ? "" : "Formatting '" + c.filename() + "', " + c.summary() + "\n";
            case Converted c -> "";
            case Drivers d -> drivers(d);
            case Text t -> t.text();
            case Results.Check c -> check(c);
            case Results.Quiet q -> "";
            case Results.Measure m -> measure(m);
            case Results.Snapshots sn -> snapshots(sn);
            case Results.Bench b -> b.header() + "\n" + String.format(java.util.Locale.ROOT,
                    "Run completed in %.3f seconds.%n", b.seconds());
            default -> String.valueOf(result);
        };
    }

    static Map<String, Object> ordered(Map<String, Object> info) {
        Map<String, Object> m = new LinkedHashMap<>();
        for (String k : INFO_ORDER) {
            if (info.containsKey(k)) {
                m.put(k, info.get(k));
            }
        }
        info.forEach((k, v) -> {
            if (!m.containsKey(k)) {
                m.put(k, v);
            }
        });
        return m;
    }

    private static String info(Info info) {
        if (info.output() == Output.JSON) {
            if (info.chain()) {
                List<Object> l = new ArrayList<>();
                info.images().forEach(i -> l.add(ordered(i)));
                return Json.pretty(l) + "\n";
            }
            return Json.pretty(ordered(info.images().get(0))) + "\n";
        }
        StringBuilder sb = new StringBuilder();
        for (int n = 0; n < info.images().size(); n++) {
            if (n > 0) {
                sb.append('\n');
            }
            humanInfo(sb, info.images().get(n));
        }
        return sb.toString();
    }

    @SuppressWarnings("unchecked")
    private static void humanInfo(StringBuilder sb, Map<String, Object> i) {
        sb.append("image: ").append(i.get("filename")).append('\n');
        sb.append("file format: ").append(i.get("format")).append('\n');
        long vsize = ((Number) i.get("virtual-size")).longValue();
        sb.append("virtual size: ").append(Sizes.human(vsize)).append(" (").append(vsize).append(" bytes)\n");
        Object actual = i.get("actual-size");
        sb.append("disk size: ").append(actual == null ? "unavailable" : Sizes.human(((Number) actual).longValue()))
                .append('\n');
        if (i.containsKey("cluster-size")) {
            sb.append("cluster_size: ").append(i.get("cluster-size")).append('\n');
        }
        if (Boolean.TRUE.equals(i.get("encrypted"))) {
            sb.append("encrypted: yes\n");
        }
        if (i.containsKey("backing-filename")) {
            sb.append("backing file: ").append(i.get("backing-filename"));
            Object full = i.get("full-backing-filename");
            if (full != null && !full.equals(i.get("backing-filename"))) {
                sb.append(" (actual path: ").append(full).append(')');
            }
            sb.append('\n');
        }
        if (i.containsKey("backing-filename-format")) {
            sb.append("backing file format: ").append(i.get("backing-filename-format")).append('\n');
        }
        if (i.get("snapshots") instanceof List<?> snaps && !snaps.isEmpty()) {
            sb.append("Snapshot list:\n");
            sb.append(SnapshotLine.header()).append('\n');
            for (Object o : snaps) {
                Map<String, Object> s = (Map<String, Object>) o;
                sb.append(SnapshotLine.format(s)).append('\n');
            }
        }
        if (i.get("format-specific") instanceof Map<?, ?> fs && fs.get("data") instanceof Map<?, ?> data) {
            sb.append("Format specific information:\n");
            tree(sb, (Map<String, Object>) data, 1);
        }
    }

    /** qemu's human rendering of nested format-specific data (dashes shown as spaces). */
    @SuppressWarnings("unchecked")
    private static void tree(StringBuilder sb, Map<String, Object> m, int indent) {
        for (Map.Entry<String, Object> e : m.entrySet()) {
            String key = e.getKey().replace('-', ' ');
            Object v = e.getValue();
            sb.append("    ".repeat(indent)).append(key).append(':');
            if (v instanceof Map<?, ?> sub) {
                sb.append('\n');
                tree(sb, (Map<String, Object>) sub, indent + 1);
            } else if (v instanceof List<?> list) {
                sb.append('\n');
                for (int n = 0; n < list.size(); n++) {
                    sb.append("    ".repeat(indent + 1)).append('[').append(n).append("]:");
                    if (list.get(n) instanceof Map<?, ?> item) {
                        sb.append('\n');
                        tree(sb, (Map<String, Object>) item, indent + 2);
                    } else {
                        sb.append(' ').append(list.get(n)).append('\n'); // scalars stay on the line, as qemu's
                    }
                }
            } else {
                sb.append(' ').append(v).append('\n');
            }
        }
    }

    private static String map(MapResult m) {
        StringBuilder sb = new StringBuilder();
        if (m.output() == Output.JSON) {
            sb.append('[');
            for (int n = 0; n < m.entries().size(); n++) {
                MapEntry e = m.entries().get(n);
                if (n > 0) {
                    sb.append(",\n");
                }
                sb.append("{ \"start\": ").append(e.start()).append(", \"length\": ").append(e.length())
                        .append(", \"depth\": ").append(e.depth()).append(", \"present\": ").append(e.present())
                        .append(", \"zero\": ").append(e.zero()).append(", \"data\": ").append(e.data());
                if (e.offset() >= 0) {
                    sb.append(", \"offset\": ").append(e.offset());
                }
                sb.append('}');
            }
            return sb.append("]\n").toString();
        }
        sb.append(String.format("%-16s%-16s%-16s%s%n", "Offset", "Length", "Mapped to", "File"));
        for (MapEntry e : m.entries()) {
            // the table lists where data lives; ranges that read as zeroes are left out
            if (e.data() && !e.zero() && e.offset() >= 0) {
                sb.append(String.format("%-16s%-16s%-16s%s%n", hex(e.start()), hex(e.length()), hex(e.offset()),
                        e.file()));
            }
        }
        return sb.toString();
    }

    /** C's %#x: "0x" before every value but zero. */
    private static String hex(long v) {
        return v == 0 ? "0" : "0x" + Long.toHexString(v);
    }

    private static String drivers(Drivers d) {
        StringBuilder sb = new StringBuilder();
        sb.append(String.format("%-14s %-9s %-7s %-10s %s%n", "DRIVER", "KIND", "CREATE", "STATE", "BUNDLE"));
        for (DriverInfo i : d.drivers()) {
            sb.append(String.format("%-14s %-9s %-7s %-10s %s%n", i.name(), i.kind(), i.canCreate() ? "yes" : "no",
                    i.state(), i.bundle()));
        }
        return sb.toString();
    }

    private static String measure(Results.Measure m) {
        if (m.output() == Output.JSON) {
            Map<String, Object> j = new LinkedHashMap<>();
            if (m.result().bitmaps() >= 0) {
                j.put("bitmaps", m.result().bitmaps());
            }
            j.put("required", m.result().required());
            j.put("fully-allocated", m.result().fullyAllocated());
            return Json.pretty(j) + "\n";
        }
        StringBuilder sb = new StringBuilder();
        sb.append("required size: ").append(m.result().required()).append('\n');
        sb.append("fully allocated size: ").append(m.result().fullyAllocated()).append('\n');
        if (m.result().bitmaps() >= 0) {
            sb.append("bitmaps size: ").append(m.result().bitmaps()).append('\n');
        }
        return sb.toString();
    }

    /** qemu-img check's report; JSON members in qemu-img's order, counters only when non-zero. */
    private static String check(Results.Check c) {
        org.blockhaus.api.spi.CheckResult r = c.result();
        if (c.output() == Output.JSON) {
            Map<String, Object> j = new LinkedHashMap<>();
            j.put("image-end-offset", r.imageEndOffset());
            if (r.compressedClusters() > 0) {
                j.put("compressed-clusters", r.compressedClusters());
            }
            j.put("total-clusters", r.totalClusters());
            if (r.corruptions() > 0) {
                j.put("corruptions", r.corruptions());
            }
            j.put("check-errors", r.checkErrors());
            if (r.leaks() > 0) {
                j.put("leaks", r.leaks());
            }
            if (r.leaksFixed() > 0) {
                j.put("leaks-fixed", r.leaksFixed());
            }
            if (r.corruptionsFixed() > 0) {
                j.put("corruptions-fixed", r.corruptionsFixed());
            }
            j.put("allocated-clusters", r.allocatedClusters());
            j.put("filename", c.filename());
            j.put("format", c.format());
            if (r.fragmentedClusters() > 0) {
                j.put("fragmented-clusters", r.fragmentedClusters());
            }
            return Json.pretty(j) + "\n";
        }
        StringBuilder sb = new StringBuilder();
        if (r.leaksFixed() > 0 || r.corruptionsFixed() > 0) {
            sb.append("The following inconsistencies were found and repaired:\n\n");
            sb.append("    ").append(r.leaksFixed()).append(" leaked clusters\n");
            sb.append("    ").append(r.corruptionsFixed()).append(" corruptions\n\n");
            sb.append("Double checking the fixed image now...\n");
        }
        if (r.corruptions() == 0 && r.leaks() == 0 && r.checkErrors() == 0) {
            sb.append("No errors were found on the image.\n");
        } else {
            if (r.corruptions() > 0) {
                sb.append('\n').append(r.corruptions()).append(" errors were found on the image.\n")
                        .append("Data may be corrupted, or further writes to the image may corrupt it.\n");
            }
            if (r.leaks() > 0) {
                sb.append('\n').append(r.leaks()).append(" leaked clusters were found on the image.\n")
                        .append("This means waste of disk space, but no harm to data.\n");
            }
            if (r.checkErrors() > 0) {
                sb.append('\n').append(r.checkErrors()).append(" internal errors have occurred during the check.\n");
            }
        }
        if (r.totalClusters() > 0 && r.allocatedClusters() > 0) {
            double total = r.totalClusters();
            sb.append(String.format(java.util.Locale.ROOT,
                    "%d/%d = %.2f%% allocated, %.2f%% fragmented, %.2f%% compressed clusters%n",
                    r.allocatedClusters(), r.totalClusters(), r.allocatedClusters() * 100.0 / total,
                    r.fragmentedClusters() * 100.0 / r.allocatedClusters(),
                    r.compressedClusters() * 100.0 / r.allocatedClusters()));
        }
        if (r.imageEndOffset() > 0) {
            sb.append("Image end offset: ").append(r.imageEndOffset()).append('\n');
        }
        return sb.toString();
    }

    private static String snapshots(Results.Snapshots s) {
        if (s.list().isEmpty()) {
            return "";
        }
        StringBuilder sb = new StringBuilder("Snapshot list:\n");
        sb.append(SnapshotLine.header()).append('\n');
        for (org.blockhaus.api.spi.SnapshotNode.Snapshot sn : s.list()) {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("id", sn.id());
            m.put("name", sn.name());
            m.put("vm-state-size", sn.vmStateSize());
            m.put("date-sec", sn.dateSec());
            m.put("vm-clock-nsec", sn.vmClockNsec());
            m.put("icount", sn.icount());
            sb.append(SnapshotLine.format(m)).append('\n');
        }
        return sb.toString();
    }

    /** One row of qemu-img's snapshot table. */
    static final class SnapshotLine {
        private SnapshotLine() {
        }

        static String format(Map<String, Object> s) {
            long vmSize = num(s.get("vm-state-size"));
            long sec = num(s.get("date-sec"));
            long clock = num(s.get("vm-clock-nsec")) + num(s.get("vm-clock-sec")) * 1_000_000_000L;
            String date = java.time.format.DateTimeFormatter.ofPattern("yyyy-MM-dd HH:mm:ss")
                    .format(java.time.LocalDateTime.ofEpochSecond(sec, 0,
                            java.time.ZoneId.systemDefault().getRules().getOffset(java.time.Instant.ofEpochSecond(sec))));
            long secs = clock / 1_000_000_000L;
            String vmClock = String.format("%02d:%02d:%02d.%03d", secs / 3600, (secs / 60) % 60, secs % 60,
                    (clock / 1_000_000) % 1000);
            Object icount = s.get("icount");
            return String.format(LINE, s.get("id"), s.get("name"), Sizes.human(vmSize), date, vmClock,
                    icount instanceof Number n && n.longValue() >= 0 ? n.toString() : "");
        }

        /** qemu-img's columns: ID, TAG, VM SIZE (right), DATE, VM CLOCK, ICOUNT. */
        private static final String LINE = "%-9s %-16s %8s %19s %12s %10s";

        static String header() {
            return String.format(LINE, "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT");
        }

        private static long num(Object o) {
            return o instanceof Number n ? n.longValue() : 0;
        }
    }
}
