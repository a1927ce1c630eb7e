package org.blockhaus.itests;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.Test;

/**
 * The {@code ./blk} script itself, on a copy of the project root that links the built full
 * feature: the first command after a build (no AOT cache yet) prints the command's output and
 * nothing else (the JVM's training run writes a note to standard output, so it must not be the
 * user's command), and the cache it trains in the background appears and serves the next command.
 */
public class BlkScriptIT {
    @Test
    public void theFirstCommandAfterABuildPrintsOnlyItsOutputAndTheCacheAppearsAfterIt() throws Exception {
        Path project = Path.of(System.getProperty("user.dir")).getParent();
        Path full = Path.of(System.getProperty("blk.itest.feature.full", "../features/target/full")).toAbsolutePath();
        assertTrue("the full feature is built at " + full, Files.isRegularFile(full.resolve("org.blockhaus.launcher.jar")));
        Path tmp = Files.createTempDirectory(Files.createDirectories(Path.of(System.getProperty("blk.itest.tmp"))), "script-");
        Path root = tmp.resolve("root");
        Files.createDirectories(root.resolve("scripts"));
        Files.createDirectories(root.resolve("features/target"));
        Files.copy(project.resolve("blk"), root.resolve("blk"));
        root.resolve("blk").toFile().setExecutable(true);
        Files.copy(project.resolve("scripts/jdk.sh"), root.resolve("scripts/jdk.sh"));
        Files.createSymbolicLink(root.resolve("features/target/full"), full);
        Path image = tmp.resolve("disk.raw");
        Files.write(image, new byte[4096]);

        String first = blk(root, "info", "--output=json", image.toString());
        String expected = qemuImg("info", "--output=json", image.toString());
        assertEquals("the first command's output is qemu-img's, nothing added", expected, first);
        Feature.await("the AOT cache is trained and assembled in the background", Duration.ofSeconds(120),
                () -> Files.isRegularFile(root.resolve(".blk-cache/full.aot"))
                        && !Files.exists(root.resolve(".blk-cache/aot.training")));
        assertEquals(expected, blk(root, "info", "--output=json", image.toString()));
    }

    private static String blk(Path root, String... args) throws Exception {
        List<String> cmd = new java.util.ArrayList<>(List.of(root.resolve("blk").toString()));
        cmd.addAll(List.of(args));
        ProcessBuilder pb = new ProcessBuilder(cmd).redirectError(ProcessBuilder.Redirect.DISCARD);
        pb.environment().put("BLK_NO_BUILD", "1"); // the linked feature is built; never build here
        return run(pb);
    }

    private static String qemuImg(String... args) throws Exception {
        List<String> cmd = new java.util.ArrayList<>(List.of("qemu-img"));
        cmd.addAll(List.of(args));
        return run(new ProcessBuilder(cmd).redirectError(ProcessBuilder.Redirect.DISCARD));
    }

    private static String run(ProcessBuilder pb) throws IOException, InterruptedException {
        Process p = pb.redirectInput(ProcessBuilder.Redirect.from(new java.io.File("/dev/null"))).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue("finished", p.waitFor(60, TimeUnit.SECONDS));
        assertEquals(pb.command() + " exit code", 0, p.exitValue());
        return out;
    }
}
