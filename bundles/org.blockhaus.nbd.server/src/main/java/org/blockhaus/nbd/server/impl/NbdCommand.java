package org.blockhaus.nbd.server.impl;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.CopyOnWriteArraySet;
import java.util.concurrent.TimeUnit;
import org.blockhaus.api.BlockException;
import org.blockhaus.core.BlockCore;
import org.blockhaus.nbd.server.impl.QemuNbdArgs.UsageError;
import org.osgi.service.component.annotations.Component;
import org.osgi.service.component.annotations.Deactivate;
import org.osgi.service.component.annotations.Reference;

/**
 * {@code ./blk nbd [options] FILE}: qemu-nbd 7.2 on Blockhaus. The launcher finds this service by
 * its {@code blk.subcommand=nbd} property and calls {@link #run}, which serves until the server
 * stops (after the last client unless {@code --persistent}) or until the framework stops (the
 * launcher's SIGTERM hook): {@link #deactivate()} then stops every server cleanly (flush, close,
 * unlock) and {@code run} returns.
 *
 * <p>{@code --fork}: a JVM cannot fork, so the command starts itself again as a child process (the
 * same java command line, without {@code --fork}), relays the child's error output until the
 * child reports that it listens (it prints a one-time token the parent gave it through the
 * environment, after writing {@code --pid-file}), and returns 0; if the child exits first its exit
 * code is returned, as qemu-nbd's parent reports its child's failure.
 */
@Component(service = NbdCommand.class, immediate = true, property = "blk.subcommand=nbd")
public final class NbdCommand {
    /** The environment variable through which a --fork parent asks its child to say "ready". */
    static final String READY_ENV = "BLK_NBD_READY_TOKEN";
    /** How long a --fork parent waits for its child to listen. */
    static final long FORK_WAIT_SECONDS = 120;

    @Reference
    BlockCore core;

    private final Set<Serving> running = new CopyOnWriteArraySet<>();
    private volatile boolean stopping;

    public NbdCommand() {
    }

    /** Outside a framework (tests, plain Java). */
    public NbdCommand(BlockCore core) {
        this.core = core;
    }

    public int run(String[] args, InputStream in, PrintStream out, PrintStream err) {
        ServeConfig config;
        try {
            config = ServeConfig.from(QemuNbdArgs.parse(args));
        } catch (UsageError e) {
            err.print("qemu-nbd: " + e.getMessage() + "\n");
            if (e.hint) {
                err.print(e.getMessage().equals("Invalid number of arguments")
                        ? "Try `qemu-nbd --help' for more information.\n"
                        : "qemu-nbd: Try `qemu-nbd --help' for more information.\n");
            }
            err.flush();
            return 1;
        }
        if (config.help()) {
            out.print(Usage.TEXT);
            out.flush();
            return 0;
        }
        if (config.version()) {
            out.print("qemu-nbd (Blockhaus) 7.2\nWritten by Anthony Liguori; rebuilt in Java by Blockhaus.\n");
            out.flush();
            return 0;
        }
        if (config.fork()) {
            return fork(args, err);
        }
        Serving serving;
        try {
            if (stopping) {
                throw new BlockException(BlockException.Reason.CLOSED, "shutting down");
            }
            serving = Serving.start(core, config, w -> warn(err, w), running::remove);
        } catch (BlockException e) {
            err.print("qemu-nbd: " + e.getMessage() + "\n");
            err.flush();
            return 1;
        }
        running.add(serving);
        try {
            if (config.pidFile() != null) {
                try {
                    Files.writeString(config.pidFile(), ProcessHandle.current().pid() + "\n");
                } catch (NoSuchFileException e) {
                    serving.close();
                    err.print("qemu-nbd: Could not create '" + config.pidFile() + "': No such file or directory\n");
                    err.flush();
                    return 1;
                } catch (IOException e) {
                    serving.close();
                    err.print("qemu-nbd: Could not create '" + config.pidFile() + "': " + e.getMessage() + "\n");
                    err.flush();
                    return 1;
                }
            }
            String token = System.getenv(READY_ENV);
            if (token != null) {
                out.print(token + "\n");
                out.flush();
            }
            if (stopping) {
                serving.close(); // deactivated while we were starting: deactivate may have missed us
            }
            serving.await();
            return 0;
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            serving.close();
            return 1;
        } finally {
            running.remove(serving);
        }
    }

    private static void warn(PrintStream err, String message) {
        err.print(message.startsWith("WARNING") ? message + "\n" : "qemu-nbd: warning: " + message + "\n");
        err.flush();
    }

