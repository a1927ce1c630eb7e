package org.blockhaus.api.spi;

import java.util.List;
import java.util.Objects;

/**
 * What a driver is and which options it takes.
 *
 * @param name          QEMU's driver name ("qcow2", "file", "nbd")
 * @param kind          format, protocol or filter
 * @param description   one line for {@code blk:drivers}
 * @param protocols     URI schemes ("nbd", "nbd+unix") or prefixes ending in ':' ("nbd:", "fat:")
 *                      that select this protocol driver from a filename
 * @param openOptions   options accepted at open time (besides children subtrees)
 * @param createOptions options accepted by create ({@code -o})
 * @param compressedWrites whether the format stores writes flagged
 *                      {@link org.blockhaus.api.BlockNode#COMPRESSED} compressed (convert -c)
 * @param amendOptions  options its images take in place ({@code qemu-img amend -o}); a format's
 *                      list differs from its create options (qcow2 cannot change its cluster
 *                      size, but takes keyslot changes). Empty: the format does not amend.
 */
public record DriverDescriptor(String name, Kind kind, String description, List<String> protocols,
        List<OptionSpec> openOptions, List<OptionSpec> createOptions, boolean compressedWrites,
        List<OptionSpec> amendOptions) {
    public enum Kind {
        FORMAT, PROTOCOL, FILTER;

        public String qemuName() {
            return name().toLowerCase(java.util.Locale.ROOT);
        }
    }

    public DriverDescriptor {
        Objects.requireNonNull(name, "name");
        Objects.requireNonNull(kind, "kind");
        protocols = List.copyOf(protocols);
        openOptions = List.copyOf(openOptions);
        createOptions = List.copyOf(createOptions);
        amendOptions = List.copyOf(amendOptions);
    }

    /** A driver whose images cannot be amended. */
    public DriverDescriptor(String name, Kind kind, String description, List<String> protocols,
            List<OptionSpec> openOptions, List<OptionSpec> createOptions, boolean compressedWrites) {
        this(name, kind, description, protocols, openOptions, createOptions, compressedWrites, List.of());
    }

    /** A driver that does not write compressed data. */
    public DriverDescriptor(String name, Kind kind, String description, List<String> protocols,
            List<OptionSpec> openOptions, List<OptionSpec> createOptions) {
        this(name, kind, description, protocols, openOptions, createOptions, false, List.of());
    }

    public OptionSpec openOption(String key) {
        return find(openOptions, key);
    }

    public OptionSpec createOption(String key) {
        return find(createOptions, key);
    }

    public OptionSpec amendOption(String key) {
        return find(amendOptions, key);
    }

    private static OptionSpec find(List<OptionSpec> specs, String key) {
        for (OptionSpec s : specs) {
            if (s.matches(key)) {
                return s;
            }
        }
        return null;
    }
}
