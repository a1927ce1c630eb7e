package org.blockhaus.launcher;

import java.io.IOException;
import java.io.InputStream;
import java.io.PrintStream;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.FileAttribute;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.ServiceLoader;
import java.util.Set;
import java.util.stream.Stream;
import org.osgi.framework.Bundle;
import org.osgi.framework.BundleContext;
import org.osgi.framework.BundleException;
import org.osgi.framework.Constants;
import org.osgi.framework.ServiceReference;
import org.osgi.framework.launch.Framework;
import org.osgi.framework.launch.FrameworkFactory;
import org.osgi.framework.wiring.FrameworkWiring;
import org.osgi.util.tracker.ServiceTracker;

/** Starts Felix with a feature's bundles, runs one command or the console, and cleans up. */
final class Launcher {
    /** The shell bundle's front end: {@code int run(String[], InputStream, PrintStream, PrintStream)}. */
    static final String COMMAND_LINE = "org.blockhaus.shell.CommandLine";
    static final String SHELL_BSN = "org.blockhaus.shell";
    /** gogo.jline opens a console on stdin as soon as it starts: only in interactive mode, and last. */
    static final String CONSOLE_BSN = "org.apache.felix.gogo.jline";
    /** The deploy directory watcher: interactive mode only (CLI mode installs deploy/ itself, at once). */
    static final String FILEINSTALL_BSN = "org.apache.felix.fileinstall";
    /**
     * Jars (features name them artifactId.jar) CLI mode does not even install. gogo.runtime stays:
     * the shell bundle imports its command API.
     */
    static final Set<String> CLI_SKIPS_JARS = Set.of("org.apache.felix.gogo.jline.jar",
            "org.apache.felix.gogo.command.jar", "jline.jar", "org.apache.felix.fileinstall.jar");
    /** Bundles only the interactive shell needs; CLI mode does not start them. */
    static final Set<String> CONSOLE_ONLY = Set.of("org.apache.felix.gogo.runtime", "org.apache.felix.gogo.command",
            "org.jline");

    record Settings(Path home, Path deploy, long waitMillis, boolean verbose) {
    }

    private final Settings settings;
    private final long t0 = System.nanoTime();
    private volatile Framework framework;
    private volatile Path storage;
    private Bundle consoleBundle;

    Launcher(Settings settings) {
        this.settings = settings;
    }

    int run(String[] args) throws LaunchException {
        boolean cli = args.length > 0;
        Thread cleanup = new Thread(this::stopAndClean, "blk-cleanup");
        Runtime.getRuntime().addShutdownHook(cleanup);
        try {
            start(cli);
            return cli ? runCommand(args) : runConsole();
        } finally {
            stopAndClean();
            try {
                Runtime.getRuntime().removeShutdownHook(cleanup);
            } catch (IllegalStateException ignored) {
                // already shutting down: the hook runs anyway and finds nothing left to do
            }
        }
    }

