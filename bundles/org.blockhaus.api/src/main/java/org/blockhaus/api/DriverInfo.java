package org.blockhaus.api;

/**
 * One installed driver, for {@code blk:drivers}.
 *
 * @param name   QEMU's driver name
 * @param kind   format, protocol or filter
 * @param bundle symbolic name and version of the bundle that registered it
 * @param state  bundle state ("active", ...)
 * @param canCreate whether the driver creates images
 * @param description one line
 * @param compressedWrites whether convert -c can write this format
 */
public record DriverInfo(String name, String kind, String bundle, String state, boolean canCreate, String description,
        boolean compressedWrites) {
}
