package org.blockhaus.shell.impl;

import org.blockhaus.api.spi.BlockDriver;
import org.blockhaus.format.qcow2.Qcow2Driver;
import org.blockhaus.protocol.file.impl.FileDriver;

/** The drivers the shell tests run with, outside a framework. */
final class TestDrivers {
    private TestDrivers() {
    }

    static BlockDriver file() {
        return new FileDriver();
    }

    static BlockDriver qcow2() {
        return new Qcow2Driver();
    }
}