    private void start(boolean cli) throws LaunchException {
        try {
            storage = newStorage(storageParent());
        } catch (IOException e) {
            throw new LaunchException("cannot create the framework's temporary storage: " + e.getMessage(), e);
        }
        Path own = storage;
        // a platform thread: the first virtual thread sets up its scheduler (~5 ms of a cold JVM)
        Thread sweep = new Thread(() -> StaleStorage.sweep(own.getParent(), own), "blk-sweep");
        sweep.setDaemon(true);
        sweep.start();
        Map<String, String> config = new HashMap<>();
        config.put(Constants.FRAMEWORK_STORAGE, storage.toString());
        // no storage.clean: the directory is new, and cleaning would delete the cache.lock that
        // Felix keeps locked while it runs (StaleStorage relies on it)
        config.put("felix.log.level", "1"); // errors only: CLI output must be qemu-img's alone
        // gogo.jline reads <gosh.home>/etc/gosh_profile; ours is safe and sets the prompt
        config.put("gosh.home", settings.home().toString());
        System.setProperty("gosh.home", settings.home().toString());
        if (settings.deploy() != null) {
            config.put("felix.fileinstall.dir", settings.deploy().toString());
            config.put("felix.fileinstall.poll", "500");
            config.put("felix.fileinstall.noInitialDelay", "true");
            config.put("felix.fileinstall.filter", ".*\\.jar");
            config.put("felix.fileinstall.log.level", "1");
        }
        FrameworkFactory factory = ServiceLoader.load(FrameworkFactory.class, Launcher.class.getClassLoader())
                .findFirst().orElseThrow(() -> new LaunchException("no OSGi framework on the class path"
                        + " (framework/org.apache.felix.framework.jar is missing)"));
        Framework fw = factory.newFramework(config);
        framework = fw;
        time("new framework");
        try {
            fw.init();
            time("framework init");
            BundleContext ctx = fw.getBundleContext();
            List<Path> feature = jars(settings.home().resolve("bundles"));
            if (cli) {
                // a command needs neither a console nor a watcher: not installing them saves start-up
                feature = feature.stream().filter(p -> !CLI_SKIPS_JARS.contains(p.getFileName().toString())).toList();
            }
            List<Bundle> bundles = install(ctx, feature);
            if (cli && settings.deploy() != null && Files.isDirectory(settings.deploy())) {
                bundles.addAll(installDeployed(ctx, jars(settings.deploy())));
            }
            time("installed");
            fw.start();
            time("framework started");
            fw.adapt(FrameworkWiring.class).resolveBundles(null);
            time("installed and resolved " + bundles.size() + " bundles");
            Bundle console = null;
            Bundle fileInstall = null;
            for (Bundle b : bundles) {
                if (b.getHeaders().get(Constants.FRAGMENT_HOST) != null) {
                    continue;
                }
                if (CONSOLE_BSN.equals(b.getSymbolicName())) {
                    console = b;
                } else if (FILEINSTALL_BSN.equals(b.getSymbolicName())) {
                    fileInstall = b;
                } else if (cli && CONSOLE_ONLY.contains(b.getSymbolicName())) {
                    continue; // saves their start-up; the shell bundle only imports Gogo's API
                } else {
                    startQuietly(b);
                    time("  started " + b.getSymbolicName());
                }
            }
            time("started bundles");
            if (!cli) {
                if (settings.deploy() != null && fileInstall != null) {
                    Files.createDirectories(settings.deploy());
                    startQuietly(fileInstall);
                }
                if (console == null) {
                    throw new LaunchException("the feature has no console bundle (" + CONSOLE_BSN + ")");
                }
                consoleBundle = console;
            }
        } catch (BundleException | IOException e) {
            throw new LaunchException("cannot start the framework: " + e.getMessage(), e);
        }
    }

    /**
     * A new directory for the framework's storage, private to its owner. Named by process id and
     * clock, not by {@code Files.createTempDirectory}, whose random names seed a SecureRandom first
     * (~5 ms of a cold JVM); a name taken already (a pid reused within one clock tick) tries the next.
     */
    static Path newStorage(Path parent) throws IOException {
        String base = StaleStorage.PREFIX + ProcessHandle.current().pid() + "-" + Long.toHexString(System.nanoTime());
        for (int i = 0; ; i++) {
            try {
                return Files.createDirectory(parent.resolve(i == 0 ? base : base + "-" + i), OWNER_ONLY);
            } catch (FileAlreadyExistsException e) {
                if (i == 100) {
                    throw e;
                }
            }
        }
    }

    private static final FileAttribute<?> OWNER_ONLY =
            PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rwx------"));

    /**
     * Where the framework's storage goes. Felix writes it while bundles install and the launcher
     * deletes it at exit: on a busy disk file system those small files and directories cost tens
     * of milliseconds of journal waits per command (profiled: deleting them was a quarter of an
     * `info`'s samples on a loaded machine). In memory (tmpfs /dev/shm) they cost nothing. An
     * explicit {@code -Djava.io.tmpdir} other than /tmp wins.
     */
    static Path storageParent() {
        String tmp = System.getProperty("java.io.tmpdir", "/tmp");
        Path shm = Path.of("/dev/shm");
        if ((tmp.equals("/tmp") || tmp.equals("/tmp/")) && Files.isDirectory(shm) && Files.isWritable(shm)) {
            return shm;
        }
        return Path.of(tmp);
    }

