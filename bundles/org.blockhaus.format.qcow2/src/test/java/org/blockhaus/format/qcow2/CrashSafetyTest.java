package org.blockhaus.format.qcow2;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Random;
import java.util.concurrent.TimeUnit;
import org.blockhaus.api.Image;
import org.blockhaus.core.BlockCore;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A writer process killed (SIGKILL) at random instants leaves an image that `qemu-img check` finds
 * free of corruption (leaks are allowed, as in QEMU; see below for snapshot operations) and that still holds every round the writer
 * had flushed before it died.
 */
class CrashSafetyTest {
    @TempDir
    Path dir;

    @Test
    void killedWriterLeavesLeaksAtMostAndKeepsFlushedData() throws Exception {
        Random r = new Random(1234);
        String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
        String cp = System.getProperty("java.class.path");
        int kills = 16;
        for (int k = 0; k < kills; k++) {
            Path img = dir.resolve("crash" + k + ".qcow2");
            String cluster = k % 2 == 0 ? "65536" : "4096";
            Fixtures.create(Fixtures.core(), img, CrashWriter.SIZE, "cluster_size", cluster,
                    "refcount_bits", k % 3 == 0 ? "16" : "64");
            Path log = dir.resolve("writer" + k + ".log");
            Process p = new ProcessBuilder(java, "--enable-native-access=ALL-UNNAMED", "-cp", cp,
                    CrashWriter.class.getName(), img.toString()).redirectErrorStream(true)
                    .redirectOutput(log.toFile()).start();
            long start = System.nanoTime();
            while (p.isAlive() && !Files.readString(log).contains("ready")
                    && System.nanoTime() - start < TimeUnit.SECONDS.toNanos(20)) {
                Thread.sleep(2);
            }
            p.waitFor(r.nextInt(250), TimeUnit.MILLISECONDS);
            p.destroyForcibly(); // SIGKILL: no shutdown hooks, no close()
            assertTrue(p.waitFor(10, TimeUnit.SECONDS));
            List<String> output = Files.readAllLines(log);
            int lastFlushed = -1;
            for (String line : output) {
                if (line.startsWith("flushed ")) {
                    lastFlushed = Integer.parseInt(line.substring(8));
                }
            }
            assertTrue(output.stream().allMatch(l -> l.startsWith("flushed ") || l.equals("ready") || l.startsWith("WARNING")),
                    "writer failed: " + output);
            Qemu.Result check = Qemu.img("check", img.toString());
            // Leaks are allowed. So is one kind of error that only snapshot creation and deletion can
            // leave between two syncs: a COPIED flag missing on a cluster with refcount 1, which costs
            // a needless copy on write and which check -r all sets again. Anything else fails.
            boolean harmless = check.exit() == 2 && check.err().lines().filter(l -> l.startsWith("ERROR"))
                    .allMatch(l -> l.startsWith("ERROR OFLAG_COPIED") && l.endsWith("refcount=1"));
            assertTrue(check.exit() == 0 || check.exit() == 3 || harmless,
                    "kill " + k + " after round " + lastFlushed + ": qemu-img check exit " + check.exit() + "\n"
                            + check.out() + check.err() + "\nwriter: " + output);
            if (harmless) {
                assertEquals(0, Qemu.img("check", "-r", "all", img.toString()).exit());
            }
            System.out.println("kill " + k + ": after round " + lastFlushed + ", qemu-img check exit " + check.exit());
            BlockCore core = Fixtures.core();
            try (Image i = Fixtures.openRo(core, img)) {
                for (int round = 0; round <= lastFlushed; round++) {
                    ByteBuffer b = ByteBuffer.allocate(CrashWriter.REGION);
                    i.read((long) round * CrashWriter.REGION, b);
                    for (int j = 0; j < CrashWriter.REGION; j += 512) {
                        assertEquals(CrashWriter.patternOf(round), b.get(j), "kill " + k + ": round " + round
                                + " was flushed, byte " + j);
                    }
                }
            }
        }
    }
}
