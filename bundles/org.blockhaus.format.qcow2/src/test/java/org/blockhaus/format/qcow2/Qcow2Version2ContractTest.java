package org.blockhaus.format.qcow2;

/** qcow2 version 2 with 512-byte clusters (no zero flag, many L2 tables) keeps the contract. */
class Qcow2Version2ContractTest extends Qcow2Contract {
    @Override
    protected String[] options() {
        return new String[] {"compat", "0.10", "cluster_size", "512"};
    }
}
