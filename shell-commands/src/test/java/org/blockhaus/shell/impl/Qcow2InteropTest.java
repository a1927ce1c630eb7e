package org.blockhaus.shell.impl;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * The command line against qemu-img 7.2 on qcow2 images and chains that qemu-img and qemu-io
 * made: the same output line for line, the same exit codes, and images that qemu-img finds
 * identical (content, info, allocation map) to the ones qemu-img itself leaves behind.
 */
class Qcow2InteropTest extends QemuComparison {
    /** base.qcow2 &lt;- mid.qcow2 &lt;- top.qcow2, with data, zeroes and holes in every layer. */
    static final List<String> CHAIN = List.of("base.qcow2", "mid.qcow2", "top.qcow2");

    private void chain() throws Exception {
        sh("qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "64M");
        sh("qemu-io", "-c", "write -P 1 0 1M", "-c", "write -P 2 10M 64k", "base.qcow2");
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "mid.qcow2");
        sh("qemu-io", "-c", "write -P 3 512k 1M", "-c", "write -z 20M 1M", "mid.qcow2");
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2");
        sh("qemu-io", "-c", "write -P 4 30M 128k", "top.qcow2");
    }

    private void rawImage() throws Exception {
        sh("qemu-img", "create", "-q", "-f", "raw", "r.raw", "64M");
        sh("qemu-io", "-f", "raw", "-c", "write -P 5 0 3M", "-c", "write -P 6 20M 100k", "r.raw");
    }

    private static String[] args(String first, String options, String... rest) {
        List<String> l = new ArrayList<>(List.of(first.split(" ")));
        if (!options.isBlank()) {
            l.addAll(List.of(options.trim().split(" ")));
        }
        l.addAll(List.of(rest));
        return l.toArray(String[]::new);
    }

    @ParameterizedTest
    @ValueSource(strings = {"", "-o cluster_size=4k", "-o compat=0.10", "-o lazy_refcounts=on", "-o refcount_bits=64",
        "-o preallocation=metadata", "-o cluster_size=16k,extended_l2=on", "-o compression_type=zlib,cluster_size=2M",
        "-o refcount_bits=1 -o compat=1.1", "-q"})
    void createPrintsQemuImgsFormattingLineAndMakesTheSameImage(String options) throws Exception {
        assertSameEffect(List.of(), args("create -f qcow2", options, "new.qcow2", "100M"));
    }

    @Test
    void createOnABackingFileTakesItsSizeUnlessOneIsGiven() throws Exception {
        chain();
        assertSameEffect(CHAIN, "create", "-f", "qcow2", "-b", "top.qcow2", "-F", "qcow2", "new.qcow2");
        assertSameEffect(CHAIN, "create", "-f", "qcow2", "-b", "top.qcow2", "-F", "qcow2", "new.qcow2", "1G");
        assertSameEffect(CHAIN, "create", "-f", "qcow2", "-u", "-b", "top.qcow2", "-F", "qcow2", "new.qcow2", "8M");
    }

    @Test
    void optionHelpListsOptionsSortedInQemuImgsColumns() throws Exception {
        String[][] cases = {
            {"create", "-f", "qcow2", "-o", "help"},
            {"create", "-f", "qcow2", "-o", "help", "new.qcow2"},
            {"create", "-f", "raw", "-o", "?"},
            {"create", "-f", "raw", "-o", "help", "new.raw"},
            {"create", "-f", "qcow2", "-o", "cluster_size=4k,help", "new.qcow2", "1M"},
            {"convert", "-O", "qcow2", "-o", "help"},
            {"convert", "-O", "qcow2", "-o", "help", "nofile"},
            {"convert", "-O", "qcow2", "-o", "help", "nofile", "new.qcow2"},
        };
        for (String[] c : cases) {
            assertSame(qemu(c), blk(c));
        }
        assertTrue(Files.notExists(dir.resolve("new.qcow2")));
    }

    @Test
    void infoOfAThreeDeepChainMatchesLineForLineAndFieldForField() throws Exception {
        chain();
        String[][] cases = {
            {"info", "top.qcow2"},
            {"info", "--output=json", "top.qcow2"},
            {"info", "--backing-chain", "top.qcow2"},
            {"info", "--backing-chain", "--output=json", "top.qcow2"},
            {"info", "-f", "qcow2", "-U", "mid.qcow2"},
            {"info", "--output", "json", "base.qcow2"},
            {"info", "-f", "raw", "top.qcow2"},
        };
        for (String[] c : cases) {
            assertSame(qemu(c), blk(c));
        }
    }

