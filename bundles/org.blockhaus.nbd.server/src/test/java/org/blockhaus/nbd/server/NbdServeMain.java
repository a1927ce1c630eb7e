package org.blockhaus.nbd.server;

import java.net.UnixDomainSocketAddress;
import java.util.concurrent.CountDownLatch;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.core.BlockCore;
import org.blockhaus.format.qcow2.Qcow2Driver;
import org.blockhaus.format.raw.RawDriver;
import org.blockhaus.protocol.file.impl.FileDriver;

/**
 * For the benchmark (bench/fio-vs-qemu-nbd.sh), not a test: serves one image on a unix socket
 * until SIGTERM, like {@code qemu-nbd -f FMT --socket=S -x disk IMAGE}.
 */
public final class NbdServeMain {
    private NbdServeMain() {
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: NbdServeMain FORMAT IMAGE SOCKET");
            System.exit(2);
        }
        BlockCore core = BlockCore.standalone();
        core.addDriver(new FileDriver());
        core.addDriver(new RawDriver());
        core.addDriver(new Qcow2Driver());
        Image image = core.open(args[1], Options.of("driver", args[0]), OpenMode.READ_WRITE);
        NbdServer.Running r = NbdServer.standalone().start(image, "disk", UnixDomainSocketAddress.of(args[2]), false);
        CountDownLatch stop = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            r.close();
            try {
                image.close();
            } catch (Exception ignored) {
                // exiting anyway
            }
            stop.countDown();
        }));
        System.out.println("serving " + r.uri("disk"));
        stop.await();
    }
}