    /**
     * --fork without fork(2): start this very command again (our JVM's command line, with the
     * arguments after "nbd" minus --fork) and wait until it listens.
     */
    int fork(String[] args, PrintStream err) {
        ProcessHandle.Info info = ProcessHandle.current().info();
        Optional<String> command = info.command();
        Optional<String[]> jvmArgs = info.arguments();
        List<String> cmd = command.isPresent() && jvmArgs.isPresent() ? childCommand(command.get(), jvmArgs.get(),
                args) : null;
        if (cmd == null) {
            err.print("qemu-nbd: --fork works only from the blk launcher (./blk nbd ...): this process's command"
                    + " line does not end with 'nbd' and these arguments\n");
            err.flush();
            return 1;
        }
        String token = UUID.randomUUID().toString();
        ProcessBuilder pb = new ProcessBuilder(cmd).redirectInput(ProcessBuilder.Redirect.from(new java.io.File(
                "/dev/null")));
        pb.environment().put(READY_ENV, token);
        Process child;
        try {
            child = pb.start();
        } catch (IOException e) {
            err.print("qemu-nbd: Failed to fork: " + e.getMessage() + "\n");
            err.flush();
            return 1;
        }
        // the child's error output reaches our caller until we return, as qemu-nbd's pipe does
        Thread relay = Thread.ofPlatform().daemon().name("nbd-fork stderr").start(() -> {
            try (InputStream e = child.getErrorStream()) {
                e.transferTo(err);
            } catch (IOException ignored) {
                // the child went away or we returned
            }
        });
        java.util.concurrent.CompletableFuture<Boolean> ready = new java.util.concurrent.CompletableFuture<>();
        Thread.ofPlatform().daemon().name("nbd-fork stdout").start(() -> {
            try (BufferedReader r = new BufferedReader(new InputStreamReader(child.getInputStream(),
                    StandardCharsets.UTF_8))) {
                String line;
                while ((line = r.readLine()) != null) {
                    if (line.equals(token)) {
                        ready.complete(true);
                        return; // from now on the child's output goes nowhere, as a daemon's does
                    }
                }
            } catch (IOException ignored) {
                // the child exited: reported below
            }
            ready.complete(false);
        });
        try {
            boolean ok;
            try {
                ok = ready.get(FORK_WAIT_SECONDS, TimeUnit.SECONDS);
            } catch (java.util.concurrent.TimeoutException e) {
                err.print("qemu-nbd: the server did not start within " + FORK_WAIT_SECONDS + " s\n");
                err.flush();
                child.destroy();
                return 1;
            }
            if (ok) {
                return 0;
            }
            child.waitFor(30, TimeUnit.SECONDS);
            relay.join(2000);
            err.flush();
            return child.isAlive() ? 1 : Math.max(1, child.exitValue());
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            child.destroy();
            return 1;
        } catch (java.util.concurrent.ExecutionException e) {
            child.destroy();
            return 1;
        }
    }

    /**
     * The child's command line: our own, whose tail must be "nbd" followed by {@code args}, with
     * every --fork (or an abbreviation of it) removed from that tail. Null when ours does not end so
     * (run() called in-process rather than by the launcher).
     */
    static List<String> childCommand(String command, String[] jvmArgs, String[] args) {
        int start = jvmArgs.length - args.length;
        if (start < 1 || !jvmArgs[start - 1].equals("nbd")) {
            return null;
        }
        for (int i = 0; i < args.length; i++) {
            if (!jvmArgs[start + i].equals(args[i])) {
                return null;
            }
        }
        List<String> cmd = new ArrayList<>();
        cmd.add(command);
        for (int i = 0; i < start; i++) {
            cmd.add(jvmArgs[i]);
        }
        boolean operandsOnly = false;
        for (String a : args) {
            if (!operandsOnly && a.equals("--")) {
                operandsOnly = true;
            } else if (!operandsOnly && a.length() > 3 && "--fork".startsWith(a)) {
                continue;
            }
            cmd.add(a);
        }
        return cmd;
    }

    /** Servers started by run() that are still up (for tests). */
    Set<Serving> running() {
        return running;
    }

    /** Framework stop (the launcher's SIGTERM hook) or bundle stop: every server shuts down cleanly. */
    @Deactivate
    public void deactivate() {
        stopping = true;
        for (Serving s : List.copyOf(running)) {
            s.close();
        }
    }
}
