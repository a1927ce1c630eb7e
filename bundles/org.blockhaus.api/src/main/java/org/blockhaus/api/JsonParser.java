package org.blockhaus.api;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A small strict JSON reader for {@code json:} filenames (RFC 8259). Objects become ordered maps,
 * numbers keep their spelling as a {@link JsonNumber}. Depth is capped so hostile input cannot
 * exhaust the stack.
 */
final class JsonParser {
    private static final int MAX_DEPTH = 64;

    /** A number as written, so integers beyond long and decimals survive unchanged. */
    record JsonNumber(String text) {
        @Override
        public String toString() {
            return text;
        }
    }

    private final String s;
    private int pos;

    JsonParser(String s) {
        this.s = s;
    }

    Object parseDocument() {
        Object v = value(0);
        skipWs();
        if (pos != s.length()) {
            throw new IllegalArgumentException("unexpected text after the JSON value at offset " + pos);
        }
        return v;
    }

    private Object value(int depth) {
        if (depth > MAX_DEPTH) {
            throw new IllegalArgumentException("nesting deeper than " + MAX_DEPTH);
        }
        skipWs();
        if (pos >= s.length()) {
            throw new IllegalArgumentException("unexpected end of input");
        }
        char c = s.charAt(pos);
        switch (c) {
            case '{':
                return object(depth);
            case '[':
                return array(depth);
            case '"':
                return string();
            default:
                if (c == '-' || (c >= '0' && c <= '9')) {
                    return number();
                }
                return keyword();
        }
    }

    private Map<String, Object> object(int depth) {
        Map<String, Object> m = new LinkedHashMap<>();
        pos++;
        skipWs();
        if (peek() == '}') {
            pos++;
            return m;
        }
        while (true) {
            skipWs();
            if (peek() != '"') {
                if (pos < s.length() && Character.isLetter(s.charAt(pos))) {
                    keyword(); // qemu's lexer reports a bare word as an invalid keyword first
                }
                throw new IllegalArgumentException("expected a string key at offset " + pos);
            }
            String key = string();
            skipWs();
            expect(':');
            m.put(key, value(depth + 1));
            skipWs();
            char c = next();
            if (c == '}') {
                return m;
            }
            if (c != ',') {
                throw new IllegalArgumentException("expected ',' or '}' at offset " + (pos - 1));
            }
        }
    }

    private List<Object> array(int depth) {
        List<Object> l = new ArrayList<>();
        pos++;
        skipWs();
        if (peek() == ']') {
            pos++;
            return l;
        }
        while (true) {
            l.add(value(depth + 1));
            skipWs();
            char c = next();
            if (c == ']') {
                return l;
            }
            if (c != ',') {
                throw new IllegalArgumentException("expected ',' or ']' at offset " + (pos - 1));
            }
        }
    }

    private String string() {
        pos++;
        StringBuilder sb = new StringBuilder();
        while (true) {
            char c = next();
            if (c == '"') {
                return sb.toString();
            }
            if (c == '\\') {
                char e = next();
                switch (e) {
                    case '"', '\\', '/' -> sb.append(e);
                    case 'b' -> sb.append('\b');
                    case 'f' -> sb.append('\f');
                    case 'n' -> sb.append('\n');
                    case 'r' -> sb.append('\r');
                    case 't' -> sb.append('\t');
                    case 'u' -> {
                        if (pos + 4 > s.length()) {
                            throw new IllegalArgumentException("truncated \\u escape");
                        }
                        try {
                            sb.append((char) Integer.parseInt(s.substring(pos, pos + 4), 16));
                        } catch (NumberFormatException ex) {
                            throw new IllegalArgumentException("invalid \\u escape at offset " + pos);
                        }
                        pos += 4;
                    }
                    default -> throw new IllegalArgumentException("invalid escape '\\" + e + "'");
                }
            } else if (c < 0x20) {
                throw new IllegalArgumentException("control character in string at offset " + (pos - 1));
            } else {
                sb.append(c);
            }
        }
    }

    private JsonNumber number() {
        int start = pos;
        if (peek() == '-') {
            pos++;
        }
        while (pos < s.length() && "0123456789.eE+-".indexOf(s.charAt(pos)) >= 0) {
            pos++;
        }
        String t = s.substring(start, pos);
        if (!t.matches("-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][+-]?[0-9]+)?")) {
            throw new IllegalArgumentException("invalid number '" + t + "'");
        }
        return new JsonNumber(t);
    }

    private Object keyword() {
        int start = pos;
        while (pos < s.length() && Character.isLetterOrDigit(s.charAt(pos))) {
            pos++;
        }
        String w = s.substring(start, pos);
        return switch (w) {
            case "true" -> Boolean.TRUE;
            case "false" -> Boolean.FALSE;
            case "null" -> null;
            default -> throw new IllegalArgumentException("invalid keyword '"
                    + (w.isEmpty() ? String.valueOf(s.charAt(start)) : w) + "'");
        };
    }

    private void skipWs() {
        while (pos < s.length() && " \t\r\n".indexOf(s.charAt(pos)) >= 0) {
            pos++;
        }
    }

    private char peek() {
        return pos < s.length() ? s.charAt(pos) : '\0';
    }

    private char next() {
        if (pos >= s.length()) {
            throw new IllegalArgumentException("unexpected end of input");
        }
        return s.charAt(pos++);
    }

    private void expect(char c) {
        if (next() != c) {
            throw new IllegalArgumentException("expected '" + c + "' at offset " + (pos - 1));
        }
    }
}
