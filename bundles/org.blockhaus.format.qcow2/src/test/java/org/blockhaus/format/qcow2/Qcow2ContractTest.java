package org.blockhaus.format.qcow2;

/** qcow2 with qemu-img's defaults keeps the block-node contract. */
class Qcow2ContractTest extends Qcow2Contract {
    @Override
    protected String[] options() {
        return new String[0];
    }
}
