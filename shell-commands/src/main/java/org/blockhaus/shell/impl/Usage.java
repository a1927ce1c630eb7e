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
              amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt] [--force] -o options filename
              bench [-c count] [-d depth] [-f fmt] [--flush-interval=n] [-i aio] [-n] [--no-drain] [-o offset]
                    [--pattern=byte] [-q] [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename
              bitmap [--object objectdef] [--image-opts | -f fmt] {--add [-g granularity] | --remove | --clear |
                     --enable | --disable | --merge source [-b src_file [-F src_fmt]]}... filename bitmap
              check [--object objectdef] [--image-opts] [-q] [-f fmt] [--output=ofmt] [-r leaks|all] [-U] filename
              commit [--object objectdef] [--image-opts] [-q] [-f fmt] [-b base] [-d] [-p] filename
              compare [--object objectdef] [--image-opts] [-f fmt] [-F fmt] [-p] [-q] [-s] [-U] filename1 filename2
              convert [--object objectdef] [--image-opts] [--target-image-opts] [--target-is-zero] [-U] [-c] [-p] [-q]
                      [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt] [-B backing_file [-F backing_fmt]]
                      [-o options] [-l snapshot] [-S sparse_size] [-m num_coroutines] [-W] [--salvage]
                      filename [filename2 [...]] output_filename
              create [--object objectdef] [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options]
                     filename [size]
              dd [--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] [skip=blocks]
                 if=input of=output
              info [--object objectdef] [--image-opts] [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename
              map [--object objectdef] [--image-opts] [-f fmt] [--start-offset=offset] [--max-length=len]
                  [--output=ofmt] [-U] filename
              measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [--object objectdef] [--image-opts]
                      [-f fmt] filename]
              snapshot [--object objectdef] [--image-opts] [-U] [-q] [-l | -a snapshot | -c snapshot | -d snapshot]
                       filename
              rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] [-p] [-u] -b backing_file
                     [-F backing_fmt] filename
              resize [--object objectdef] [--image-opts] [-f fmt] [--preallocation=prealloc] [-q] [--shrink]
                     filename [+ | -]size

            '-o help' lists a format's options; sizes take the suffixes k, M, G, T, P and E.
            Exit codes, output and messages are qemu-img's.

            Without a command, ./blk opens the interactive Gogo shell (commands in scope blk,
            e.g. blk:info disk.qcow2; 'help blk:info' describes each).
            """;
}
