package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.file.Path;
import java.util.List;
import org.blockhaus.api.ConvertOptions;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The core's convert with skipUnallocated (qemu-img convert -B): only what the source's top layer
 * allocates reaches the target, whose own backing file provides the rest; qemu-img's -B output is
 * the reference (same content, same allocation map).
 */
class ConvertTopLayerTest {
    @TempDir
    Path dir;

    @Test
    void copiesOnlyTheTopLayerAsQemuImgConvertB() throws Exception {
        Path base = dir.resolve("base.qcow2");
        Path top = dir.resolve("top.qcow2");
        Qemu.img("create", "-f", "qcow2", base.toString(), "16M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 1 0 16M", base.toString()).ok();
        Qemu.img("create", "-f", "qcow2", "-b", base.toString(), "-F", "qcow2", top.toString()).ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 2 1M 3M", "-c", "write -z 6M 1M", "-c", "write -P 0 9M 64k",
                "-c", "write -P 3 12M 100k", top.toString()).ok();
        Path theirs = dir.resolve("theirs.qcow2");
        Qemu.img("convert", "-O", "qcow2", "-B", base.toString(), "-F", "qcow2", top.toString(), theirs.toString())
                .ok();
        Path ours = dir.resolve("ours.qcow2");
        Qemu.img("create", "-f", "qcow2", "-b", base.toString(), "-F", "qcow2", ours.toString()).ok();
        BlockCore core = Fixtures.core();
        try (Image src = Fixtures.openRo(core, top); Image dst = Fixtures.openRw(core, ours)) {
            core.convert(List.of(src), dst, ConvertOptions.DEFAULT.withSkipUnallocated(true), pct -> { });
        }
        assertEquals(0, Qemu.img("check", ours.toString()).exit());
        assertEquals(0, Qemu.img("compare", theirs.toString(), ours.toString()).exit());
        assertEquals(0, Qemu.img("compare", top.toString(), ours.toString()).exit());
        String strip = ", \"offset\": \\d+";
        assertEquals(Qemu.img("map", "--output=json", theirs.toString()).ok().out().replaceAll(strip, ""),
                Qemu.img("map", "--output=json", ours.toString()).ok().out().replaceAll(strip, ""));
    }

    @Test
    void chainStatusNamesTheLayerThatDecides() throws Exception {
        Path base = dir.resolve("b.qcow2");
        Path top = dir.resolve("t.qcow2");
        Qemu.img("create", "-f", "qcow2", base.toString(), "4M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 1 1M 1M", base.toString()).ok();
        Qemu.img("create", "-f", "qcow2", "-b", base.toString(), "-F", "qcow2", top.toString(), "8M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 2 0 64k", top.toString()).ok();
        BlockCore core = Fixtures.core();
        try (Image img = core.open(top.toString(), Options.of("driver", "qcow2"),
                org.blockhaus.api.BlockService.OpenMode.READ_ONLY)) {
            org.blockhaus.core.ChainStatus a = BlockCore.chainStatus(img, 0, 8 << 20);
            assertEquals(List.of(0, true, 65536L, true), List.of(a.depth(), a.allocated(), a.length(), a.isData()));
            org.blockhaus.core.ChainStatus b = BlockCore.chainStatus(img, 1 << 20, 7 << 20);
            assertEquals(List.of(1, true, 1L << 20, true), List.of(b.depth(), b.allocated(), b.length(), b.isData()));
            org.blockhaus.core.ChainStatus c = BlockCore.chainStatus(img, 2 << 20, 6 << 20);
            assertEquals(List.of(1, false, true), List.of(c.depth(), c.allocated(), c.isZero()));
            org.blockhaus.core.ChainStatus d = BlockCore.chainStatus(img, 5 << 20, 3 << 20);
            assertEquals(List.of(1, false, true), List.of(d.depth(), d.allocated(), d.isZero()));
        }
    }
}
