package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.io.File;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * Mutation fuzzing of qcow2 metadata ({@link MetadataFuzzer}): valid images made by qemu-img and
 * qemu-io with snapshots, bitmaps and compressed clusters get random bytes of one metadata region
 * overwritten; opening, reading, mapping, checking and writing them must end in success or a
 * BlockException, within seconds, in a JVM with a 96 MiB heap, and a read-only open must leave the
 * file as it was. Fixed seeds; a failure prints the seed and case number, which
 * {@code MetadataFuzzer.main(image, seed, cases, seconds)} replays.
 */
class MetadataFuzzTest {
    @TempDir
    Path dir;

    /** 60 in the suite; {@code -Dfuzz.cases=N} explores more. */
    private static final int CASES = Integer.getInteger("fuzz.cases", 60);
    /** 0 in the suite; {@code -Dfuzz.seedBase=N} explores other seeds. */
    private static final long SEED_BASE = Long.getLong("fuzz.seedBase", 0);

    private Path image(String kind) throws Exception {
        Path img = dir.resolve(kind + ".qcow2");
        String s = img.toString();
        switch (kind) {
            case "snapshots-bitmaps-compressed" -> {
                Qemu.img("create", "-q", "-f", "qcow2", s, "4M").ok();
                Qemu.io("-f", "qcow2", "-c", "write -P 0x11 0 200k", "-c", "write -c -P 0x22 1M 128k",
                        "-c", "write -P 0x33 3M 70k", s).ok();
                Qemu.img("snapshot", "-c", "first", s).ok();
                Qemu.io("-f", "qcow2", "-c", "write -P 0x44 64k 100k", "-c", "write -z 3M 64k", s).ok();
                Qemu.img("snapshot", "-c", "second", s).ok();
                Qemu.img("bitmap", "--add", s, "b0").ok();
                Qemu.img("bitmap", "--add", "-g", "4096", "--disable", s, "b1").ok();
                Qemu.io("-f", "qcow2", "-c", "write -P 0x55 2M 300k", s).ok();
            }
            case "clusters512-refcount1" -> {
                Qemu.img("create", "-q", "-f", "qcow2", "-o", "cluster_size=512,refcount_bits=1", s, "4M").ok();
                Qemu.io("-f", "qcow2", "-c", "write -P 0x11 1000 70k", "-c", "write -c -P 0x22 1M 4k",
                        "-c", "write -z 1000 1k", s).ok();
                Qemu.img("bitmap", "--add", "-g", "512", s, "b0").ok();
                Qemu.io("-f", "qcow2", "-c", "write -P 0x33 2M 9k", s).ok();
            }
            case "extended-l2-lazy" -> {
                Qemu.img("create", "-q", "-f", "qcow2", "-o", "cluster_size=32k,extended_l2=on,lazy_refcounts=on",
                        s, "4M").ok();
                Qemu.io("-f", "qcow2", "-c", "write -P 0x11 1000 70k", "-c", "write -c -P 0x22 1M 32k",
                        "-c", "write -z 8k 4k", s).ok();
                Qemu.img("snapshot", "-c", "s1", s).ok();
                Qemu.img("bitmap", "--add", s, "b0").ok();
                Qemu.io("-f", "qcow2", "-c", "write -P 0x33 5000 9k", "-c", "discard 1M 32k", s).ok();
            }
            case "v2-snapshots" -> {
                Qemu.img("create", "-q", "-f", "qcow2", "-o", "compat=0.10,cluster_size=4k", s, "4M").ok();
                Qemu.io("-f", "qcow2", "-c", "write -P 0x11 0 50k", "-c", "write -c -P 0x22 1M 8k", s).ok();
                Qemu.img("snapshot", "-c", "s1", s).ok();
                Qemu.io("-f", "qcow2", "-c", "write -P 0x33 4k 8k", "-c", "write -z 2M 64k", s).ok();
            }
            case "refcount64-zstd" -> {
                Qemu.img("create", "-q", "-f", "qcow2", "-o",
                        "cluster_size=4k,refcount_bits=64,compression_type=zstd", s, "4M").ok();
                Qemu.io("-f", "qcow2", "-c", "write -P 0x11 0 50k", "-c", "write -c -P 0x22 1M 64k", s).ok();
                Qemu.img("snapshot", "-c", "s1", s).ok();
                Qemu.img("bitmap", "--add", "-g", "65536", s, "b0").ok();
                Qemu.io("-f", "qcow2", "-c", "write -P 0x33 4k 8k", s).ok();
            }
            default -> throw new IllegalArgumentException(kind);
        }
        assertEquals(0, Qemu.img("check", s).exit(), "base image " + kind + " must be clean");
        return img;
    }

    @ParameterizedTest(name = "{0} seed {1}")
    @CsvSource({"snapshots-bitmaps-compressed, 1", "clusters512-refcount1, 2", "extended-l2-lazy, 3",
        "v2-snapshots, 4", "refcount64-zstd, 5"})
    void mutatedMetadataEndsInSuccessOrBlockException(String kind, long seed) throws Exception {
        Path img = image(kind);
        String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
        List<String> cmd = List.of(java, "-Xmx96m", "-XX:+ExitOnOutOfMemoryError", "--enable-native-access=ALL-UNNAMED",
                "--sun-misc-unsafe-memory-access=allow", "-Dfuzz.verbose=" + Boolean.getBoolean("fuzz.verbose"),
                "-Dfuzz.keep=" + System.getProperty("fuzz.keep", ""), "-cp", System.getProperty("java.class.path"),
                MetadataFuzzer.class.getName(), img.toString(), Long.toString(seed + SEED_BASE), Integer.toString(CASES), "10");
        File out = dir.resolve("fuzz.out").toFile();
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(out).start();
        if (!p.waitFor(300, TimeUnit.SECONDS)) {
            p.destroyForcibly().waitFor();
        }
        String log = Files.readString(out.toPath(), StandardCharsets.UTF_8);
        System.out.print(log);
        assertEquals(0, p.exitValue(), "fuzzer (java " + MetadataFuzzer.class.getName() + " IMAGE " + (seed + SEED_BASE) + " "
                + CASES + " 10):\n" + log);
    }
}
