package org.blockhaus.api;

import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * A flat, ordered set of string options with dotted keys, as QEMU's QDict after flattening:
 * {@code driver=qcow2,file.driver=file,file.filename=disk.qcow2}. Every textual form QEMU takes
 * parses into one: {@code -o k=v,...} (with {@code ,,} escaping), dotted keys, and
 * {@code json:{...}} (nested objects become dotted keys, arrays {@code key.0, key.1}).
 *
 * <p>A JSON {@code null} is kept as a key whose value is null ({@code "backing": null} means
 * "no backing file" in QEMU). Instances are immutable.
 */
public final class Options {
    private static final Options EMPTY = new Options(new LinkedHashMap<>());

    private final LinkedHashMap<String, String> map;

    private Options(LinkedHashMap<String, String> map) {
        this.map = map;
    }

    public static Options empty() {
        return EMPTY;
    }

    public static Options of(Map<String, String> values) {
        return new Options(new LinkedHashMap<>(values));
    }

    public static Options of(String... keyValues) {
        if (keyValues.length % 2 != 0) {
            throw new IllegalArgumentException("keys and values must come in pairs");
        }
        LinkedHashMap<String, String> m = new LinkedHashMap<>();
        for (int i = 0; i < keyValues.length; i += 2) {
            m.put(keyValues[i], keyValues[i + 1]);
        }
        return new Options(m);
    }

    /**
     * Parses QEMU's key=value list: items separated by ',', a literal comma written ',,'. A bare
     * item is {@code impliedKey=item} when it comes first and {@code impliedKey} is given, else
     * {@code item=on}. Later keys override earlier ones, as in QemuOpts.
     */
    public static Options parseKeyValue(String text, String impliedKey) throws BlockException {
        LinkedHashMap<String, String> m = new LinkedHashMap<>();
        if (text == null || text.isEmpty()) {
            return new Options(m);
        }
        List<String> items = splitUnescaped(text);
        for (int i = 0; i < items.size(); i++) {
            String item = items.get(i);
            int eq = item.indexOf('=');
            if (eq < 0) {
                if (i == 0 && impliedKey != null) {
                    m.put(impliedKey, item);
                } else if (item.isEmpty()) {
                    throw BlockException.invalid("Invalid parameter ''");
                } else {
                    m.put(item, "on");
                }
                continue;
            }
            String key = item.substring(0, eq);
            if (key.isEmpty()) {
                throw BlockException.invalid("Invalid parameter ''");
            }
            m.remove(key);
            m.put(key, item.substring(eq + 1));
        }
        return new Options(m);
    }