    /** CLI mode: one call of the shell's CommandLine service; its return value is the exit code. */
    private int runCommand(String[] args) throws LaunchException {
        BundleContext ctx = framework.getBundleContext();
        Bundle shell = Stream.of(ctx.getBundles()).filter(b -> SHELL_BSN.equals(b.getSymbolicName())).findFirst()
                .orElseThrow(() -> new LaunchException("the feature at " + settings.home() + " has no " + SHELL_BSN
                        + " bundle, so it cannot run commands"));
        if ((shell.getState() & (Bundle.ACTIVE | Bundle.STARTING)) == 0) {
            throw new LaunchException(SHELL_BSN + " did not start" + notActive());
        }
        ServiceTracker<Object, Object> tracker = new ServiceTracker<>(ctx, COMMAND_LINE, null);
        tracker.open(true); // the launcher cannot see the interface: accept every registration
        try {
            Object service = tracker.waitForService(settings.waitMillis());
            ServiceReference<Object> ref = tracker.getServiceReference();
            if (service == null || ref == null) {
                throw new LaunchException("the shell (" + COMMAND_LINE + ") did not appear within "
                        + settings.waitMillis() / 1000 + " s" + notActive());
            }
            time("shell service ready");
            Integer external = runSubcommand(ctx, args);
            if (external != null) {
                return external;
            }
            Method run = ref.getBundle().loadClass(COMMAND_LINE)
                    .getMethod("run", String[].class, InputStream.class, PrintStream.class, PrintStream.class);
            Object code = run.invoke(service, args, System.in, System.out, System.err);
            System.out.flush();
            time("command done");
            return code instanceof Integer i ? i : 1;
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new LaunchException("interrupted while waiting for the shell");
        } catch (ClassNotFoundException | NoSuchMethodException | IllegalAccessException e) {
            throw new LaunchException("the shell bundle does not offer " + COMMAND_LINE + ".run: " + e, e);
        } catch (InvocationTargetException e) {
            Throwable cause = e.getCause() == null ? e : e.getCause();
            System.err.println("blk: internal error: " + cause);
            cause.printStackTrace();
            return 1;
        } finally {
            tracker.close();
        }
    }

    /**
     * Commands that other bundles add to the command line ({@code ./blk nbd ...} from the NBD
     * server bundle): a service with property {@code blk.subcommand=<name>} and a public method
     * {@code int run(String[] args, InputStream in, PrintStream out, PrintStream err)}, called
     * with the arguments after the name. Returns null when no bundle offers the command.
     */
    private Integer runSubcommand(BundleContext ctx, String[] args) throws LaunchException {
        if (args.length == 0 || !args[0].matches("[a-z][a-z0-9-]*")) {
            return null;
        }
        ServiceReference<?>[] refs;
        try {
            refs = ctx.getServiceReferences((String) null, "(blk.subcommand=" + args[0] + ")");
        } catch (org.osgi.framework.InvalidSyntaxException e) {
            return null;
        }
        if (refs == null || refs.length == 0) {
            return null;
        }
        Object service = ctx.getService(refs[0]);
        if (service == null) {
            return null;
        }
        try {
            Method run = service.getClass().getMethod("run", String[].class, InputStream.class, PrintStream.class,
                    PrintStream.class);
            run.setAccessible(true); // the class may live in a bundle's private package
            Object code = run.invoke(service, java.util.Arrays.copyOfRange(args, 1, args.length), System.in,
                    System.out, System.err);
            System.out.flush();
            return code instanceof Integer i ? i : 1;
        } catch (NoSuchMethodException | IllegalAccessException e) {
            throw new LaunchException("the '" + args[0] + "' command's service has no usable run method: " + e, e);
        } catch (InvocationTargetException e) {
            Throwable cause = e.getCause() == null ? e : e.getCause();
            System.err.println("blk: internal error: " + cause);
            cause.printStackTrace();
            return 1;
        } finally {
            ctx.ungetService(refs[0]);
        }
    }

