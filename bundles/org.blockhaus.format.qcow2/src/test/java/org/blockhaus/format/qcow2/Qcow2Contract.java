package org.blockhaus.format.qcow2;

import java.nio.file.Path;
import org.blockhaus.api.Image;
import org.blockhaus.core.BlockCore;
import org.blockhaus.testkit.BlockNodeContract;

/** The block-node contract for qcow2 over file; subclasses choose the on-disk variant. */
abstract class Qcow2Contract extends BlockNodeContract {
    private final BlockCore core = Fixtures.core();

    /** Create options of this variant, as key, value pairs. */
    protected abstract String[] options();

    @Override
    protected Image create(Path dir, long size) throws Exception {
        Fixtures.create(core, dir.resolve("c.qcow2"), size, options());
        return reopen(dir);
    }

    @Override
    protected Image reopen(Path dir) throws Exception {
        return Fixtures.openRw(core, dir.resolve("c.qcow2"));
    }
}
