package org.blockhaus.format.raw;

import java.nio.file.Path;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.core.BlockCore;
import org.blockhaus.protocol.file.impl.FileDriver;
import org.blockhaus.testkit.BlockNodeContract;

/** raw over file keeps the block-node contract. */
class RawContractTest extends BlockNodeContract {
    private final BlockCore core = BlockCore.standalone();

    RawContractTest() {
        core.addDriver(new RawDriver());
        core.addDriver(new FileDriver());
    }

    @Override
    protected Image create(Path dir, long size) throws Exception {
        String f = dir.resolve("c.raw").toString();
        core.create(f, "raw", Options.of("size", Long.toString(size)), s -> { }, w -> { });
        return reopen(dir);
    }

    @Override
    protected Image reopen(Path dir) throws Exception {
        return core.open(dir.resolve("c.raw").toString(), Options.of("driver", "raw"), OpenMode.READ_WRITE);
    }

    @Override
    protected boolean canResize() {
        return true;
    }
}
