package org.blockhaus.nbd.server.impl;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * qemu-nbd 7.2's command line, read the way glibc's getopt_long reads it (qemu-nbd.c): short
 * options clustered ({@code -rt}) or with attached values ({@code -p10809}), long options with
 * {@code =} or a separate value and abbreviated to any unique prefix, options and operands in
 * any order, {@code --} ending the options. Errors carry getopt's words, so scripts that match
 * them keep working.
 *
 * <p>One extension: several image operands, each after its own {@code -x NAME} (and optional
 * {@code -D TEXT}), serve several named exports from one server; qemu-nbd itself takes one.
 */
final class QemuNbdArgs {
    /** qemu-nbd's short options: a trailing ':' means "takes a value". */
    static final String SHORT = "hVb:o:p:rsnc:dvk:e:f:tl:x:T:D:AB:L";
    /** Long names and whether they take a value; the short name they stand for, or the long name. */
    static final Map<String, Option> LONG = new LinkedHashMap<>();

    record Option(String name, boolean hasValue, char shortName) {
    }

    static {
        longOpt("help", false, 'h');
        longOpt("version", false, 'V');
        longOpt("bind", true, 'b');
        longOpt("port", true, 'p');
        longOpt("socket", true, 'k');
        longOpt("offset", true, 'o');
        longOpt("read-only", false, 'r');
        longOpt("allocation-depth", false, 'A');
        longOpt("bitmap", true, 'B');
        longOpt("connect", true, 'c');
        longOpt("disconnect", false, 'd');
        longOpt("list", false, 'L');
        longOpt("snapshot", false, 's');
        longOpt("load-snapshot", true, 'l');
        longOpt("nocache", false, 'n');
        longOpt("cache", true, '\0');
        longOpt("aio", true, '\0');
        longOpt("discard", true, '\0');
        longOpt("detect-zeroes", true, '\0');
        longOpt("shared", true, 'e');
        longOpt("format", true, 'f');
        longOpt("persistent", false, 't');
        longOpt("verbose", false, 'v');
        longOpt("object", true, '\0');
        longOpt("export-name", true, 'x');
        longOpt("description", true, 'D');
        longOpt("tls-creds", true, '\0');
        longOpt("tls-hostname", true, '\0');
        longOpt("tls-authz", true, '\0');
        longOpt("image-opts", false, '\0');
        longOpt("trace", true, 'T');
        longOpt("fork", false, '\0');
        longOpt("pid-file", true, '\0');
        longOpt("selinux-label", true, '\0');
    }

    private static void longOpt(String name, boolean value, char shortName) {
        LONG.put(name, new Option(name, value, shortName));
    }

    /** A command-line mistake: getopt's or qemu-nbd's message, and whether to add the --help hint. */
    static final class UsageError extends Exception {
        final boolean hint;

        UsageError(String message, boolean hint) {
            super(message, null, false, false);
            this.hint = hint;
        }
    }

    /** One option as given: its canonical name (the long name, or the short letter) and value. */
    record Given(String name, String value, int argIndex) {
    }

    final List<Given> options = new ArrayList<>();
    final List<String> operands = new ArrayList<>();
    /** For each operand, how many options came before it (pairs -x with the image after it). */
    final List<Integer> operandPositions = new ArrayList<>();

    static QemuNbdArgs parse(String[] args) throws UsageError {
        QemuNbdArgs p = new QemuNbdArgs();
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            if (a.equals("--")) {
                for (int j = i + 1; j < args.length; j++) {
                    p.operand(args[j]);
                }
                break;
            }
            if (a.startsWith("--")) {
                int eq = a.indexOf('=');
                String name = eq < 0 ? a.substring(2) : a.substring(2, eq);
                Option o = lookup(name, a);
                String value = null;
                if (o.hasValue()) {
                    if (eq >= 0) {
                        value = a.substring(eq + 1);
                    } else if (i + 1 < args.length) {
                        value = args[++i];
                    } else {
                        throw new UsageError("option '--" + o.name() + "' requires an argument", true);
                    }
                } else if (eq >= 0) {
                    throw new UsageError("option '--" + o.name() + "' doesn't allow an argument", true);
                }
                p.options.add(new Given(canonical(o), value, i));
            } else if (a.startsWith("-") && a.length() > 1) {
                for (int k = 1; k < a.length(); k++) {
                    char c = a.charAt(k);
                    int at = c == ':' ? -1 : SHORT.indexOf(c);
                    if (at < 0) {
                        throw new UsageError("invalid option -- '" + c + "'", true);
                    }
                    boolean hasValue = at + 1 < SHORT.length() && SHORT.charAt(at + 1) == ':';
                    if (!hasValue) {
                        p.options.add(new Given(canonicalShort(c), null, i));
                        continue;
                    }
                    String value;
                    if (k + 1 < a.length()) {
                        value = a.substring(k + 1);
                    } else if (i + 1 < args.length) {
                        value = args[++i];
                    } else {
                        throw new UsageError("option requires an argument -- '" + c + "'", true);
                    }
                    p.options.add(new Given(canonicalShort(c), value, i));
                    break;
                }
            } else {
                p.operand(a);
            }
        }
        return p;
    }

    private void operand(String a) {
        operands.add(a);
        operandPositions.add(options.size());
    }

    /** Exact long names win; otherwise a unique prefix, as getopt_long allows. */
    private static Option lookup(String name, String arg) throws UsageError {
        Option exact = LONG.get(name);
        if (exact != null) {
            return exact;
        }
        List<Option> matches = name.isEmpty() ? List.of()
                : LONG.values().stream().filter(o -> o.name().startsWith(name)).toList();
        if (matches.size() == 1) {
            return matches.getFirst();
        }
        if (matches.isEmpty()) {
            throw new UsageError("unrecognized option '" + arg + "'", true);
        }
        StringBuilder sb = new StringBuilder("option '" + arg + "' is ambiguous; possibilities:");
        for (Option o : matches) {
            sb.append(" '--").append(o.name()).append('\'');
        }
        throw new UsageError(sb.toString(), true);
    }

    private static String canonical(Option o) {
        return o.shortName() != '\0' ? String.valueOf(o.shortName()) : o.name();
    }

    private static String canonicalShort(char c) {
        return String.valueOf(c);
    }

    boolean has(String name) {
        return options.stream().anyMatch(g -> g.name().equals(name));
    }

    /** The last value given, as getopt's callers keep it, or null. */
    String last(String name) {
        String v = null;
        for (Given g : options) {
            if (g.name().equals(name)) {
                v = g.value();
            }
        }
        return v;
    }

    List<String> all(String name) {
        return options.stream().filter(g -> g.name().equals(name)).map(Given::value).toList();
    }

    int count(String name) {
        return (int) options.stream().filter(g -> g.name().equals(name)).count();
    }
}
