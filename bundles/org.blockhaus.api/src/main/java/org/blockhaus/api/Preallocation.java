package org.blockhaus.api;

import java.util.Locale;

/** QEMU's PreallocMode: how newly created or grown space is backed on the host. */
public enum Preallocation {
    OFF, METADATA, FALLOC, FULL;

    /** QEMU's option value ("off", "metadata", "falloc", "full"). */
    public String qemuName() {
        return name().toLowerCase(Locale.ROOT);
    }

    public static Preallocation parse(String value) throws BlockException {
        for (Preallocation p : values()) {
            if (p.qemuName().equals(value)) {
                return p;
            }
        }
        throw BlockException.invalid("invalid parameter value: " + value);
    }
}
