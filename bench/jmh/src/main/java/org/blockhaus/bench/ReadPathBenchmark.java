package org.blockhaus.bench;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.core.BlockCore;
import org.blockhaus.format.qcow2.Qcow2Driver;
import org.blockhaus.format.raw.RawDriver;
import org.blockhaus.protocol.file.impl.FileDriver;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;

/**
 * What the block layer costs on the read path: random reads of {@code size} bytes from a
 * page-cached 256 MiB image, through a bare FileChannel (the floor), through the core with raw
 * over file (the I/O contract and the raw layer), and through qcow2 over file (cluster mapping).
 * The qcow2 image is written by qemu-img, so its layout is QEMU's.
 */
@State(Scope.Thread)
@BenchmarkMode(Mode.Throughput)
@OutputTimeUnit(TimeUnit.SECONDS)
@Warmup(iterations = 2, time = 2)
@Measurement(iterations = 3, time = 3)
@Fork(value = 1, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED", "--sun-misc-unsafe-memory-access=allow"})
public class ReadPathBenchmark {
    private static final long IMAGE = 256L << 20;

    @Param({"4096", "65536"})
    int size;

    private Path dir;
    private FileChannel channel;
    private Image raw;
    private Image qcow2;
    private ByteBuffer buf;

    @Setup(Level.Trial)
    public void setUp() throws Exception {
        dir = Files.createTempDirectory("blk-jmh");
        Path rawFile = dir.resolve("d.raw");
        Path qcowFile = dir.resolve("d.qcow2");
        run("qemu-img", "create", "-q", "-f", "raw", rawFile.toString(), Long.toString(IMAGE));
        run("qemu-io", "-f", "raw", "-c", "write -P 7 0 " + IMAGE, rawFile.toString());
        run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", rawFile.toString(), qcowFile.toString());
        channel = FileChannel.open(rawFile, StandardOpenOption.READ);
        BlockCore core = BlockCore.standalone();
        core.addDriver(new FileDriver());
        core.addDriver(new RawDriver());
        core.addDriver(new Qcow2Driver());
        raw = core.open(rawFile.toString(), Options.of("driver", "raw"), OpenMode.READ_ONLY);
        qcow2 = core.open(qcowFile.toString(), Options.of("driver", "qcow2"), OpenMode.READ_ONLY);
        buf = ByteBuffer.allocateDirect(size);
    }

    private static void run(String... cmd) throws IOException, InterruptedException {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(ProcessBuilder.Redirect.DISCARD)
                .start();
        if (p.waitFor() != 0) {
            throw new IOException(String.join(" ", cmd) + " failed");
        }
    }

    private long offset() {
        return ThreadLocalRandom.current().nextLong(IMAGE / size) * size;
    }

    @Benchmark
    public int fileChannel() throws IOException {
        buf.clear();
        return channel.read(buf, offset());
    }

    @Benchmark
    public ByteBuffer rawThroughCore() throws Exception {
        buf.clear();
        raw.read(offset(), buf);
        return buf;
    }

    @Benchmark
    public ByteBuffer qcow2ThroughCore() throws Exception {
        buf.clear();
        qcow2.read(offset(), buf);
        return buf;
    }

    @TearDown(Level.Trial)
    public void tearDown() throws Exception {
        raw.close();
        qcow2.close();
        channel.close();
        try (var files = Files.list(dir)) {
            for (Path p : files.toList()) {
                Files.delete(p);
            }
        }
        Files.delete(dir);
    }
}
