package org.blockhaus.protocol.nullco;

import org.blockhaus.api.spi.BlockDriver;
import org.osgi.service.component.annotations.Component;

/** QEMU's "null-aio" driver: null-co's twin, selected by {@code null-aio://}. */
@Component(service = BlockDriver.class, property = {"blk.driver=null-aio", "blk.kind=protocol"})
public class NullAioDriver extends NullDriver {
    public NullAioDriver() {
        super("null-aio");
    }
}
