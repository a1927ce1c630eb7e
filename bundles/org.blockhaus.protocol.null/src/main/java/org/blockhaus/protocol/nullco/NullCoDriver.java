package org.blockhaus.protocol.nullco;

import org.blockhaus.api.spi.BlockDriver;
import org.osgi.service.component.annotations.Component;

/** QEMU's "null-co" driver, selected by the filename {@code null-co://} or {@code driver=null-co}. */
@Component(service = BlockDriver.class, property = {"blk.driver=null-co", "blk.kind=protocol"})
public class NullCoDriver extends NullDriver {
    public NullCoDriver() {
        super("null-co");
    }
}
