package org.blockhaus.nbd.server.impl;

/** {@code ./blk nbd --help}: qemu-nbd 7.2's help, with what differs here. */
final class Usage {
    static final String TEXT =
            "Usage: qemu-nbd [OPTIONS] FILE\n" +
            "  or:  qemu-nbd -L [OPTIONS]\n" +
            "QEMU Disk Network Block Device Utility (Blockhaus: ./blk nbd, blk:serve in the shell)\n" +
            "\n" +
            "  -h, --help                display this help and exit\n" +
            "  -V, --version             output version information and exit\n" +
            "\n" +
            "Connection properties:\n" +
            "  -p, --port=PORT           port to listen on (default `10809')\n" +
            "  -b, --bind=IFACE          interface to bind to (default `0.0.0.0')\n" +
            "  -k, --socket=PATH         path to the unix socket\n" +
            "                            (default '/var/lock/qemu-nbd-DEVICE')\n" +
            "  -e, --shared=NUM          device can be shared by NUM clients (default '1')\n" +
            "  -t, --persistent          don't exit on the last connection\n" +
            "  -v, --verbose             display extra debugging information\n" +
            "  -x, --export-name=NAME    expose export by name (default is empty string);\n" +
            "                            several images, each after its own -x NAME, serve\n" +
            "                            several named exports\n" +
            "  -D, --description=TEXT    export a human-readable description\n" +
            "\n" +
            "Exposing part of the image:\n" +
            "  -o, --offset=OFFSET       offset into the image\n" +
            "  -A, --allocation-depth    expose the allocation depth\n" +
            "  -B, --bitmap=NAME         expose a persistent dirty bitmap\n" +
            "\n" +
            "General purpose options:\n" +
            "  -L, --list                list exports available from another NBD server\n" +
            "  --object type,id=ID,...   define an object such as 'secret' for providing\n" +
            "                            passwords and/or encryption keys\n" +
            "  --tls-creds=ID            use id of an earlier --object to provide TLS\n" +
            "  --tls-authz=ID            use id of an earlier --object to provide\n" +
            "                            authorization\n" +
            "  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]\n" +
            "                            specify tracing options\n" +
            "  --fork                    start the server as a child process and exit the\n" +
            "                            parent once the server is running\n" +
            "  --pid-file=PATH           store the server's process ID in the given file\n" +
            "  --selinux-label=LABEL     set SELinux process label on listening socket\n" +
            "\n" +
            "Kernel NBD client support:\n" +
            "  -c, --connect=DEV         connect FILE to the local NBD device DEV\n" +
            "  -d, --disconnect          disconnect the specified device\n" +
            "\n" +
            "Block device options:\n" +
            "  -f, --format=FORMAT       set image format (raw, qcow2, ...)\n" +
            "  -r, --read-only           export read-only\n" +
            "  -s, --snapshot            use FILE as an external snapshot, create a temporary\n" +
            "                            file with backing_file=FILE, redirect the write to\n" +
            "                            the temporary one\n" +
            "  -l, --load-snapshot=SNAPSHOT_PARAM\n" +
            "                            load an internal snapshot inside FILE and export it\n" +
            "                            as an read-only device, SNAPSHOT_PARAM format is\n" +
            "                            'snapshot.id=[ID],snapshot.name=[NAME]', or\n" +
            "                            '[ID_OR_NAME]'\n" +
            "  -n, --nocache             disable host cache\n" +
            "      --cache=MODE          set cache mode used to access the disk image, the\n" +
            "                            valid options are: 'none', 'writeback' (default),\n" +
            "                            'writethrough', 'directsync' and 'unsafe'\n" +
            "      --aio=MODE            set AIO mode (native, io_uring or threads)\n" +
            "      --discard=MODE        set discard mode (ignore, unmap)\n" +
            "      --detect-zeroes=MODE  set detect-zeroes mode (off, on, unmap)\n" +
            "      --image-opts          treat FILE as a full set of image options\n" +
            "\n" +
            "Not supported here: -c/-d (kernel client), -L, -s, -l, --tls-authz,\n" +
            "--selinux-label.\n";

    private Usage() {
    }
}
