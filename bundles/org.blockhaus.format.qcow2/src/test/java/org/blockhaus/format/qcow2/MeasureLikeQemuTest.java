package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.file.Path;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.api.spi.MeasureResult;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/** Our measure equals `qemu-img measure --output=json -O qcow2`. */
class MeasureLikeQemuTest {
    @TempDir
    Path dir;

    private static String expected(String json) {
        Matcher r = Pattern.compile("\"required\": (\\d+)").matcher(json);
        Matcher f = Pattern.compile("\"fully-allocated\": (\\d+)").matcher(json);
        r.find();
        f.find();
        return r.group(1) + "/" + f.group(1);
    }

    private static String actual(MeasureResult m) {
        return m.required() + "/" + m.fullyAllocated();
    }

    private static Options opts(String o) throws Exception {
        return o.isEmpty() ? Options.empty() : Options.parseKeyValue(o.replace(';', ','), null);
    }

    @ParameterizedTest(name = "[{index}] {0} {1}")
    @CsvSource({
        "'',1M", "'',1G", "'',100G", "cluster_size=4k;refcount_bits=64,10G", "extended_l2=on,10G",
        "cluster_size=512,3G", "cluster_size=2M;refcount_bits=1,1T", "preallocation=full,5G"})
    void measureOfEmptyImageMatchesQemu(String o, String size) throws Exception {
        String json = o.isEmpty() ? Qemu.img("measure", "--output=json", "-O", "qcow2", "--size", size).ok().out()
                : Qemu.img("measure", "--output=json", "-O", "qcow2", "-o", o.replace(';', ','), "--size", size).ok().out();
        MeasureResult m = new Qcow2Driver().measure(opts(o), org.blockhaus.api.Sizes.parse(size), null);
        assertEquals(expected(json), actual(m));
    }

    @Test
    void measureOfQcow2ChainMatchesQemu() throws Exception {
        Path base = dir.resolve("base.qcow2");
        Qemu.img("create", "-f", "qcow2", base.toString(), "64M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 1 0 3M", "-c", "write -P 2 20M 100k", base.toString()).ok();
        Path top = dir.resolve("top.qcow2");
        Qemu.img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top.toString()).ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 3 40M 1M", "-c", "write -z 0 1M", "-c", "write -P 4 33M 5k",
                top.toString()).ok();
        for (String o : new String[] {"", "cluster_size=4k", "cluster_size=1M"}) {
            String json = o.isEmpty() ? Qemu.img("measure", "--output=json", "-O", "qcow2", top.toString()).ok().out()
                    : Qemu.img("measure", "--output=json", "-O", "qcow2", "-o", o, top.toString()).ok().out();
            BlockCore core = Fixtures.core();
            try (Image i = Fixtures.openRo(core, top)) {
                assertEquals(expected(json), actual(new Qcow2Driver().measure(opts(o), 0, i)), o);
            }
        }
    }
}
