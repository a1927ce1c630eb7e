package org.blockhaus.format.qcow2;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.blockhaus.api.BlockService;
import org.blockhaus.api.ConvertOptions;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.core.BlockCore;

/** Not a test: `ConvertSpeedCheck <raw> <out.qcow2> [c]` times raw to qcow2 (compressed with c). */
public final class ConvertSpeedCheck {
    private ConvertSpeedCheck() {
    }

    public static void main(String[] args) throws Exception {
        if (args[0].equals("prealloc")) { // prealloc <out.qcow2> <size>: metadata preallocation, then check
            long t0 = System.nanoTime();
            BlockCore core = Fixtures.core();
            Fixtures.create(core, Path.of(args[1]), org.blockhaus.api.Sizes.parse(args[2]), "preallocation", "metadata");
            long t1 = System.nanoTime();
            try (Image i = Fixtures.openRo(core, Path.of(args[1]))) {
                System.out.println(((org.blockhaus.api.spi.CheckableNode) i.driverNode())
                        .check(org.blockhaus.api.spi.CheckResult.Repair.NONE));
            }
            System.out.printf("create %.2f s, check %.2f s%n", (t1 - t0) / 1e9, (System.nanoTime() - t1) / 1e9);
            return;
        }
        if (args[0].equals("toraw")) { // toraw <in.qcow2> <out.raw>: qcow2 to raw, three times in one JVM
            for (int k = 0; k < 3; k++) {
                long t0 = System.nanoTime();
                BlockCore core = Fixtures.core();
                Path out = Path.of(args[2]);
                Files.deleteIfExists(out);
                try (Image in = Fixtures.openRo(core, Path.of(args[1]))) {
                    core.create(out.toString(), "raw", Options.of("size", Long.toString(in.size())), s -> { }, w -> { });
                    try (Image o = core.open(out.toString(), Options.of("driver", "raw"),
                            BlockService.OpenMode.READ_WRITE)) {
                        core.convert(List.of(in), o, ConvertOptions.DEFAULT.withTargetIsZero(true),
                                BlockService.Progress.NONE);
                    }
                }
                System.out.printf("qcow2 to raw %.2f s%n", (System.nanoTime() - t0) / 1e9);
            }
            return;
        }
        Path src = Path.of(args[0]);
        Path out = Path.of(args[1]);
        boolean compress = args.length > 2;
        Files.deleteIfExists(out);
        long t0 = System.nanoTime();
        BlockCore core = Fixtures.core();
        Fixtures.create(core, out, Files.size(src));
        try (Image in = core.open(src.toString(), Options.of("driver", "raw"), BlockService.OpenMode.READ_ONLY);
                Image o = Fixtures.openRw(core, out)) {
            core.convert(List.of(in), o, ConvertOptions.DEFAULT.withCompress(compress).withTargetIsZero(true),
                    BlockService.Progress.NONE);
        }
        System.out.printf("%.2f s%n", (System.nanoTime() - t0) / 1e9);
    }
}
