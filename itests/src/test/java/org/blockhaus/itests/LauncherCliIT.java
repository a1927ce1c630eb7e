package org.blockhaus.itests;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;
import org.junit.BeforeClass;
import org.junit.Test;

/**
 * The launcher as ./blk runs it: a separate JVM on the minimal feature's directory. CLI mode
 * prints the command's output and nothing else and exits with its code; every process has its own
 * framework storage and removes it; interactive mode ends on "exit".
 */
public class LauncherCliIT {
    private static Path feature;
    private static Path tmp;
    private static Path image;

    @BeforeClass
    public static void setUp() throws IOException {
        feature = Path.of(System.getProperty("blk.itest.feature"));
        assertTrue("the minimal feature is built at " + feature,
                Files.isRegularFile(feature.resolve("org.blockhaus.launcher.jar")));
        tmp = Files.createTempDirectory(Files.createDirectories(Path.of(System.getProperty("blk.itest.tmp"))), "cli-");
        image = tmp.resolve("disk.raw");
        try (FileChannel ch = FileChannel.open(image, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE)) {
            ch.write(ByteBuffer.wrap(new byte[] {1}), (2 << 20) - 1); // 2 MiB, sparse
        }
    }

    @Test
    public void cliModePrintsOnlyTheCommandsOutputAndExitsWithItsCode() throws Exception {
        Run r = blk(List.of(), "info", "--output=json", image.toString());
        assertEquals(r.err, 0, r.code);
        assertEquals("", r.err);
        assertTrue(r.out, r.out.startsWith("{\n"));
        assertTrue(r.out, r.out.contains("\"virtual-size\": 2097152"));
        assertTrue(r.out, r.out.contains("\"format\": \"raw\""));
    }

    @Test
    public void aFailingCommandExitsOneWithQemuImgsMessage() throws Exception {
        Run r = blk(List.of(), "info", tmp.resolve("missing.raw").toString());
        assertEquals(1, r.code);
        assertEquals("", r.out);
        assertTrue(r.err, r.err.startsWith("qemu-img: Could not open '" + tmp.resolve("missing.raw") + "'"));
    }

    @Test
    public void eachProcessRemovesItsFrameworkStorage() throws Exception {
        Path own = Files.createTempDirectory(tmp, "java-tmp-");
        Run r = blk(List.of("-Djava.io.tmpdir=" + own), "info", image.toString());
        assertEquals(r.err, 0, r.code);
        try (Stream<Path> left = Files.list(own)) {
            assertEquals("left behind in java.io.tmpdir", List.of(), left.toList());
        }
    }

    @Test
    public void storageOfAKilledLauncherIsRemovedByTheNextOneButALiveOnesIsKept() throws Exception {
        Path own = Files.createTempDirectory(tmp, "java-tmp-");
        List<String> opts = List.of("-Djava.io.tmpdir=" + own, "-Dorg.jline.terminal.dumb=true");
        Process killed = start(opts); // interactive: waits on stdin
        Process alive = start(opts);
        try {
            Feature.await("both launchers locked their storage", Duration.ofSeconds(30), () -> locks(own) == 2);
            killed.destroyForcibly().waitFor(); // SIGKILL: no shutdown hook runs
            assertEquals("the killed one left its storage", 2, storages(own));

            Run r = blk(opts, "info", image.toString());
            assertEquals(r.err, 0, r.code);
            Feature.await("the dead launcher's storage is swept", Duration.ofSeconds(10), () -> storages(own) == 1);
            assertTrue("the live launcher still runs", alive.isAlive());
        } finally {
            killed.destroyForcibly();
            alive.getOutputStream().close(); // EOF: the console stops the framework
            finish(alive);
        }
        assertEquals(0, storages(own));
    }

    private static long storages(Path dir) {
        try (Stream<Path> s = Files.list(dir)) {
            return s.filter(p -> p.getFileName().toString().startsWith("blk-osgi-")).count();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    private static long locks(Path dir) {
        try (Stream<Path> s = Files.list(dir)) {
            return s.filter(p -> Files.exists(p.resolve("cache.lock"))).count();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    @Test
    public void severalProcessesRunAtOnce() throws Exception {
        List<Process> running = new ArrayList<>();
        for (int i = 0; i < 3; i++) {
            running.add(start(List.of(), "info", image.toString()));
        }
        for (Process p : running) {
            Run r = finish(p);
            assertEquals(r.err, 0, r.code);
            assertTrue(r.out, r.out.contains("virtual size: 2 MiB (2097152 bytes)"));
        }
    }

    @Test
    public void jarsInTheDeployDirectoryAreDriversInCliMode() throws Exception {
        String nullImage = "json:{\"driver\": \"raw\", \"file\": {\"driver\": \"null-co\", \"size\": \"4M\"}}";
        Run without = blk(List.of(), "info", nullImage);
        assertEquals(1, without.code);
        assertTrue(without.err, without.err.contains("null-co"));

        Path deploy = Files.createTempDirectory(tmp, "deploy-");
        Files.copy(Feature.nullDriverJar(), deploy.resolve("null.jar"));
        Run with = blk(List.of("-Dblk.deploy=" + deploy), "info", nullImage);
        assertEquals(with.err, 0, with.code);
        assertTrue(with.out, with.out.contains("virtual size: 4 MiB (4194304 bytes)"));
    }

    @Test
    public void interactiveModeRunsCommandsFromStdinAndStopsOnExit() throws Exception {
        Process p = start(List.of("-Dorg.jline.terminal.dumb=true"));
        p.getOutputStream().write("blk:drivers\nexit\n".getBytes(StandardCharsets.UTF_8));
        p.getOutputStream().close();
        Run r = finish(p);
        assertEquals(r.err, 0, r.code);
        assertTrue(r.out, r.out.matches("(?s).*\\braw\\s+format\\b.*"));
    }

    private record Run(int code, String out, String err) {
    }

    private static Run blk(List<String> jvmOptions, String... args) throws Exception {
        return finish(start(jvmOptions, args));
    }

    private static Process start(List<String> jvmOptions, String... args) throws IOException {
        List<String> cmd = new ArrayList<>();
        cmd.add(Path.of(System.getProperty("java.home"), "bin", "java").toString());
        cmd.add("--sun-misc-unsafe-memory-access=allow");
        cmd.add("--enable-native-access=ALL-UNNAMED");
        cmd.addAll(jvmOptions);
        cmd.add("-jar");
        cmd.add(feature.resolve("org.blockhaus.launcher.jar").toString());
        cmd.addAll(List.of(args));
        ProcessBuilder pb = new ProcessBuilder(cmd);
        pb.environment().remove("BLK_DEPLOY");
        return pb.start();
    }

    private static Run finish(Process p) throws Exception {
        // stderr on its own thread so neither pipe can fill up and stall the child
        var err = CompletableFuture.supplyAsync(() -> {
            try {
                return p.getErrorStream().readAllBytes();
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        });
        byte[] out = p.getInputStream().readAllBytes();
        if (!p.waitFor(60, TimeUnit.SECONDS)) {
            p.destroyForcibly();
            throw new AssertionError("the launcher did not exit within 60 s");
        }
        return new Run(p.exitValue(), new String(out, StandardCharsets.UTF_8), new String(err.get(60, TimeUnit.SECONDS), StandardCharsets.UTF_8));
    }
}