    @Test
    void mapOfAChainMatchesQemuImg() throws Exception {
        chain();
        String[][] cases = {
            {"map", "top.qcow2"},
            {"map", "--output=json", "top.qcow2"},
            {"map", "--output=json", "mid.qcow2"},
            {"map", "--output=json", "--start-offset=1M", "--max-length=20M", "top.qcow2"},
            {"map", "--start-offset=512k", "--max-length=1M", "top.qcow2"},
            {"map", "-f", "qcow2", "base.qcow2"},
        };
        for (String[] c : cases) {
            assertSame(qemu(c), blk(c));
        }
    }

    @Test
    void checkOfACleanImageReportsAsQemuImg() throws Exception {
        chain();
        for (String[] c : new String[][] {
            {"check", "top.qcow2"}, {"check", "--output=json", "mid.qcow2"}, {"check", "-q", "base.qcow2"},
            {"check", "-f", "qcow2", "-U", "top.qcow2"}}) {
            assertSame(qemu(c), blk(c));
        }
        assertSameEffect(CHAIN, "check", "-r", "all", "top.qcow2");
        assertSameEffect(CHAIN, "check", "-r", "leaks", "--output=json", "top.qcow2");
    }

    /** A cluster whose L2 entry is cleared stays referenced by its refcount: a leak. */
    private void leakyImage() throws Exception {
        sh("qemu-img", "create", "-q", "-f", "qcow2", "leak.qcow2", "64M");
        sh("qemu-io", "-c", "write -P 1 0 1M", "leak.qcow2");
        Path img = dir.resolve("leak.qcow2");
        try (var ch = java.nio.channels.FileChannel.open(img, java.nio.file.StandardOpenOption.READ,
                java.nio.file.StandardOpenOption.WRITE)) {
            java.nio.ByteBuffer b = java.nio.ByteBuffer.allocate(8);
            ch.read(b, 40);
            long l1 = b.flip().getLong();
            ch.read(b.clear(), l1);
            long l2 = b.flip().getLong() & 0x00fffffffffffe00L;
            ch.write(java.nio.ByteBuffer.allocate(8), l2 + 8 * 3);
        }
    }

    /**
     * Leaks: the same report and exit codes (3 before repair, 0 after). qemu-img also lists each
     * leaked cluster on stderr; the driver's check does not report them one by one, so stderr is
     * not compared here.
     */
    @Test
    void checkFindsAndRepairsLeaksLikeQemuImg() throws Exception {
        leakyImage();
        for (String[] c : new String[][] {{"check", "leak.qcow2"}, {"check", "--output=json", "leak.qcow2"},
            {"check", "-q", "leak.qcow2"}}) {
            Qemu.Run theirs = qemu(c);
            Qemu.Run ours = blk(c);
            assertEquals(3, theirs.exitCode());
            assertEquals(theirs.out(), ours.out(), String.join(" ", c));
            assertEquals(theirs.exitCode(), ours.exitCode(), String.join(" ", c));
        }
        for (String[] c : new String[][] {{"check", "-r", "leaks", "leak.qcow2"},
            {"check", "-r", "all", "--output=json", "leak.qcow2"}}) {
            Twin t = twin(List.of("leak.qcow2"), c);
            assertEquals(t.theirs().out(), t.ours().out(), String.join(" ", c));
            assertEquals(0, t.ours().exitCode());
            assertSameImages(t);
        }
    }

    @Test
    void compareAcrossFormatsSpeaksQemuImgsMessages() throws Exception {
        chain();
        rawImage();
        sh("qemu-img", "convert", "-O", "raw", "top.qcow2", "flat.raw");
        String[][] cases = {
            {"compare", "top.qcow2", "flat.raw"},
            {"compare", "-f", "qcow2", "-F", "raw", "top.qcow2", "flat.raw"},
            {"compare", "-s", "top.qcow2", "flat.raw"},
            {"compare", "-s", "top.qcow2", "top.qcow2"},
            {"compare", "r.raw", "top.qcow2"},
            {"compare", "base.qcow2", "top.qcow2"},
            {"compare", "-q", "base.qcow2", "top.qcow2"},
            {"compare", "-f", "raw", "top.qcow2", "r.raw"},
            {"compare", "-U", "-p", "r.raw", "top.qcow2"},
            {"compare", "top.qcow2", "nofile"},
        };
        for (String[] c : cases) {
            assertSame(qemu(c), blk(c));
        }
        for (String[] c : new String[][] {{"compare", "-p", "top.qcow2", "flat.raw"},
            {"compare", "-p", "top.qcow2", "top.qcow2"}, {"compare", "-p", "r.raw", "r.raw"},
            {"compare", "-p", "base.qcow2", "mid.qcow2"}}) {
            Qemu.Run ours = blk(c);
            assertSame(qemu(c), ours);
            assertTrue(ours.out().startsWith("    (0.00/100%)\r"), ours.out());
        }
    }

