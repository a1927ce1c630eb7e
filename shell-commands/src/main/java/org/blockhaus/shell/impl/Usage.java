package org.blockhaus.shell.impl;

/** The text of {@code ./blk --help}. */
final class Usage {
    private Usage() {
    }

    static final String TEXT = """
            blk (Blockhaus) - QEMU's qemu-img command set on the JVM
            usage: blk [standard options] command [command options]

            Command syntax:
              drivers                      list installed drivers (kind, bundle, state)
              create [-q] [-f fmt] [-b backing_file -F backing_fmt] [-u] [-o options] filename [size]
              info [-f fmt] [--output=ofmt] [--backing-chain] [-U] [--image-opts] filename
              convert [-c] [-p] [-q] [-n] [-f fmt] [-O output_fmt] [-o options] [-S sparse_size]
                      [-m num_coroutines] [-W] [-U] [--target-is-zero] filename [filename2 [...]] output_filename
              compare [-f fmt] [-F fmt] [-p] [-q] [-s] [-U] filename1 filename2
              map [--output=ofmt] [-f fmt] [--start-offset=offset] [--max-length=len] [-U] filename

            Without a command, ./blk opens the interactive Gogo shell (commands in scope blk,
            e.g. blk:info disk.qcow2; 'help blk:info' describes each).
            """;
}
