package org.blockhaus.format.qcow2;

/** qcow2 with extended L2 entries and 1-bit refcounts keeps the contract. */
class Qcow2ExtendedL2ContractTest extends Qcow2Contract {
    @Override
    protected String[] options() {
        return new String[] {"extended_l2", "on", "cluster_size", "32768", "refcount_bits", "1"};
    }
}