    @Test
    void convertBetweenRawAndQcow2LeavesWhatQemuImgLeaves() throws Exception {
        chain();
        rawImage();
        List<String> all = List.of("base.qcow2", "mid.qcow2", "top.qcow2", "r.raw");
        assertSameEffect(all, "convert", "-O", "qcow2", "r.raw", "new.qcow2");
        assertSameEffect(all, "convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4k", "r.raw", "new.qcow2");
        assertSameEffect(all, "convert", "-O", "raw", "top.qcow2", "new.raw");
        assertSameEffect(all, "convert", "-O", "qcow2", "top.qcow2", "new.qcow2");
        assertSameEffect(all, "convert", "-S", "0", "-O", "qcow2", "r.raw", "new.qcow2");
        assertSameEffect(all, "convert", "-m", "4", "-W", "-t", "none", "-T", "writeback", "-O", "qcow2", "top.qcow2",
                "new.qcow2");
        assertSameEffect(all, "convert", "--salvage", "-O", "qcow2", "r.raw", "new.qcow2");
        assertSameEffect(all, "convert", "-q", "-p", "-O", "qcow2", "r.raw", "new.qcow2");
        assertSameEffect(all, "convert", "-O", "qcow2", "r.raw", "top.qcow2", "new.qcow2");
        assertSameEffect(all, "convert", "-O", "qcow2", "-o", "compat=0.10,refcount_bits=16", "top.qcow2",
                "new.qcow2");
    }

    @Test
    void convertWithABackingFileCopiesOnlyTheTopLayer() throws Exception {
        chain();
        assertSameEffect(CHAIN, "convert", "-O", "qcow2", "-B", "mid.qcow2", "-F", "qcow2", "top.qcow2", "new.qcow2");
        assertSameEffect(CHAIN, "convert", "-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2", "top.qcow2",
                "new.qcow2");
        assertSameEffect(CHAIN, "convert", "-O", "qcow2", "-o", "backing_file=base.qcow2,backing_fmt=qcow2",
                "top.qcow2", "new.qcow2");
        assertSameEffect(CHAIN, "convert", "-O", "qcow2", "-o", "backing_file=base.qcow2", "top.qcow2", "new.qcow2");
    }

    @Test
    void convertIntoAnExistingImageWithN() throws Exception {
        rawImage();
        sh("qemu-img", "create", "-q", "-f", "qcow2", "t.qcow2", "64M");
        assertSameEffect(List.of("r.raw", "t.qcow2"), "convert", "-n", "-O", "qcow2", "r.raw",
                "t.qcow2");
        assertSameEffect(List.of("r.raw", "t.qcow2"), "convert", "-n", "--target-is-zero", "-O", "qcow2", "r.raw",
                "t.qcow2");
    }

    /** The bar counts data as qemu-img's does: the same redraws, byte for byte. */
    @Test
    void convertDrawsQemuImgsProgressBar() throws Exception {
        chain();
        rawImage();
        sh("qemu-img", "convert", "-c", "-O", "qcow2", "r.raw", "comp.qcow2");
        sh("qemu-img", "create", "-q", "-f", "qcow2", "empty.qcow2", "64M");
        for (String src : List.of("r.raw", "top.qcow2", "base.qcow2", "comp.qcow2", "empty.qcow2")) {
            for (String fmt : List.of("qcow2", "raw")) {
                Qemu.Run theirs = qemu("convert", "-p", "-O", fmt, src, "theirs." + fmt);
                Qemu.Run ours = blk("convert", "-p", "-O", fmt, src, "ours." + fmt);
                assertSame(theirs, ours);
                assertTrue(ours.out().startsWith("    (0.00/100%)\r"), ours.out());
                assertEquals(0, qemu("compare", "theirs." + fmt, "ours." + fmt).exitCode());
            }
        }
        Twin t = assertSameEffect(List.of("base.qcow2", "mid.qcow2", "top.qcow2", "r.raw"), "convert", "-p", "-O",
                "qcow2", "-B", "base.qcow2", "-F", "qcow2", "r.raw", "new.qcow2");
        assertTrue(t.ours().out().endsWith("    (100.00/100%)\r    (100.00/100%)\r\n"), t.ours().out());
        assertSameEffect(CHAIN, "convert", "-p", "-O", "qcow2", "-B", "mid.qcow2", "-F", "qcow2", "top.qcow2",
                "new.qcow2");
    }

    @Test
    void measureMatchesQemuImg() throws Exception {
        chain();
        rawImage();
        String[][] cases = {
            {"measure", "--size", "10G", "-O", "qcow2"},
            {"measure", "--output=json", "--size", "10G", "-O", "qcow2"},
            {"measure", "-O", "qcow2", "top.qcow2"},
            {"measure", "--output=json", "-O", "qcow2", "top.qcow2"},
            {"measure", "-O", "qcow2", "-o", "cluster_size=4k", "top.qcow2"},
            {"measure", "-O", "qcow2", "r.raw"},
            {"measure", "--output=json", "-f", "raw", "-O", "qcow2", "r.raw"},
            {"measure", "-O", "raw", "top.qcow2"},
        };
        for (String[] c : cases) {
            assertSame(qemu(c), blk(c));
        }
    }

