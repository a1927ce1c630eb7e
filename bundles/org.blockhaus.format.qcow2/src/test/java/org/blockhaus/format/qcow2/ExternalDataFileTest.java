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
}