    private static List<String> splitUnescaped(String text) {
        List<String> items = new ArrayList<>();
        StringBuilder cur = new StringBuilder();
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            if (c == ',') {
                if (i + 1 < text.length() && text.charAt(i + 1) == ',') {
                    cur.append(',');
                    i++;
                } else {
                    items.add(cur.toString());
                    cur.setLength(0);
                }
            } else {
                cur.append(c);
            }
        }
        items.add(cur.toString());
        return items;
    }

    /** Escapes a value for a key=value list (',' becomes ',,'). */
    public static String escape(String value) {
        return value.replace(",", ",,");
    }

    /**
     * Parses the text after {@code json:}: one JSON object, flattened to dotted keys.
     * Numbers keep their JSON spelling; booleans become "on"/"off".
     */
    public static Options parseJson(String json) throws BlockException {
        Object root;
        try {
            root = new JsonParser(json).parseDocument();
        } catch (IllegalArgumentException e) {
            throw BlockException.invalid("Could not parse the JSON options: JSON parse error, " + e.getMessage());
        }
        if (!(root instanceof Map<?, ?> obj)) {
            throw BlockException.invalid("Could not parse the JSON options: Invalid JSON object given");
        }
        LinkedHashMap<String, String> m = new LinkedHashMap<>();
        flatten("", obj, m);
        return new Options(m);
    }

    private static void flatten(String prefix, Object value, LinkedHashMap<String, String> out) {
        if (value instanceof Map<?, ?> obj) {
            for (Map.Entry<?, ?> e : obj.entrySet()) {
                flatten(prefix + e.getKey(), e.getValue(), out, true);
            }
        } else {
            out.put(prefix, value == null ? null : scalar(value));
        }
    }

    private static void flatten(String key, Object value, LinkedHashMap<String, String> out, boolean unused) {
        if (value instanceof Map<?, ?>) {
            flatten(key + ".", value, out);
        } else if (value instanceof List<?> list) {
            for (int i = 0; i < list.size(); i++) {
                flatten(key + "." + i, list.get(i), out, true);
            }
        } else {
            out.put(key, value == null ? null : scalar(value));
        }
    }

    private static String scalar(Object v) {
        if (v instanceof Boolean b) {
            return b ? "on" : "off";
        }
        return v.toString();
    }

    public boolean isEmpty() {
        return map.isEmpty();
    }

    public boolean has(String key) {
        return map.containsKey(key);
    }

    /** True if {@code key} itself or any {@code key.*} is present. */
    public boolean hasTree(String key) {
        if (map.containsKey(key)) {
            return true;
        }
        String p = key + ".";
        return map.keySet().stream().anyMatch(k -> k.startsWith(p));
    }

    /** The value, or null when absent or JSON null. */
    public String get(String key) {
        return map.get(key);
    }

    /** True when the key is present with a JSON null value. */
    public boolean isNull(String key) {
        return map.containsKey(key) && map.get(key) == null;
    }

    public String get(String key, String defaultValue) {
        String v = map.get(key);
        return v == null ? defaultValue : v;
    }

    public boolean getBool(String key, boolean defaultValue) throws BlockException {
        String v = map.get(key);
        if (v == null) {
            return defaultValue;
        }
        return switch (v) {
            case "on", "true", "yes" -> true;
            case "off", "false", "no" -> false;
            default -> throw BlockException.invalid("Parameter '" + key + "' expects 'on' or 'off'");
        };
    }

    public long getLong(String key, long defaultValue) throws BlockException {
        String v = map.get(key);
        if (v == null) {
            return defaultValue;
        }
        try {
            return Long.parseLong(v.trim());
        } catch (NumberFormatException e) {
            throw BlockException.invalid("Parameter '" + key + "' expects a number");
        }
    }

    /** A size with QEMU's suffixes (k, M, G, T, P, E; bytes without suffix). */
    public long getSize(String key, long defaultValue) throws BlockException {
        String v = map.get(key);
        if (v == null) {
            return defaultValue;
        }
        long size = Sizes.parseOption(key, v, w -> { });
        if (size < 0) { // QEMU's option parser takes up to 2^64 - 1; no size here goes past 2^63 - 1
            throw BlockException.invalid("Value '" + v + "' is out of range for parameter '" + key + "'");
        }
        return size;
    }

    /** Options below {@code prefix.}, with the prefix removed. */
    public Options subtree(String prefix) {
        String p = prefix + ".";
        LinkedHashMap<String, String> m = new LinkedHashMap<>();
        for (Map.Entry<String, String> e : map.entrySet()) {
            if (e.getKey().startsWith(p)) {
                m.put(e.getKey().substring(p.length()), e.getValue());
            }
        }
        return new Options(m);
    }

    /** These options without {@code key} and without anything below {@code key.}. */
    public Options withoutTree(String key) {
        String p = key + ".";
        LinkedHashMap<String, String> m = new LinkedHashMap<>(map);
        m.keySet().removeIf(k -> k.equals(key) || k.startsWith(p));
        return new Options(m);
    }

    public Options without(String key) {
        if (!map.containsKey(key)) {
            return this;
        }
        LinkedHashMap<String, String> m = new LinkedHashMap<>(map);
        m.remove(key);
        return new Options(m);
    }

    public Options with(String key, String value) {
        LinkedHashMap<String, String> m = new LinkedHashMap<>(map);
        m.put(key, value);
        return new Options(m);
    }

    /** These options with {@code other}'s entries added; {@code other} wins on conflicts. */
    public Options merge(Options other) {
        LinkedHashMap<String, String> m = new LinkedHashMap<>(map);
        m.putAll(other.map);
        return new Options(m);
    }

    /** {@code other}'s options placed below {@code prefix.}, replacing what was there. */
    public Options withTree(String prefix, Options other) {
        LinkedHashMap<String, String> m = new LinkedHashMap<>(withoutTree(prefix).map);
        other.map.forEach((k, v) -> m.put(prefix + "." + k, v));
        return new Options(m);
    }

    /** The distinct first components of the keys ("file.driver" gives "file"). */
    public Set<String> topLevelKeys() {
        Set<String> s = new java.util.LinkedHashSet<>();
        for (String k : map.keySet()) {
            int dot = k.indexOf('.');
            s.add(dot < 0 ? k : k.substring(0, dot));
        }
        return s;
    }

    public Map<String, String> asMap() {
        return Collections.unmodifiableMap(map);
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof Options other && other.map.equals(map);
    }

    @Override
    public int hashCode() {
        return map.hashCode();
    }

    /** QEMU's key=value spelling, commas escaped. */
    @Override
    public String toString() {
        StringBuilder sb = new StringBuilder();
        for (Map.Entry<String, String> e : map.entrySet()) {
            if (sb.length() > 0) {
                sb.append(',');
            }
            sb.append(e.getKey()).append('=').append(e.getValue() == null ? "" : escape(e.getValue()));
        }
        return sb.toString();
    }
}
