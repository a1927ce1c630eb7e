package org.blockhaus.protocol.file.impl;

import java.util.List;
import org.blockhaus.api.spi.BlockDriver;
import org.blockhaus.api.spi.DriverDescriptor;
import org.blockhaus.api.spi.DriverDescriptor.Kind;
import org.osgi.service.component.annotations.Component;

/**
 * QEMU's "host_device" protocol: a host block (or character) device such as {@code /dev/loop0}
 * or {@code /dev/sdb}. Same I/O as "file"; the size comes from {@code BLKGETSIZE64}, O_DIRECT
 * aligns to the device's logical block size, and devices cannot be resized or created.
 */
@Component(service = BlockDriver.class, property = {"blk.driver=host_device", "blk.kind=protocol"})
public final class HostDeviceDriver extends PosixDriver {
    private static final DriverDescriptor DESCRIPTOR = new DriverDescriptor("host_device", Kind.PROTOCOL,
            "host block devices (QEMU's file-posix)", List.of("host_device:"), OPEN_OPTIONS, List.of());

    @Override
    public DriverDescriptor descriptor() {
        return DESCRIPTOR;
    }

    @Override
    String name() {
        return "host_device";
    }

    /** Like QEMU, a plain name that is a block device opens with host_device, not file. */
    @Override
    public int probeDevice(String filename) {
        try {
            Object mode = java.nio.file.Files.getAttribute(java.nio.file.Path.of(filename), "unix:mode");
            return mode instanceof Integer m && (m & 0170000) == 0060000 ? 100 : 0;
        } catch (Exception e) {
            return 0;
        }
    }

    @Override
    boolean opensDevices() {
        return true;
    }
}