    /** Interactive mode: gogo.jline owns the terminal until the framework stops (exit, Ctrl-D). */
    private int runConsole() throws LaunchException {
        try {
            awaitBlkCommands();
            consoleBundle.start();
            time("console started");
            framework.waitForStop(0);
            return 0;
        } catch (BundleException e) {
            throw new LaunchException("cannot start the console: " + e.getMessage(), e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return 130;
        }
    }

    /** The console runs gosh_profile at once; let SCR register the blk commands first (bounded). */
    private void awaitBlkCommands() throws InterruptedException {
        BundleContext ctx = framework.getBundleContext();
        try {
            ServiceTracker<Object, Object> t = new ServiceTracker<>(ctx,
                    ctx.createFilter("(osgi.command.scope=blk)"), null);
            t.open(true);
            try {
                t.waitForService(settings.waitMillis());
            } finally {
                t.close();
            }
        } catch (org.osgi.framework.InvalidSyntaxException e) {
            throw new IllegalStateException(e);
        }
        time("blk commands registered");
    }

    /** Stops the framework (bounded) and deletes its storage; safe to call twice and from a hook. */
    private synchronized void stopAndClean() {
        Framework fw = framework;
        framework = null;
        if (fw != null) {
            try {
                fw.stop();
                fw.waitForStop(10_000);
            } catch (BundleException | InterruptedException | RuntimeException e) {
                // leaving anyway; the storage below is still removed
            }
            time("framework stopped");
        }
        Main.deleteTree(storage);
        storage = null;
    }

    private static List<Path> jars(Path dir) throws IOException {
        try (Stream<Path> s = Files.list(dir)) {
            return s.filter(p -> p.getFileName().toString().endsWith(".jar") && Files.isRegularFile(p)).sorted()
                    .toList();
        }
    }

    /** "reference:" keeps Felix from copying every jar into its storage: faster start, less disk. */
    private List<Bundle> install(BundleContext ctx, List<Path> jars) throws BundleException {
        List<Bundle> installed = new ArrayList<>();
        for (Path jar : jars) {
            installed.add(ctx.installBundle("reference:" + jar.toUri()));
            time("  installed " + jar.getFileName());
        }
        return installed;
    }

    /** A broken or duplicate jar in the deploy directory is reported and skipped, as FileInstall does. */
    private static List<Bundle> installDeployed(BundleContext ctx, List<Path> jars) {
        List<Bundle> installed = new ArrayList<>();
        for (Path jar : jars) {
            try {
                installed.add(ctx.installBundle("reference:" + jar.toUri()));
            } catch (BundleException | RuntimeException e) {
                System.err.println("blk: warning: skipping " + jar + ": " + e.getMessage());
            }
        }
        return installed;
    }

    private static void startQuietly(Bundle b) {
        try {
            b.start();
        } catch (BundleException e) {
            System.err.println("blk: warning: bundle " + b.getSymbolicName() + " did not start: " + e.getMessage());
        }
    }

    private String notActive() {
        StringBuilder sb = new StringBuilder();
        for (Bundle b : framework.getBundleContext().getBundles()) {
            if (b.getState() != Bundle.ACTIVE && b.getHeaders().get(Constants.FRAGMENT_HOST) == null
                    && !CONSOLE_BSN.equals(b.getSymbolicName()) && !FILEINSTALL_BSN.equals(b.getSymbolicName())
                    && !CONSOLE_ONLY.contains(b.getSymbolicName())) {
                sb.append("\n  not active: ").append(b.getSymbolicName()).append(' ').append(b.getVersion());
            }
        }
        return sb.toString();
    }

    private void time(String what) {
        if (settings.verbose()) {
            System.err.printf("blk: %6.1f ms %s%n", (System.nanoTime() - t0) / 1e6, what);
        }
    }
}
