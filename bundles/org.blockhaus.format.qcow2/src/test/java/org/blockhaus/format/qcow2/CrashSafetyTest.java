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
 * free of corruption (leaks are allowed, as in QEMU) and that still holds every round the writer
 * had flushed before it died, also when the kill lands inside an internal snapshot operation.
 */
class CrashSafetyTest {
    @TempDir
    Path dir;

    @Test
    void killedWriterLeavesLeaksAtMostAndKeepsFlushedData() throws Exception {
        killRepeatedly(16, 250, null, false);
    }

    /**
     * With lazy_refcounts the image is left dirty: `qemu-img check -r all` repairs it, and so does
     * our own read-write open (checked by qemu-img afterwards); the flushed data survive both.
     */
    @Test
    void killedLazyRefcountsWriterLeavesAnImageBothRepair() throws Exception {
        killRepeatedly(12, 250, null, true);
    }

    /** Snapshot create, apply and delete in every round: most kills land inside one of them. */
    @Test
    void killDuringSnapshotOperationsLeavesLeaksAtMost() throws Exception {
        killRepeatedly(24, 400, "snapshots", false);
    }

    private void killRepeatedly(int kills, int maxDelayMs, String mode, boolean lazy) throws Exception {
        Random r = new Random(1234);
        String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
        String cp = System.getProperty("java.class.path");
        for (int k = 0; k < kills; k++) {
            Path img = dir.resolve("crash" + k + ".qcow2");
            String cluster = k % 2 == 0 ? "65536" : "4096";
            Fixtures.create(Fixtures.core(), img, CrashWriter.SIZE, "cluster_size", cluster,
                    "refcount_bits", k % 3 == 0 ? "16" : "64", "lazy_refcounts", lazy ? "on" : "off");
            Path log = dir.resolve("writer" + k + ".log");
            List<String> cmd = new java.util.ArrayList<>(List.of(java, "--enable-native-access=ALL-UNNAMED", "-cp", cp,
                    CrashWriter.class.getName(), img.toString()));
            if (mode != null) {
                cmd.add(mode);
            }
            Process p = new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(log.toFile()).start();
            long start = System.nanoTime();
            while (p.isAlive() && !Files.readString(log).contains("ready")
                    && System.nanoTime() - start < TimeUnit.SECONDS.toNanos(20)) {
                Thread.sleep(2);
            }
            p.waitFor(r.nextInt(maxDelayMs), TimeUnit.MILLISECONDS);
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
            if (lazy) {
                Path copy = dir.resolve("copy" + k + ".qcow2");
                Files.copy(img, copy);
                Qemu.Result repaired = Qemu.img("check", "-r", "all", copy.toString());
                assertEquals(0, repaired.exit(), repaired.out() + repaired.err());
                if (lastFlushed >= 0) {
                    Qemu.io("-r", "-f", "qcow2", "-c", "read -P " + (CrashWriter.patternOf(lastFlushed) & 0xff) + " "
                            + (long) lastFlushed * CrashWriter.REGION + " " + CrashWriter.REGION, copy.toString()).ok();
                }
                Fixtures.openRw(Fixtures.core(), img).close(); // our automatic repair of a dirty image
                assertEquals(0, Files.readAllBytes(img)[79] & 1, "the dirty bit is cleared");
            }
            Qemu.Result check = Qemu.img("check", img.toString());
            assertTrue(check.exit() == 0 || check.exit() == 3,
                    "kill " + k + " after round " + lastFlushed + ": qemu-img check exit " + check.exit() + "\n"
                            + check.out() + check.err() + "\nwriter: " + output);
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
            // what qemu reads agrees (the image is consistent for both readers)
            if (lastFlushed >= 0) {
                Qemu.io("-r", "-f", "qcow2", "-c", "read -P " + (CrashWriter.patternOf(0) & 0xff) + " 0 " + CrashWriter.REGION,
                        img.toString()).ok();
            }
        }
    }
}
