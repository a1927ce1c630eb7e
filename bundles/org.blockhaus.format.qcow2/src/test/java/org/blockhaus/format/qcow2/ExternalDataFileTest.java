package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Map;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.Image;
import org.blockhaus.api.spi.SnapshotNode;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/** Images with an external data file (made by qemu-img) read and write like qemu's. */
class ExternalDataFileTest {
    @TempDir
    Path dir;

    @ParameterizedTest(name = "data_file_raw={0}")
    @ValueSource(strings = {"on", "off"})
    void readsAndWritesImagesWithDataFile(String raw) throws Exception {
        Path img = dir.resolve("d.qcow2");
        Path dataFile = dir.resolve("d.data");
        Qemu.img("create", "-f", "qcow2", "-o", "data_file=" + dataFile + ",data_file_raw=" + raw, img.toString(), "4M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 1 0 64k", "-c", "write -z 128k 64k", "-c", "write -P 2 1M 10k",
                img.toString()).ok();
        byte[] ref = Fixtures.qemuRaw(img, dir);
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRw(core, img)) {
            assertArrayEquals(ref, Fixtures.readAll(i));
            @SuppressWarnings("unchecked")
            Map<String, Object> data = (Map<String, Object>) ((Map<String, Object>) i.info().get("format-specific"))
                    .get("data");
            assertEquals(dataFile.toString(), data.get("data-file"));
            assertEquals(raw.equals("on"), data.get("data-file-raw"));
            byte[] p = new byte[5000];
            Arrays.fill(p, (byte) 0x33);
            i.write(3000, ByteBuffer.wrap(p), 0);
            System.arraycopy(p, 0, ref, 3000, p.length);
            i.write(2 << 20, ByteBuffer.wrap(p), 0); // unallocated cluster: allocated at the guest offset
            System.arraycopy(p, 0, ref, 2 << 20, p.length);
            i.writeZeroes(0, 65536, BlockNode.MAY_UNMAP);
            Arrays.fill(ref, 0, 65536, (byte) 0);
            assertThrows(BlockException.class, () -> ((SnapshotNode) i.driverNode()).createSnapshot("s"));
        }
        assertEquals(0, Qemu.img("check", img.toString()).exit(), Qemu.img("check", img.toString()).out());
        Path expected = dir.resolve("e.raw");
        Files.write(expected, ref);
        assertEquals(0, Qemu.img("compare", "-f", "raw", "-F", "qcow2", expected.toString(), img.toString()).exit());
        if (raw.equals("on")) {
            byte[] d = Files.readAllBytes(dataFile);
            assertArrayEquals(ref, Arrays.copyOf(d, ref.length), "data_file_raw: the data file is the disk");
        }
    }

    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"data_file_raw=off", "data_file_raw=on", "data_file_raw=on,preallocation=full"})
    void createsImagesWithDataFileLikeQemuImg(String opts) throws Exception {
        Path theirs = dir.resolve("theirs.qcow2");
        // absolute names: qemu-img resolves a relative data_file against its working directory
        Path theirsData = dir.resolve("theirs.data");
        Path oursData = dir.resolve("ours.data");
        String expectedLine = Qemu.img("create", "-f", "qcow2", "-o", "data_file=" + theirsData + "," + opts,
                theirs.toString(), "3M").ok().out().trim().replaceFirst("^Formatting '[^']*', ", "");
        Path ours = dir.resolve("ours.qcow2");
        BlockCore core = Fixtures.core();
        String[] kv = ("data_file=" + oursData + "," + opts).replace(',', '=').split("=");
        String summary = Fixtures.create(core, ours, 3 << 20, kv);
        assertEquals(expectedLine.replace(theirsData.toString(), oursData.toString()), summary);
        assertEquals(Files.size(dir.resolve("theirs.data")), Files.size(dir.resolve("ours.data")));
        // the same mapping; whether a sparse data file's holes show as "zero" is the block layer's
        // business (qemu-img does not look into the data file), so that flag is left out
        assertEquals(Qemu.img("map", "--output=json", theirs.toString()).ok().out().replaceAll("\"zero\": \\w+, ", ""),
                Qemu.img("map", "--output=json", ours.toString()).ok().out().replaceAll("\"zero\": \\w+, ", ""));
        assertEquals(0, Qemu.img("check", ours.toString()).exit());
        byte[] p = new byte[70_000];
        Arrays.fill(p, (byte) 0x21);
        try (Image i = Fixtures.openRw(core, ours)) {
            i.write(100_000, ByteBuffer.wrap(p), 0);
        }
        Qemu.io("-r", "-f", "qcow2", "-c", "read -P 0x21 100000 70000", "-c", "read -P 0 0 100000", ours.toString())
                .ok();
        if (opts.contains("raw=on")) {
            byte[] d = Files.readAllBytes(dir.resolve("ours.data"));
            assertArrayEquals(p, Arrays.copyOfRange(d, 100_000, 170_000));
        }
    }

    @org.junit.jupiter.api.Test
    void refusesDataFileCombinationsAsQemuImgDoes() throws Exception {
        Files.write(dir.resolve("b.raw"), new byte[1 << 20]);
        String[][] cases = {
            {"-o", "data_file=" + dir.resolve("x.data") + ",compat=0.10"},
            {"-o", "data_file=" + dir.resolve("x.data") + ",data_file_raw=on", "-b", "b.raw", "-F", "raw"},
            {"-o", "data_file_raw=on"}};
        String[][] ours = {
            {"data_file", "x.data", "compat", "0.10"},
            {"data_file", "x.data", "data_file_raw", "on", "backing_file", "b.raw", "backing_fmt", "raw"},
            {"data_file_raw", "on"}};
        BlockCore core = Fixtures.core();
        for (int k = 0; k < cases.length; k++) {
            java.util.List<String> args = new java.util.ArrayList<>(java.util.List.of("create", "-f", "qcow2"));
            args.addAll(java.util.List.of(cases[k]));
            args.add(dir.resolve("q" + k + ".qcow2").toString());
            args.add("1M");
            Qemu.Result q = Qemu.img(args.toArray(String[]::new));
            assertEquals(1, q.exit());
            String expected = q.err().trim().replaceFirst("^qemu-img: [^:]*: ", "");
            Path img = dir.resolve("o" + k + ".qcow2");
            String[] opts = ours[k];
            BlockException e = assertThrows(BlockException.class, () -> Fixtures.create(core, img, 1 << 20, opts));
            assertEquals(expected, e.getMessage().replaceFirst("^" + java.util.regex.Pattern.quote(img.toString())
                    + ": ", ""));
        }
    }
}
