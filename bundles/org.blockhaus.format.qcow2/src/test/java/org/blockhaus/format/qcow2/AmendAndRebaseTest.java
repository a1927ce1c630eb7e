package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.api.spi.AmendableNode;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** qemu-img amend and rebase -u on qcow2: qemu-img sees the new header, content stays. */
class AmendAndRebaseTest {
    @TempDir
    Path dir;

    private void amend(Path img, String... kv) throws Exception {
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRw(core, img)) {
            ((AmendableNode) i.driverNode()).amend(Options.of(kv), false);
        }
    }

    private String info(Path img) {
        return Qemu.img("info", "--output=json", img.toString()).ok().out();
    }

    @Test
    void downgradeToVersion2ExpandsZeroClusters() throws Exception {
        Path base = dir.resolve("base.raw");
        Files.write(base, Fixtures.pattern(4 << 20, 9));
        for (String backing : new String[] {null, "base.raw"}) {
            Path img = dir.resolve("d.qcow2");
            Files.deleteIfExists(img);
            if (backing == null) {
                Qemu.img("create", "-f", "qcow2", img.toString(), "4M").ok();
            } else {
                Qemu.img("create", "-f", "qcow2", "-b", backing, "-F", "raw", img.toString()).ok();
            }
            Qemu.io("-f", "qcow2", "-c", "write -P 7 0 1M", "-c", "write -z 64k 128k", "-c", "write -z 2M 64k",
                    "-c", "write -z -u 3M 64k", img.toString()).ok();
            byte[] before = Fixtures.qemuRaw(img, dir);
            amend(img, "compat", "0.10");
            assertTrue(info(img).contains("\"compat\": \"0.10\""), info(img));
            assertEquals(0, Qemu.img("check", img.toString()).exit());
            assertArrayEquals(before, Fixtures.qemuRaw(img, dir), "backing " + backing);
        }
    }

    @Test
    void upgradeToVersion3AndLazyRefcounts() throws Exception {
        Path img = dir.resolve("u.qcow2");
        Qemu.img("create", "-f", "qcow2", "-o", "compat=0.10", img.toString(), "4M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 3 100k 200k", img.toString()).ok();
        byte[] before = Fixtures.qemuRaw(img, dir);
        amend(img, "compat", "1.1", "lazy_refcounts", "on");
        String info = info(img);
        assertTrue(info.contains("\"compat\": \"1.1\"") && info.contains("\"lazy-refcounts\": true"), info);
        assertEquals(0, Qemu.img("check", img.toString()).exit());
        assertArrayEquals(before, Fixtures.qemuRaw(img, dir));
        amend(img, "lazy_refcounts", "off");
        assertTrue(info(img).contains("\"lazy-refcounts\": false"));
    }

    @org.junit.jupiter.params.ParameterizedTest(name = "{0} to {1} bits")
    @org.junit.jupiter.params.provider.CsvSource({"16,1", "16,64", "1,8", "64,2", "16,4"})
    void changesTheRefcountWidth(int from, int to) throws Exception {
        Path img = dir.resolve("w.qcow2");
        Qemu.img("create", "-f", "qcow2", "-o", "cluster_size=4k,refcount_bits=" + from, img.toString(), "8M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 1 0 3M", "-c", "write -P 2 5M 1M", img.toString()).ok();
        if (from >= 2 && to >= 2) {
            Qemu.img("snapshot", "-c", "s", img.toString()).ok(); // refcounts of 2 must survive
        }
        byte[] before = Fixtures.qemuRaw(img, dir);
        amend(img, "refcount_bits", Integer.toString(to));
        String info = info(img);
        assertTrue(info.contains("\"refcount-bits\": " + to), info);
        Qemu.Result check = Qemu.img("check", img.toString());
        assertEquals(0, check.exit(), check.out() + check.err());
        assertArrayEquals(before, Fixtures.qemuRaw(img, dir));
        Qemu.io("-f", "qcow2", "-c", "write -P 3 7M 100k", img.toString()).ok(); // qemu keeps writing
        assertEquals(0, Qemu.img("check", img.toString()).exit());
    }

    /**
     * Found by DifferentialWorkloadTest (seeds 7015, 7024): a downgrade refused for its refcount
     * width wrote the version 2 header first. Each amend goes to a qemu twin too: both refuse or
     * both succeed, and afterwards both headers say the same and read the same.
     */
    @org.junit.jupiter.params.ParameterizedTest(name = "refcount_bits={0}: amend {1}")
    @org.junit.jupiter.params.provider.CsvSource(delimiter = ';', value = {
        "16; compat=0.10,refcount_bits=32", "8; compat=0.10,refcount_bits=16", "8; compat=0.10",
        "16; compat=0.10,lazy_refcounts=on", "1; compat=0.10,refcount_bits=16,lazy_refcounts=off"})
    void refusedAmendsChangeNothingAndWidthsGoBackBeforeADowngrade(int from, String opts) throws Exception {
        Path img = dir.resolve("o.qcow2");
        Path twin = dir.resolve("t.qcow2");
        for (Path p : new Path[] {img, twin}) {
            Qemu.img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096,refcount_bits=" + from, p.toString(), "4M")
                    .ok();
            Qemu.io("-f", "qcow2", "-c", "write -P 9 0 1M", "-c", "write -z 2M 64k", p.toString()).ok();
        }
        byte[] before = Files.readAllBytes(img);
        boolean ourOk = true;
        try {
            amend(img, opts.split("[,=]"));
        } catch (BlockException e) {
            ourOk = false;
        }
        boolean qemuOk = Qemu.img("amend", "-f", "qcow2", "-o", opts, twin.toString()).exit() == 0;
        assertEquals(qemuOk, ourOk, "both refuse or both amend");
        if (!ourOk) {
            assertArrayEquals(before, Files.readAllBytes(img), "a refused amend leaves the file as it was");
        }
        String ours = info(img).replaceAll("\"(filename|actual-size|dirty-flag)\": [^,]*,", "");
        String theirs = info(twin).replaceAll("\"(filename|actual-size|dirty-flag)\": [^,]*,", "");
        assertEquals(theirs, ours);
        assertEquals(0, Qemu.img("check", img.toString()).exit());
        assertArrayEquals(Fixtures.qemuRaw(twin, dir), Fixtures.qemuRaw(img, dir));
    }

    /**
     * qemu 7.2 downgrades an image with internal snapshots when every snapshot has the image's
     * disk size (found by DifferentialWorkloadTest, seeds 7089 and others: ours refused every
     * one). Zero clusters in the snapshots' tables are expanded too, and a resized image must be
     * refused by both. Each snapshot must read afterwards as it did before: qemu 7.2 itself fails
     * that when the active layer zeroed a cluster it shares with a snapshot (write -z keeps the
     * host cluster): its downgrade writes zeroes into the shared cluster and leaves it flagged
     * COPIED with refcount 2 (check: "ERROR OFLAG_COPIED data cluster"). So the snapshots are
     * compared with qemu's reading of them before the downgrade, not with qemu's twin after it.
     */
    @org.junit.jupiter.params.ParameterizedTest(name = "backing {0}, resized {1}")
    @org.junit.jupiter.params.provider.CsvSource({"false,false", "true,false", "false,true"})
    void downgradesWithSnapshotsAsQemu(boolean withBacking, boolean resized) throws Exception {
        Path base = dir.resolve("base.qcow2");
        Qemu.img("create", "-q", "-f", "qcow2", base.toString(), "4M").ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 0x44 0 4M", base.toString()).ok();
        Path img = dir.resolve("s.qcow2");
        Path twin = dir.resolve("st.qcow2");
        for (Path p : new Path[] {img, twin}) {
            if (withBacking) {
                Qemu.img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", base.toString(), "-F", "qcow2",
                        p.toString(), "4M").ok();
            } else {
                Qemu.img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", p.toString(), "4M").ok();
            }
            Qemu.io("-f", "qcow2", "-c", "write -P 1 0 1M", "-c", "write -z 64k 64k", "-c", "write -z -u 256k 32k",
                    "-c", "write -z 2M 128k", p.toString()).ok();
            Qemu.img("snapshot", "-c", "a", p.toString()).ok();
            Qemu.io("-f", "qcow2", "-c", "write -P 2 32k 64k", "-c", "write -z 512k 64k", "-c", "write -z -u 3M 8k",
                    p.toString()).ok();
            Qemu.img("snapshot", "-c", "b", p.toString()).ok();
            Qemu.io("-f", "qcow2", "-c", "write -z 0 16k", p.toString()).ok();
            if (resized) {
                Qemu.img("resize", "-q", p.toString(), "+1M").ok();
            }
        }
        List<byte[]> snapshotsBefore = new java.util.ArrayList<>();
        for (String snap : new String[] {"a", "b"}) {
            Path x = dir.resolve("x.raw");
            Qemu.img("convert", "-l", "snapshot.name=" + snap, "-O", "raw", img.toString(), x.toString()).ok();
            snapshotsBefore.add(Files.readAllBytes(x));
        }
        boolean ourOk = true;
        try {
            amend(img, "compat", "0.10");
        } catch (BlockException e) {
            ourOk = false;
        }
        boolean qemuOk = Qemu.img("amend", "-f", "qcow2", "-o", "compat=0.10", twin.toString()).exit() == 0;
        assertEquals(qemuOk, ourOk, "both downgrade or both refuse");
        assertEquals(!resized, ourOk);
        Qemu.Result check = Qemu.img("check", img.toString());
        assertEquals(0, check.exit(), check.out() + check.err());
        assertEquals(info(twin).contains("\"compat\": \"0.10\""), info(img).contains("\"compat\": \"0.10\""));
        assertArrayEquals(Fixtures.qemuRaw(twin, dir), Fixtures.qemuRaw(img, dir));
        for (int i = 0; i < 2; i++) {
            String snap = i == 0 ? "a" : "b";
            Path y = dir.resolve("y.raw");
            Qemu.img("convert", "-l", "snapshot.name=" + snap, "-O", "raw", img.toString(), y.toString()).ok();
            assertArrayEquals(snapshotsBefore.get(i), Files.readAllBytes(y), "snapshot " + snap);
        }
    }

    @Test
    void refusesWhatItCannotChange() throws Exception {
        Path img = dir.resolve("r.qcow2");
        Qemu.img("create", "-f", "qcow2", img.toString(), "1M").ok();
        BlockException e = assertThrows(BlockException.class, () -> amend(img, "cluster_size", "4096"));
        assertTrue(e.getMessage().contains("cluster size"), e.getMessage());
        assertThrows(BlockException.class, () -> amend(img, "encrypt.format", "luks"));
        assertEquals(0, Qemu.img("check", img.toString()).exit());
    }

    @Test
    void rebaseUnsafeChangesOnlyTheHeader() throws Exception {
        Files.write(dir.resolve("a.raw"), new byte[1 << 20]);
        Path b = dir.resolve("b.qcow2");
        Qemu.img("create", "-f", "qcow2", b.toString(), "1M").ok();
        Path img = dir.resolve("t.qcow2");
        Qemu.img("create", "-f", "qcow2", "-b", "a.raw", "-F", "raw", img.toString()).ok();
        Qemu.io("-f", "qcow2", "-c", "write -P 5 0 4k", img.toString()).ok();
        BlockCore core = Fixtures.core();
        try (Image i = Fixtures.openRw(core, img)) {
            ((AmendableNode) i.driverNode()).changeBackingFile("b.qcow2", "qcow2");
        }
        String info = info(img);
        assertTrue(info.contains("\"backing-filename\": \"b.qcow2\"")
                && info.contains("\"backing-filename-format\": \"qcow2\""), info);
        assertEquals(0, Qemu.img("check", img.toString()).exit());
        try (Image i = Fixtures.openRw(core, img)) {
            ((AmendableNode) i.driverNode()).changeBackingFile(null, null);
        }
        assertFalse(info(img).contains("backing-filename"), info(img));
        Qemu.io("-r", "-f", "qcow2", "-c", "read -P 5 0 4k", img.toString()).ok();
        assertEquals(0, Qemu.img("check", img.toString()).exit());
    }
}