    private void imageWithSnapshots() throws Exception {
        sh("qemu-img", "create", "-q", "-f", "qcow2", "s.qcow2", "64M");
        sh("qemu-io", "-c", "write -P 1 0 1M", "s.qcow2");
        sh("qemu-img", "snapshot", "-c", "first", "s.qcow2");
        sh("qemu-io", "-c", "write -P 2 0 64k", "s.qcow2");
        sh("qemu-img", "snapshot", "-c", "a-rather-long-snapshot-name", "s.qcow2");
        sh("qemu-io", "-c", "write -P 3 1M 64k", "s.qcow2");
    }

    @Test
    void snapshotTablesMatchQemuImg() throws Exception {
        imageWithSnapshots();
        for (String[] c : new String[][] {{"snapshot", "-l", "s.qcow2"}, {"snapshot", "s.qcow2"},
            {"info", "s.qcow2"}, {"info", "--output=json", "s.qcow2"}}) {
            assertSame(qemu(c), blk(c));
        }
    }

    @Test
    void convertAndMeasureReadInternalSnapshotsLikeQemuImg() throws Exception {
        imageWithSnapshots();
        // one snapshot made by us, read by both
        assertEquals(0, blk("snapshot", "-c", "ours", "s.qcow2").exitCode());
        sh("qemu-io", "-c", "write -P 4 0 64k", "s.qcow2");
        sh("qemu-img", "create", "-q", "-f", "raw", "r.raw", "1M");
        String[] specs = {"first", "1", "2", "ours", "snapshot.name=first", "snapshot.id=2",
            "snapshot.id=1,snapshot.name=first", "snapshot.id=2,snapshot.name=first", "nosuch", "snapshot.foo=1",
            "snapshot.id", "snapshot.name=", "snapshot.name=ours,snapshot.name=first"};
        for (String l : specs) {
            for (String fmt : new String[] {"raw", "qcow2"}) {
                Twin t = twin(List.of("s.qcow2"), "convert", "-O", fmt, "-l", l, "s.qcow2", "o." + fmt);
                assertSame(t.theirs(), t.ours());
                if (t.theirs().exitCode() == 0) {
                    assertEquals(0, Qemu.run(dir, "qemu-img", "compare", t.q().resolve("o." + fmt).toString(),
                            t.b().resolve("o." + fmt).toString()).exitCode(), l);
                }
            }
            for (String[] m : new String[][] {{"measure", "-O", "qcow2", "-l", l, "s.qcow2"},
                {"measure", "--output=json", "-O", "raw", "-l", l, "s.qcow2"}}) {
                assertSame(qemu(m), blk(m));
            }
        }
        for (String[] c : new String[][] {{"convert", "-O", "raw", "-l", "x", "r.raw", "o.raw"},
            {"measure", "-O", "raw", "-l", "x", "r.raw"}, {"convert", "-O", "raw", "-l", "first", "s.qcow2", "s.qcow2",
                "o.raw"}}) {
            assertSame(qemu(c), blk(c));
        }
        // the snapshot's content is what qemu-img snapshot -a would give
        sh("qemu-img", "convert", "-O", "raw", "-l", "first", "s.qcow2", "want.raw");
        assertEquals(0, blk("convert", "-O", "raw", "-l", "first", "s.qcow2", "got.raw").exitCode());
        sh("qemu-io", "-f", "raw", "-c", "read -P 1 0 1M", "got.raw");
        assertEquals(0, Qemu.run(dir, "qemu-img", "compare", dir.resolve("want.raw").toString(),
                dir.resolve("got.raw").toString()).exitCode());
    }

    @Test
    void mapOfPreallocatedImagesMatchesQemuImg() throws Exception {
        for (String mode : new String[] {"metadata", "falloc", "full"}) {
            for (String maker : new String[] {"qemu", "blk"}) {
                String name = maker + "-" + mode + ".qcow2";
                String[] create = {"create", "-q", "-f", "qcow2", "-o", "preallocation=" + mode + ",cluster_size=64k",
                    name, "4M"};
                if (maker.equals("qemu")) {
                    sh(java.util.stream.Stream.concat(java.util.stream.Stream.of("qemu-img"),
                            java.util.Arrays.stream(create)).toArray(String[]::new));
                } else {
                    assertEquals(0, blk(create).exitCode());
                }
                sh("qemu-io", "-c", "write -P 1 64k 64k", "-c", "write -z 1M 64k", "-c", "write -P 2 3M 4k", name);
                for (String[] c : new String[][] {{"map", name}, {"map", "--output=json", name}}) {
                    assertSame(qemu(c), blk(c));
                }
            }
        }
    }

