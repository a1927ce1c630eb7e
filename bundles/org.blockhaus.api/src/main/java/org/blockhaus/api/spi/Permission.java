package org.blockhaus.api.spi;

import java.util.EnumSet;
import java.util.Set;

/**
 * What a user of a node may do to it, as in QEMU's BLK_PERM_*; the bit numbers are QEMU's, so
 * the file protocol can lock the same bytes QEMU does (100 + bit held, 200 + bit not shared).
 */
public enum Permission {
    CONSISTENT_READ(0), WRITE(1), WRITE_UNCHANGED(2), RESIZE(3);

    private final int bit;

    Permission(int bit) {
        this.bit = bit;
    }

    public int bit() {
        return bit;
    }

    /** QEMU's name for the permission in lock-conflict messages. */
    public String qemuName() {
        return switch (this) {
            case CONSISTENT_READ -> "consistent read";
            case WRITE -> "write";
            case WRITE_UNCHANGED -> "write unchanged";
            case RESIZE -> "resize";
        };
    }

    public static Set<Permission> all() {
        return EnumSet.allOf(Permission.class);
    }
}
