package org.blockhaus.protocol.file.impl;

import java.util.List;
import org.blockhaus.api.spi.BlockDriver;
import org.blockhaus.api.spi.DriverDescriptor;
import org.blockhaus.api.spi.DriverDescriptor.Kind;
import org.osgi.service.component.annotations.Component;

/**
 * QEMU's "host_cdrom" protocol: a host CD-ROM drive, read like "host_device". Not done: the
 * media ioctls (CDROM_DRIVE_STATUS for "inserted", eject, door lock) that QEMU uses for
 * removable media. No CD-ROM device exists on the machines this is built and tested on, so only
 * the refusal paths (regular files, missing devices) are tested.
 */
@Component(service = BlockDriver.class, property = {"blk.driver=host_cdrom", "blk.kind=protocol"})
public final class HostCdromDriver extends PosixDriver {
    private static final DriverDescriptor DESCRIPTOR = new DriverDescriptor("host_cdrom", Kind.PROTOCOL,
            "host CD-ROM drives (QEMU's file-posix)", List.of("host_cdrom:"), OPEN_OPTIONS, List.of());

    @Override
    public DriverDescriptor descriptor() {
        return DESCRIPTOR;
    }

    @Override
    String name() {
        return "host_cdrom";
    }

    @Override
    boolean opensDevices() {
        return true;
    }
}