    @Test
    void snapshotApplyAndDeleteLeaveWhatQemuImgLeaves() throws Exception {
        imageWithSnapshots();
        List<String> s = List.of("s.qcow2");
        assertSameEffect(s, "snapshot", "-a", "first", "s.qcow2");
        assertSameEffect(s, "snapshot", "-a", "2", "s.qcow2");
        assertSameEffect(s, "snapshot", "-d", "first", "s.qcow2");
        assertSameEffect(s, "snapshot", "-a", "nosuch", "s.qcow2");
        assertSameEffect(s, "snapshot", "-d", "nosuch", "s.qcow2");
        assertSameEffect(s, "snapshot", "-d", "1", "s.qcow2");
        assertSameEffect(s, "snapshot", "-a", "a-rather-long-snapshot-name", "s.qcow2");
    }

    /** Creation time differs, so the tables are compared with the date column blanked. */
    @Test
    void snapshotsWeCreateAreListedByQemuImg() throws Exception {
        imageWithSnapshots();
        Twin t = twin(List.of("s.qcow2"), "snapshot", "-c", "third", "s.qcow2");
        assertSame(t.theirs(), t.ours());
        String theirs = qemuIn(t.q(), "snapshot", "-l", "s.qcow2").out();
        String ours = qemuIn(t.b(), "snapshot", "-l", "s.qcow2").out();
        String date = "\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d";
        assertEquals(theirs.replaceAll(date, "DATE"), ours.replaceAll(date, "DATE"));
        assertSameImages(t);
        assertEquals(0, Qemu.run(t.b(), "qemu-img", "check", "s.qcow2").exitCode());
        assertEquals(blkIn(t.b(), "snapshot", "-l", "s.qcow2").out(), ours);
        sh("qemu-img", "snapshot", "-a", "third", t.b().resolve("s.qcow2").toString());
        sh("qemu-img", "snapshot", "-a", "third", t.q().resolve("s.qcow2").toString());
        assertEquals(0, Qemu.run(dir, "qemu-img", "compare", t.q().resolve("s.qcow2").toString(),
                t.b().resolve("s.qcow2").toString()).exitCode());
    }

    @Test
    void commitWritesTheTopIntoItsBaseLikeQemuImg() throws Exception {
        chain();
        assertSameEffect(CHAIN, "commit", "top.qcow2");
        assertSameEffect(CHAIN, "commit", "-d", "top.qcow2");
        assertSameEffect(CHAIN, "commit", "-b", "base.qcow2", "top.qcow2");
        assertSameEffect(CHAIN, "commit", "-b", "mid.qcow2", "top.qcow2");
        assertSameEffect(CHAIN, "commit", "-q", "-f", "qcow2", "mid.qcow2");
        assertSameEffect(CHAIN, "commit", "-b", "nofile", "top.qcow2");
        assertSameEffect(CHAIN, "commit", "base.qcow2");
        Twin t = twin(CHAIN, "commit", "-p", "top.qcow2");
        assertSameImages(t);
        assertEquals(t.theirs().out().lines().toList().getLast(), t.ours().out().lines().toList().getLast());
        assertTrue(t.ours().out().startsWith("    (0.00/100%)\r"), t.ours().out());
    }

    @Test
    void resizeGrowsQcow2LikeQemuImg() throws Exception {
        chain();
        assertSameEffect(CHAIN, "resize", "top.qcow2", "+10M");
        assertSameEffect(CHAIN, "resize", "-f", "qcow2", "top.qcow2", "128M");
        assertSameEffect(CHAIN, "resize", "-q", "base.qcow2", "1G");
        assertSameEffect(CHAIN, "resize", "top.qcow2", "--", "-10M");
        assertSameEffect(CHAIN, "resize", "top.qcow2", "1x");
    }

    @Test
    void benchAnnouncesItsRunLikeQemuImg() throws Exception {
        chain();
        for (String[] c : new String[][] {{"bench", "-c", "200", "top.qcow2"},
            {"bench", "-c", "100", "-d", "2", "-s", "64k", "-S", "128k", "-o", "1M", "-t", "none", "-i", "threads",
                "top.qcow2"},
            {"bench", "-q", "-c", "10", "-f", "qcow2", "base.qcow2"},
            {"bench", "-c", "0x10", "-d", "010", "top.qcow2"},
            {"bench", "-w", "--flush-interval=0x20", "--pattern=0x5a", "-c", "100", "-d", "4", "mid.qcow2"}}) {
            Qemu.Run theirs = qemu(c);
            Qemu.Run ours = blk(c);
            String timing = "Run completed in \\d+\\.\\d{3} seconds\\.\n";
            assertEquals(theirs.out().replaceAll(timing, ""), ours.out().replaceAll(timing, ""));
            assertTrue(ours.out().lines().toList().getLast().matches("Run completed in \\d+\\.\\d{3} seconds\\."));
            assertEquals(theirs.err(), ours.err());
            assertEquals(theirs.exitCode(), ours.exitCode());
        }
        Twin w = twin(CHAIN, "bench", "-w", "--pattern=7", "-c", "16", "-s", "64k", "-d", "1", "top.qcow2");
        assertEquals(w.theirs().out().lines().findFirst(), w.ours().out().lines().findFirst());
        Qemu.ok(w.b(), "qemu-io", "-r", "-c", "read -P 7 0 1M", "top.qcow2");
        assertEquals(0, Qemu.run(dir, "qemu-img", "compare", w.q().resolve("top.qcow2").toString(),
                w.b().resolve("top.qcow2").toString()).exitCode());
    }

