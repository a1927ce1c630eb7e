package org.blockhaus.core.impl;

import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;

/**
 * The name QEMU gives a node opened from options rather than a filename (its
 * bdrv_refresh_filename): a format over a protocol file, given nothing that changes what the
 * image is, is called by the file's name; anything else is called {@code json:{...}}, the
 * options that define it ("strong" options) with each child nested under its role. The JSON
 * is QEMU's QDict printed as it iterates, so members appear in the order of its hash buckets.
 */
final class NodeNames {
    private NodeNames() {
    }

    /**
     * QEMU's strong runtime options per driver: the ones that change which data a node shows.
     * cache, locking and tuning options are not among them. Drivers not listed here count every
     * option of their own as strong, so a name never hides what defines the node.
     */
    private static final Map<String, Set<String>> STRONG = Map.of(
            "file", Set.of(), "host_device", Set.of(), "host_cdrom", Set.of(),
            "raw", Set.of("offset", "size"),
            "qcow2", Set.of("encrypt.key-secret"),
            "null-co", Set.of("size", "read-zeroes"), "null-aio", Set.of("size", "read-zeroes"));

    /** The options that say what a node is: driver, filename, strong options, children. */
    static Map<String, Object> fullOptions(String driver, Options own, String filename, List<Image.Child> children) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("driver", driver);
        if (filename != null && !filename.startsWith("json:")) {
            m.put("filename", filename);
        }
        Set<String> strong = STRONG.get(driver);
        for (var e : own.asMap().entrySet()) {
            String key = e.getKey();
            String root = key.contains(".") ? key.substring(0, key.indexOf('.')) : key;
            if (e.getValue() == null || key.equals("driver") || key.equals("filename")
                    || ChainResolver.CHILD_ROLES.contains(root) || ChainResolver.COMMON_OPTIONS.contains(key)) {
                continue;
            }
            if (strong == null || strong.contains(key)) {
                m.put(key, e.getValue());
            }
        }
        for (Image.Child c : children) {
            if (!c.role().equals("backing") && c.image() instanceof ManagedNode n) {
                m.put(c.role(), n.fullOpenOptions());
            }
        }
        return m;
    }

    /**
     * A format node's name: its file's name when the file is a protocol node with a plain name,
     * the format has no strong options and no other child but its backing file; else json:.
     */
    static String name(Map<String, Object> full, boolean formatOverProtocol, String fileName, boolean onlyFileChild) {
        boolean strongGiven = full.keySet().stream().anyMatch(k -> !k.equals("driver") && !k.equals("filename")
                && !(full.get(k) instanceof Map));
        if (formatOverProtocol && fileName != null && !fileName.startsWith("json:") && !strongGiven && onlyFileChild) {
            return fileName;
        }
        return "json:" + json(full);
    }

    /** QEMU's compact JSON of a QDict: {"k": "v", "child": {...}}, members in hash-bucket order. */
    static String json(Map<String, Object> dict) {
        List<String> keys = new ArrayList<>(dict.keySet());
        List<String> inserted = List.copyOf(keys);
        // within a bucket QEMU lists the newest member first
        keys.sort(Comparator.<String>comparingInt(NodeNames::bucket)
                .thenComparing(Comparator.<String>comparingInt(inserted::indexOf).reversed()));
        StringBuilder sb = new StringBuilder("{");
        for (String k : keys) {
            if (sb.length() > 1) {
                sb.append(", ");
            }
            sb.append(quote(k)).append(": ");
            Object v = dict.get(k);
            if (v instanceof Map<?, ?> child) {
                @SuppressWarnings("unchecked")
                Map<String, Object> c = (Map<String, Object>) child;
                sb.append(json(c));
            } else {
                sb.append(quote(String.valueOf(v)));
            }
        }
        return sb.append('}').toString();
    }

    /**
     * QDict's bucket for a key: the TDB hash (a multiplicative string hash seeded with the
     * key's length) modulo QEMU's 512 buckets, computed in unsigned 32-bit arithmetic.
     */
    static int bucket(String key) {
        byte[] b = key.getBytes(java.nio.charset.StandardCharsets.UTF_8);
        int value = 0x238F13AF * b.length;
        for (int i = 0; i < b.length; i++) {
            value += (b[i] & 0xff) << (i * 5 % 24);
        }
        int hash = 1103515243 * value + 12345;
        return (int) (Integer.toUnsignedLong(hash) % 512);
    }

    private static String quote(String s) {
        StringBuilder sb = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"' -> sb.append("\\\"");
                case '\\' -> sb.append("\\\\");
                case '\n' -> sb.append("\\n");
                case '\t' -> sb.append("\\t");
                default -> {
                    if (c < 0x20) {
                        sb.append(String.format("\\u%04x", (int) c));
                    } else {
                        sb.append(c);
                    }
                }
            }
        }
        return sb.append('"').toString();
    }
}
