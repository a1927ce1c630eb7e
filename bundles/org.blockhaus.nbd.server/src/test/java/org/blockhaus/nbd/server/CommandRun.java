package org.blockhaus.nbd.server;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.PrintStream;
import java.net.InetSocketAddress;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import org.blockhaus.core.BlockCore;
import org.blockhaus.format.qcow2.Qcow2Driver;
import org.blockhaus.format.raw.RawDriver;
import org.blockhaus.nbd.server.impl.NbdCommand;
import org.blockhaus.protocol.file.impl.FileDriver;

/**
 * {@code ./blk nbd ...} in this JVM: the command's run() on a background thread, its output
 * captured; {@link #close()} stops it as the launcher's SIGTERM hook does (deactivate) and waits
 * for run() to return.
 */
final class CommandRun implements AutoCloseable {
    final NbdCommand command;
    private final ByteArrayOutputStream out = new ByteArrayOutputStream();
    private final ByteArrayOutputStream err = new ByteArrayOutputStream();
    private final Thread thread;
    private volatile int code = -1;

    private CommandRun(NbdCommand command, String[] args) {
        this.command = command;
        PrintStream o = new PrintStream(out, true, StandardCharsets.UTF_8);
        PrintStream e = new PrintStream(err, true, StandardCharsets.UTF_8);
        this.thread = Thread.ofPlatform().name("blk nbd").start(() -> code = command.run(args,
                InputStream.nullInputStream(), o, e));
    }

    static BlockCore core() {
        BlockCore core = BlockCore.standalone();
        core.addDriver(new FileDriver());
        core.addDriver(new RawDriver());
        core.addDriver(new Qcow2Driver());
        core.addObjectType(org.blockhaus.nbd.common.TlsCreds.objectType());
        return core;
    }

    static CommandRun start(String... args) {
        return new CommandRun(new NbdCommand(core()), args);
    }

    /** Runs to completion (a command that fails at once): exit code. */
    static CommandRun finish(String... args) throws InterruptedException {
        CommandRun r = start(args);
        if (!r.await(Duration.ofSeconds(30))) {
            r.close();
            throw new AssertionError("blk nbd did not return: " + String.join(" ", args));
        }
        return r;
    }

    /** Waits until the unix socket exists (the server listens), or fails if run() returned first. */
    CommandRun listeningOn(Path socket) throws InterruptedException {
        long deadline = System.nanoTime() + Duration.ofSeconds(30).toNanos();
        while (!Files.exists(socket)) {
            if (!thread.isAlive()) {
                throw new AssertionError("blk nbd exited with " + code + ": " + err());
            }
            if (System.nanoTime() > deadline) {
                throw new AssertionError("blk nbd did not listen on " + socket + ": " + err());
            }
            Thread.sleep(5);
        }
        return this;
    }

    /** Waits until 127.0.0.1:port accepts (a connection that never negotiates ends no server). */
    CommandRun listeningOn(int port) throws InterruptedException {
        long deadline = System.nanoTime() + Duration.ofSeconds(30).toNanos();
        while (true) {
            try (SocketChannel c = SocketChannel.open(new InetSocketAddress("127.0.0.1", port))) {
                return this;
            } catch (IOException e) {
                if (!thread.isAlive()) {
                    throw new AssertionError("blk nbd exited with " + code + ": " + err());
                }
                if (System.nanoTime() > deadline) {
                    throw new AssertionError("blk nbd did not listen on port " + port + ": " + err());
                }
                Thread.sleep(5);
            }
        }
    }

    boolean await(Duration timeout) throws InterruptedException {
        thread.join(timeout);
        return !thread.isAlive();
    }

    boolean isRunning() {
        return thread.isAlive();
    }

    int code() {
        return code;
    }

    String out() {
        return out.toString(StandardCharsets.UTF_8);
    }

    String err() {
        return err.toString(StandardCharsets.UTF_8);
    }

    /** As SIGTERM through the launcher: the component is deactivated, then run() must return. */
    @Override
    public void close() throws InterruptedException {
        command.deactivate();
        if (!await(Duration.ofSeconds(30))) {
            throw new AssertionError("run() did not return after deactivate");
        }
    }
}