    @Test
    void ddCopiesIntoQcow2LikeQemuImg() throws Exception {
        chain();
        assertSameEffect(CHAIN, "dd", "-O", "qcow2", "if=top.qcow2", "of=new.qcow2");
        assertSameEffect(CHAIN, "dd", "-f", "qcow2", "-O", "qcow2", "bs=1M", "count=5", "skip=1", "if=top.qcow2",
                "of=new.qcow2");
        assertSameEffect(CHAIN, "dd", "-O", "raw", "bs=64k", "count=3", "if=top.qcow2", "of=new.raw");
        assertSameEffect(CHAIN, "dd", "-O", "qcow2", "bs=64k", "skip=10", "if=top.qcow2", "of=new.qcow2");
        rawImage();
        sh("cp", "r.raw", "old.raw");
        List<String> raw = List.of("r.raw", "old.raw");
        assertSameEffect(raw, "dd", "if=r.raw", "of=old.raw");
        assertSameEffect(raw, "dd", "bs=3", "count=1000", "if=r.raw", "of=new.raw");
        assertSameEffect(raw, "dd", "bs=1000", "skip=3", "count=7", "if=r.raw", "of=new.raw");
    }

    @Test
    void rebaseUnsafeAndSafeLeaveWhatQemuImgLeaves() throws Exception {
        chain();
        rawImage();
        List<String> all = List.of("base.qcow2", "mid.qcow2", "top.qcow2", "r.raw");
        assertSameEffect(all, "rebase", "-u", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2");
        assertSameEffect(all, "rebase", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2");
        assertSameEffect(all, "rebase", "-q", "-b", "", "top.qcow2");
        assertSameEffect(all, "rebase", "-u", "-b", "", "top.qcow2");
        assertSameEffect(all, "rebase", "-b", "r.raw", "-F", "raw", "mid.qcow2");
        assertSameEffect(all, "rebase", "-b", "base.qcow2", "top.qcow2");
        assertSameEffect(all, "rebase", "-u", "-b", "base.qcow2", "top.qcow2");
        assertSameEffect(all, "rebase", "-b", "nofile.qcow2", "-F", "qcow2", "top.qcow2");
        assertSameEffect(all, "rebase", "top.qcow2");
        // progress bars, redraw for redraw
        assertSameEffect(all, "rebase", "-p", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2");
        assertSameEffect(all, "rebase", "-p", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2");
        assertSameEffect(all, "rebase", "-p", "-b", "r.raw", "-F", "raw", "mid.qcow2");
        // the safe mode keeps the guest's view: the rebased image still reads as before
        Twin t = assertSameEffect(all, "rebase", "-p", "-b", "", "top.qcow2");
        sh("qemu-img", "convert", "-O", "raw", "top.qcow2", "before.raw");
        assertEquals(0, Qemu.run(dir, "qemu-img", "compare", "before.raw", t.b().resolve("top.qcow2").toString())
                .exitCode());
    }

    @Test
    void amendChangesWhatQemuImgChanges() throws Exception {
        chain();
        for (String o : List.of("compat=0.10", "compat=1.1", "lazy_refcounts=on", "refcount_bits=64", "refcount_bits=1",
                "lazy_refcounts=on,compat=0.10", "size=128M", "cluster_size=4k", "bogus=1", "help",
                "backing_file=mid.qcow2,backing_fmt=qcow2")) {
            assertSameEffect(CHAIN, "amend", "-o", o, "top.qcow2");
            assertSameEffect(CHAIN, "amend", "-f", "qcow2", "-o", o, "base.qcow2");
        }
        assertSameEffect(CHAIN, "amend", "-p", "-o", "compat=0.10", "top.qcow2");
        assertSameEffect(CHAIN, "amend", "-q", "-o", "compat=0.10", "top.qcow2");
    }

    @Test
    void convertCompressedGivesAnImageQemuImgAgreesWith() throws Exception {
        chain();
        rawImage();
        List<String> all = List.of("base.qcow2", "mid.qcow2", "top.qcow2", "r.raw");
        assertSameEffect(all, "convert", "-c", "-O", "qcow2", "r.raw", "new.qcow2");
        assertSameEffect(all, "convert", "-c", "-O", "qcow2", "top.qcow2", "new.qcow2");
        assertSameEffect(all, "convert", "-c", "-O", "raw", "r.raw", "new.raw");
    }

    @ParameterizedTest
    @ValueSource(strings = {"off", "metadata", "falloc", "full"})
    void resizeGrowsQcow2WithEachPreallocationLikeQemuImg(String mode) throws Exception {
        chain();
        assertSameEffect(CHAIN, "resize", "--preallocation=" + mode, "base.qcow2", "+10M");
        assertSameEffect(CHAIN, "resize", "--preallocation=" + mode, "top.qcow2", "+3M");
        assertSameEffect(CHAIN, "resize", "--preallocation=" + mode, "base.qcow2", "100M");
    }

    @Test
    void resizeShrinksQcow2OnlyWhenAsked() throws Exception {
        chain();
        assertSameEffect(CHAIN, "resize", "--shrink", "top.qcow2", "--", "-10M");
        assertSameEffect(CHAIN, "resize", "--shrink", "top.qcow2", "32M");
        assertSameEffect(CHAIN, "resize", "top.qcow2", "32M");
    }

    /** A data cluster whose refcount is cleared: qemu-img counts corruptions and exits with 2. */
    private void corruptImage() throws Exception {
        sh("qemu-img", "create", "-q", "-f", "qcow2", "bad.qcow2", "64M");
        sh("qemu-io", "-c", "write -P 1 0 1M", "bad.qcow2");
        try (var ch = java.nio.channels.FileChannel.open(dir.resolve("bad.qcow2"),
                java.nio.file.StandardOpenOption.READ, java.nio.file.StandardOpenOption.WRITE)) {
            java.nio.ByteBuffer b = java.nio.ByteBuffer.allocate(8);
            ch.read(b, 40);
            long l1 = b.flip().getLong();
            ch.read(b.clear(), 48);
            long refcountTable = b.flip().getLong();
            ch.read(b.clear(), l1);
            long l2 = b.flip().getLong() & 0x00fffffffffffe00L;
            ch.read(b.clear(), l2);
            long data = b.flip().getLong() & 0x00fffffffffffe00L;
            ch.read(b.clear(), refcountTable);
            long block = b.flip().getLong();
            ch.write(java.nio.ByteBuffer.allocate(2), block + 2 * (data >> 16));
        }
    }

    /**
     * Corruptions: the same report and exit code 2; after -r all the image is clean for both.
     * qemu-img's per-cluster lines on stderr and its "Image end offset" after rebuilding the
     * refcounts (where the new structures land) are the driver's and are not compared.
     */
    @Test
    void checkCountsCorruptionsAndExitsWith2LikeQemuImg() throws Exception {
        corruptImage();
        for (String[] c : new String[][] {{"check", "bad.qcow2"}, {"check", "--output=json", "bad.qcow2"}}) {
            Qemu.Run theirs = qemu(c);
            Qemu.Run ours = blk(c);
            assertEquals(2, theirs.exitCode());
            assertEquals(theirs.out(), ours.out(), String.join(" ", c));
            assertEquals(theirs.exitCode(), ours.exitCode(), String.join(" ", c));
        }
        Twin t = twin(List.of("bad.qcow2"), "check", "-r", "all", "bad.qcow2");
        assertEquals(t.theirs().out().replaceAll("Image end offset: \\d+", ""),
                t.ours().out().replaceAll("Image end offset: \\d+", ""));
        assertEquals(0, t.ours().exitCode());
        assertEquals(0, Qemu.run(t.b(), "qemu-img", "check", "bad.qcow2").exitCode());
    }

    @Test
    void compressedImagesMadeByQemuImgAreReportedAlike() throws Exception {
        rawImage();
        sh("qemu-img", "convert", "-c", "-O", "qcow2", "r.raw", "comp.qcow2");
        String[][] cases = {
            {"check", "comp.qcow2"},
            {"check", "--output=json", "comp.qcow2"},
            {"map", "--output=json", "comp.qcow2"},
            {"map", "comp.qcow2"},
            {"info", "--output=json", "comp.qcow2"},
            {"compare", "comp.qcow2", "r.raw"},
            {"measure", "-O", "qcow2", "comp.qcow2"},
        };
        for (String[] c : cases) {
            assertSame(qemu(c), blk(c));
        }
        assertSameEffect(List.of("comp.qcow2"), "convert", "-O", "raw", "comp.qcow2", "new.raw");
    }

    /** Whether some process holds lock byte 101 (QEMU's "write" permission) on the file. */
    private static boolean heldForWriting(java.nio.file.Path file) throws java.io.IOException {
        long ino = ((Number) java.nio.file.Files.getAttribute(file, "unix:ino")).longValue();
        for (String line : java.nio.file.Files.readAllLines(java.nio.file.Path.of("/proc/locks"))) {
            String[] f = line.trim().split("\\s+");
            // "1: OFDLCK ADVISORY READ -1 08:01:1234 101 101"
            if (f.length >= 8 && f[5].endsWith(":" + ino) && !f[6].equals("EOF") && !f[7].equals("EOF")
                    && Long.parseLong(f[6]) <= 101 && 101 <= Long.parseLong(f[7])) {
                return true;
            }
        }
        return false;
    }

    /** While qemu-io holds an image open for writing, every command meets its lock as qemu-img does. */
    @Test
    void imagesInUseByQemuAreRefusedUnlessForceShared() throws Exception {
        sh("qemu-img", "create", "-q", "-f", "qcow2", "busy.qcow2", "64M");
        Process holder = new ProcessBuilder(Qemu.tool("qemu-io").toString(), "-c", "sleep 60000", "busy.qcow2")
                .directory(dir.toFile()).redirectErrorStream(true).start();
        try {
            long deadline = System.nanoTime() + 60_000_000_000L;
            // Wait for qemu-io's locks by reading /proc/locks: probing with qemu-img info would
            // itself take lock bytes and could make qemu-io's own open fail.
            while (!heldForWriting(dir.resolve("busy.qcow2"))) {
                assertTrue(holder.isAlive(), () -> "qemu-io ended: " + new String(readAll(holder)));
                assertTrue(System.nanoTime() < deadline, "qemu-io did not lock busy.qcow2");
                Thread.sleep(100);
            }
            String[][] cases = {
                {"info", "busy.qcow2"}, {"info", "-U", "busy.qcow2"}, {"check", "busy.qcow2"},
                {"check", "-U", "busy.qcow2"}, {"map", "busy.qcow2"}, {"compare", "busy.qcow2", "busy.qcow2"},
                {"compare", "-U", "busy.qcow2", "busy.qcow2"}, {"convert", "-O", "raw", "busy.qcow2", "new.raw"},
                {"snapshot", "-l", "busy.qcow2"}, {"snapshot", "-l", "-U", "busy.qcow2"},
                {"measure", "-O", "qcow2", "busy.qcow2"}, {"resize", "busy.qcow2", "+1M"}, {"commit", "busy.qcow2"},
                {"amend", "-o", "compat=1.1", "busy.qcow2"}, {"rebase", "-u", "-b", "", "busy.qcow2"},
                {"snapshot", "-c", "s", "busy.qcow2"}, {"dd", "if=busy.qcow2", "of=new.raw"},
            };
            for (String[] c : cases) {
                assertSame(qemu(c), blk(c));
                Files.deleteIfExists(dir.resolve("new.raw"));
            }
        } finally {
            holder.destroy();
            holder.waitFor();
        }
    }

    /** Clusters turned into zero clusters keep their place in the file but leave the human table. */
    @Test
    void mapLeavesZeroedClustersOutOfTheTable() throws Exception {
        sh("qemu-img", "create", "-q", "-f", "qcow2", "z.qcow2", "10M");
        sh("qemu-io", "-c", "write -P 1 0 256k", "-c", "write -z 64k 64k", "-c", "write -z 1M 64k", "z.qcow2");
        for (String[] c : new String[][] {{"map", "z.qcow2"}, {"map", "--output=json", "z.qcow2"},
            {"compare", "z.qcow2", "z.qcow2"}, {"check", "z.qcow2"}}) {
            assertSame(qemu(c), blk(c));
        }
    }

    /** info opens each image alone: a missing backing file stops only --backing-chain; loops are named. */
    @Test
    void infoOfBrokenChainsFailsAsQemuImgDoes() throws Exception {
        chain();
        sh("qemu-img", "create", "-q", "-f", "qcow2", "gone.qcow2", "1M");
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", "gone.qcow2", "-F", "qcow2", "orphan.qcow2");
        Files.delete(dir.resolve("gone.qcow2"));
        sh("qemu-img", "create", "-q", "-f", "qcow2", "loop.qcow2", "1M");
        sh("qemu-img", "rebase", "-u", "-b", "loop.qcow2", "-F", "qcow2", "loop.qcow2");
        String[][] cases = {
            {"info", "orphan.qcow2"}, {"info", "--output=json", "orphan.qcow2"},
            {"info", "--backing-chain", "orphan.qcow2"}, {"info", "--backing-chain", "loop.qcow2"},
            {"info", "--image-opts", "driver=qcow2,file.filename=top.qcow2"},
            {"info", "--backing-chain", "--output=json", "--image-opts", "driver=qcow2,file.filename=top.qcow2"},
            {"map", "orphan.qcow2"}, {"check", "orphan.qcow2"},
        };
        for (String[] c : cases) {
            assertSame(qemu(c), blk(c));
        }
    }

    private static byte[] readAll(Process p) {
        try {
            return p.getInputStream().readAllBytes();
        } catch (java.io.IOException e) {
            return e.toString().getBytes();
        }
    }
}
