package org.blockhaus.api.spi;

import java.util.List;
import java.util.Objects;

/**
 * One option a driver accepts, as {@code -o help} shows it.
 *
 * @param name         option name; a name ending in ".*" accepts a whole subtree ("encrypt.*")
 * @param type         value type
 * @param defaultValue default as QEMU prints it in create's "Formatting" line, or null when QEMU
 *                     prints none
 * @param help         help text
 * @param allowed      allowed values for enumerations, else empty
 */
public record OptionSpec(String name, OptionType type, String defaultValue, String help, List<String> allowed) {
    public enum OptionType {
        STRING("str"), BOOL("bool (on/off)"), NUMBER("num"), SIZE("size");

        private final String label;

        OptionType(String label) {
            this.label = label;
        }

        /** The type as {@code -o help} shows it, without angle brackets. */
        public String label() {
            return label;
        }
    }

    public OptionSpec {
        Objects.requireNonNull(name, "name");
        Objects.requireNonNull(type, "type");
        help = help == null ? "" : help;
        allowed = List.copyOf(allowed);
    }

    public static OptionSpec of(String name, OptionType type, String help) {
        return new OptionSpec(name, type, null, help, List.of());
    }

    public static OptionSpec of(String name, OptionType type, String defaultValue, String help) {
        return new OptionSpec(name, type, defaultValue, help, List.of());
    }

    public static OptionSpec choice(String name, String defaultValue, String help, String... allowed) {
        return new OptionSpec(name, OptionType.STRING, defaultValue, help, List.of(allowed));
    }

    public boolean matches(String key) {
        if (name.endsWith(".*")) {
            String prefix = name.substring(0, name.length() - 1);
            return key.startsWith(prefix) || key.equals(name.substring(0, name.length() - 2));
        }
        return name.equals(key);
    }
}
