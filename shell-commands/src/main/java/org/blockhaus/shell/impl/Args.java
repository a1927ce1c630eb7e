package org.blockhaus.shell.impl;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * qemu-img's option syntax (getopt_long): short options that may be grouped ({@code -pU}),
 * short options with an argument attached or separate ({@code -fqcow2}, {@code -f qcow2}), long
 * options with {@code =} or a separate argument, {@code --} ending options. Options may appear
 * after positional arguments, as GNU getopt permutes them.
 */
final class Args {
    /** A usage error: qemu-img prints the message and exits 1. */
    static class UsageException extends Exception {
        /** The same complaint as glibc's getopt words it (measure lets getopt speak, see there). */
        final String getoptMessage;

        UsageException(String message) {
            this(message, null);
        }

        UsageException(String message, String getoptMessage) {
            super(message);
            this.getoptMessage = getoptMessage;
        }
    }

    /**
     * {@code -h} or {@code --help} met as an option (not as another option's argument): every
     * qemu-img command then prints the whole help and exits 0, ignoring the rest of the line;
     * options before it are still parsed, so an unknown one fails first.
     */
    static final class HelpRequested extends UsageException {
        HelpRequested() {
            super("help");
        }
    }

    private final Map<String, List<String>> options = new LinkedHashMap<>();
    private final List<String> positional = new ArrayList<>();

    /**
     * @param shortWithArg short options taking an argument, e.g. "f", "O", "o"
     * @param shortFlags   short options without argument
     * @param longWithArg  long options taking an argument, e.g. "output"
     * @param longFlags    long options without argument
     */
    static Args parse(String[] argv, String shortWithArg, String shortFlags, Set<String> longWithArg,
            Set<String> longFlags) throws UsageException {
        Args a = new Args();
        boolean onlyPositional = false;
        for (int i = 0; i < argv.length; i++) {
            String arg = argv[i];
            if (onlyPositional || arg.equals("-") || !arg.startsWith("-")) {
                a.positional.add(arg);
                continue;
            }
            if (arg.equals("--")) {
                onlyPositional = true;
                continue;
            }
            if (arg.startsWith("--")) {
                String name = arg.substring(2);
                String value = null;
                int eq = name.indexOf('=');
                if (eq >= 0) {
                    value = name.substring(eq + 1);
                    name = name.substring(0, eq);
                }
                String given = name;
                name = longName(name, longWithArg, longFlags);
                if (name == null) {
                    throw new UsageException("unrecognized option '" + arg + "'",
                            "unrecognized option '--" + given + "'");
                }
                if (name.equals("help") && value == null) {
                    throw new HelpRequested();
                }
                if (longWithArg.contains(name)) {
                    if (value == null) {
                        if (i + 1 >= argv.length) {
                            throw new UsageException("missing argument for option '" + arg + "'",
                                    "option '--" + name + "' requires an argument");
                        }
                        value = argv[++i];
                    }
                    a.add(name, value);
                } else if (longFlags.contains(name)) {
                    if (value != null) {
                        // qemu-img reports every getopt complaint but a missing argument this way
                        throw new UsageException("unrecognized option '" + arg + "'",
                                "option '--" + name + "' doesn't allow an argument");
                    }
                    a.add(name, "");
                } else {
                    throw new UsageException("unrecognized option '" + arg + "'",
                            "unrecognized option '" + arg + "'");
                }
                continue;
            }
            for (int j = 1; j < arg.length(); j++) {
                char c = arg.charAt(j);
                String key = String.valueOf(c);
                if (c == 'h' && shortWithArg.indexOf(c) < 0) {
                    throw new HelpRequested();
                }
                if (shortWithArg.indexOf(c) >= 0) {
                    String value;
                    if (j + 1 < arg.length()) {
                        value = arg.substring(j + 1);
                    } else if (i + 1 < argv.length) {
                        value = argv[++i];
                    } else {
                        throw new UsageException("missing argument for option '" + arg + "'",
                                "option requires an argument -- '" + c + "'");
                    }
                    a.add(key, value);
                    break;
                } else if (shortFlags.indexOf(c) >= 0) {
                    a.add(key, "");
                } else {
                    throw new UsageException("unrecognized option '" + arg + "'", "invalid option -- '" + c + "'");
                }
            }
        }
        return a;
    }

    /**
     * getopt_long's matching: an exact name, else an unambiguous abbreviation ({@code --out=json});
     * null when nothing or more than one option matches.
     */
    private static String longName(String given, Set<String> withArg, Set<String> flags) {
        Set<String> all = new java.util.TreeSet<>(withArg);
        all.addAll(flags);
        all.add("help");
        if (all.contains(given)) {
            return given;
        }
        List<String> matches = all.stream().filter(n -> n.startsWith(given)).toList();
        return matches.size() == 1 && !given.isEmpty() ? matches.get(0) : null;
    }

    private void add(String key, String value) {
        options.computeIfAbsent(key, k -> new ArrayList<>()).add(value);
    }

    boolean has(String key) {
        return options.containsKey(key);
    }

    /** The last value given for the option (later options win, as in qemu-img). */
    String get(String key) {
        List<String> v = options.get(key);
        return v == null ? null : v.get(v.size() - 1);
    }

    String get(String key, String defaultValue) {
        String v = get(key);
        return v == null ? defaultValue : v;
    }

    List<String> all(String key) {
        return options.getOrDefault(key, List.of());
    }

    List<String> positional() {
        return positional;
    }
}
