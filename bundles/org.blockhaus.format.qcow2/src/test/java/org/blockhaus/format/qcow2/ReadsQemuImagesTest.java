package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.blockhaus.api.BlockStatus;
import org.blockhaus.api.Image;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/** Images made and written by qemu-img / qemu-io 7.2 read back exactly as `qemu-img convert -O raw` sees them. */
class ReadsQemuImagesTest {
    @TempDir
    Path dir;

    private static final String[] WRITES = {
        "write -P 0xab 0 64k", "write -P 0xcd 102400 3072", "write -P 0x11 1M 1536k",
        "write -z 1280k 128k", "write -P 0x5a 4000k 96k", "discard 1152k 64k", "write -P 0x77 3M 512"};

    private void qemuWrites(Path img) {
        for (String w : WRITES) {
            Qemu.io("-f", "qcow2", "-c", w, img.toString()).ok();
        }
    }

    private void assertReadsLikeQemu(Path img) throws Exception {
        byte[] expected = Fixtures.qemuRaw(img, dir);
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRo(core, img)) {
            byte[] actual = Fixtures.readAll(i);
            assertEquals(expected.length, actual.length, "virtual size");
            assertArrayEquals(expected, actual, "content of " + img.getFileName());
        }
    }

    @ParameterizedTest(name = "cluster_size={0} compat={1} {2}")
    @CsvSource({
        "512,0.10,", "512,1.1,", "4k,0.10,", "4k,1.1,", "64k,0.10,", "64k,1.1,", "2M,0.10,", "2M,1.1,",
        "64k,1.1,extended_l2=on", "16k,1.1,extended_l2=on", "64k,1.1,refcount_bits=1", "4k,1.1,refcount_bits=64",
        "64k,1.1,lazy_refcounts=on", "64k,1.1,preallocation=metadata", "64k,1.1,compression_type=zstd"})
    void opensImageMadeByQemu(String clusterSize, String compat, String extra) throws Exception {
        Path img = dir.resolve("q.qcow2");
        String o = "cluster_size=" + clusterSize + ",compat=" + compat + (extra == null ? "" : "," + extra);
        Qemu.img("create", "-f", "qcow2", "-o", o, img.toString(), "5M").ok();
        qemuWrites(img);
        assertReadsLikeQemu(img);
    }

    @ParameterizedTest(name = "cluster_size={0} {1}")
    @CsvSource({"512,zlib", "4k,zlib", "64k,zlib", "2M,zlib", "512,zstd", "4k,zstd", "64k,zstd", "2M,zstd"})
    void readsCompressedClusters(String clusterSize, String type) throws Exception {
        Path raw = dir.resolve("src.raw");
        byte[] data = new byte[3 << 20];
        for (int i = 0; i < data.length; i++) {
            data[i] = (byte) ((i / 4096) % 7 == 0 ? 0 : (i * 31 / 4096 + i % 13)); // compressible, some zero runs
        }
        System.arraycopy(Fixtures.pattern(200_000, 7), 0, data, 500_000, 200_000); // incompressible part
        Files.write(raw, data);
        Path img = dir.resolve("c.qcow2");
        Qemu.img("convert", "-c", "-O", "qcow2", "-o", "cluster_size=" + clusterSize + ",compression_type=" + type,
                raw.toString(), img.toString()).ok();
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRo(core, img)) {
            assertArrayEquals(data, Fixtures.readAll(i));
        }
    }

    @Test
    void readsBackingChainThreeDeep() throws Exception {
        Path base = dir.resolve("base.qcow2");
        Path mid = dir.resolve("mid.qcow2");
        Path top = dir.resolve("top.qcow2");
        Qemu.img("create", "-f", "qcow2", "-o", "compat=0.10", base.toString(), "6M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 0x01 0 6M", base.toString()).ok();
        Qemu.img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", mid.toString()).ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 0x02 1M 1M", "-c", "write -z 3M 64k", mid.toString()).ok();
        Qemu.img("create", "-f", "qcow2", "-o", "cluster_size=4k", "-b", "mid.qcow2", "-F", "qcow2", top.toString(),
                "8M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 0x03 1500k 10k", "-c", "write -P 0x04 7M 4k", top.toString()).ok();
        assertReadsLikeQemu(top);
    }

    @Test
    void readsRawBackingNamedInHeaderExtension() throws Exception {
        Path base = dir.resolve("b.raw");
        Files.write(base, Fixtures.pattern(1 << 20, 3));
        Path top = dir.resolve("t.qcow2");
        Qemu.img("create", "-f", "qcow2", "-o", "compat=0.10", "-b", "b.raw", "-F", "raw", top.toString(), "2M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 0x99 4k 4k", top.toString()).ok();
        assertReadsLikeQemu(top);
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRo(core, top)) {
            Map<String, Object> info = i.info();
            assertEquals("b.raw", info.get("backing-filename"));
            assertEquals("raw", info.get("backing-filename-format"));
            assertEquals("raw", i.backing().driverName());
        }
    }

    @Test
    void infoMatchesQemuImgInfo() throws Exception {
        Path img = dir.resolve("i.qcow2");
        Qemu.img("create", "-f", "qcow2", "-o", "lazy_refcounts=on,refcount_bits=32,cluster_size=32k", img.toString(),
                "3M").ok();
        String json = Qemu.img("info", "--output=json", img.toString()).ok().out();
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRo(core, img)) {
            Map<String, Object> info = i.info();
            assertEquals(32768L, info.get("cluster-size"));
            assertEquals(false, info.get("dirty-flag"));
            @SuppressWarnings("unchecked")
            Map<String, Object> data = (Map<String, Object>) ((Map<String, Object>) info.get("format-specific")).get("data");
            assertEquals("{\"compat\":\"1.1\",\"compression-type\":\"zlib\",\"lazy-refcounts\":true,"
                    + "\"refcount-bits\":32,\"corrupt\":false,\"extended-l2\":false}", toJson(data));
            assertEquals(squash(json.substring(json.indexOf("\"data\": {") + 8, json.indexOf("}", json.indexOf("\"data\": {")) + 1)),
                    toJson(data));
        }
    }

    private static String squash(String s) {
        return s.replaceAll("\\s+", "");
    }

    private static String toJson(Map<String, Object> m) {
        StringBuilder sb = new StringBuilder("{");
        m.forEach((k, v) -> {
            if (sb.length() > 1) {
                sb.append(',');
            }
            sb.append('"').append(k).append("\":");
            sb.append(v instanceof String s ? "\"" + s + "\"" : String.valueOf(v));
        });
        return sb.append('}').toString();
    }

    /** Block status per range equals `qemu-img map --output=json` for an image without backing file. */
    @ParameterizedTest(name = "{0}")
    @CsvSource({"compat=1.1", "compat=0.10", "compat=1.1;cluster_size=4k", "compat=1.1;extended_l2=on"})
    void blockStatusMatchesQemuImgMap(String opts) throws Exception {
        Path img = dir.resolve("m.qcow2");
        Qemu.img("create", "-f", "qcow2", "-o", opts.replace(';', ','), img.toString(), "5M").ok();
        qemuWrites(img);
        String json = Qemu.img("map", "--output=json", img.toString()).ok().out();
        List<String> expected = new ArrayList<>();
        long lastStart = 0;
        long lastLen = 0;
        long lastHost = -1;
        String lastKey = null;
        Matcher m = Pattern.compile("\\{ \"start\": (\\d+), \"length\": (\\d+), \"depth\": \\d+, \"present\": (\\w+),"
                + " \"zero\": (\\w+), \"data\": (\\w+)(?:, \"offset\": (\\d+))?").matcher(json);
        while (m.find()) {
            // qemu-img map sometimes splits runs that have equal flags: merge them as we merge ours.
            boolean data = m.group(5).equals("true");
            long start = Long.parseLong(m.group(1));
            long len = Long.parseLong(m.group(2));
            String key = "present=" + m.group(3) + " zero=" + m.group(4) + " data=" + data;
            long host = data ? Long.parseLong(m.group(6)) : -1;
            if (!expected.isEmpty() && key.equals(lastKey) && (!data || host == lastHost + lastLen)) {
                expected.remove(expected.size() - 1);
                lastLen += len;
            } else {
                lastStart = start;
                lastLen = len;
                lastHost = host;
                lastKey = key;
            }
            expected.add(lastStart + "+" + lastLen + " " + key + (data ? " @" + lastHost : ""));
        }
        BlockCore core = Fixtures.core();
        List<String> actual = new ArrayList<>();
        try (Image i = Fixtures.openRo(core, img)) {
            long off = 0;
            long size = i.size();
            long runStart = 0;
            String runKey = null;
            long runHost = -1;
            long runLen = 0;
            while (off < size) {
                BlockStatus s = i.driverNode().blockStatus(off, size - off);
                String key = "present=" + s.isAllocated() + " zero=" + s.isZero() + " data=" + s.isData();
                boolean joins = key.equals(runKey) && (!s.isData() || s.hostOffset() == runHost + runLen);
                if (!joins) {
                    if (runKey != null) {
                        actual.add(runStart + "+" + runLen + " " + runKey + (runKey.endsWith("true") ? " @" + runHost : ""));
                    }
                    runKey = key;
                    runStart = off;
                    runHost = s.hostOffset();
                    runLen = 0;
                }
                runLen += s.length();
                off += s.length();
            }
            actual.add(runStart + "+" + runLen + " " + runKey + (runKey.endsWith("true") ? " @" + runHost : ""));
        }
        assertEquals(String.join("\n", expected), String.join("\n", actual));
    }
}
