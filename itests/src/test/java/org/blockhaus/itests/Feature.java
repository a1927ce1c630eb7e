package org.blockhaus.itests;

import static org.ops4j.pax.exam.CoreOptions.bundle;
import static org.ops4j.pax.exam.CoreOptions.cleanCaches;
import static org.ops4j.pax.exam.CoreOptions.frameworkProperty;
import static org.ops4j.pax.exam.CoreOptions.junitBundles;
import static org.ops4j.pax.exam.CoreOptions.workingDirectory;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.function.BooleanSupplier;
import java.util.stream.Stream;
import org.ops4j.pax.exam.Option;

/**
 * The framework every itest runs in: the bundles of the minimal feature (copied by Maven to
 * {@code target/bundles}), started, without gogo.jline (it would open a console on the test JVM's
 * stdin). The native container runs Felix inside the test JVM, so tests read the same system
 * properties as this class.
 */
final class Feature {
    static final String CONSOLE_BSN_FILE = "org.apache.felix.gogo.jline.jar";

    private Feature() {
    }

    static Option[] minimal(Path deployDir) {
        List<Option> options = new ArrayList<>();
        Path bundles = Path.of(required("blk.itest.bundles"));
        try (Stream<Path> jars = Files.list(bundles)) {
            jars.filter(p -> p.toString().endsWith(".jar")).sorted()
                    .filter(p -> !p.getFileName().toString().equals(CONSOLE_BSN_FILE))
                    .forEach(p -> options.add(bundle(p.toUri().toString())));
        } catch (IOException e) {
            throw new IllegalStateException("cannot list the feature bundles in " + bundles, e);
        }
        if (options.size() < 5) {
            throw new IllegalStateException("the minimal feature in " + bundles + " looks incomplete: " + options.size()
                    + " bundles");
        }
        options.add(frameworkProperty("felix.fileinstall.dir").value(deployDir.toString()));
        options.add(frameworkProperty("felix.fileinstall.poll").value("200"));
        options.add(frameworkProperty("felix.fileinstall.noInitialDelay").value("true"));
        options.add(frameworkProperty("felix.fileinstall.filter").value(".*\\.jar"));
        options.add(junitBundles());
        options.add(cleanCaches());
        options.add(workingDirectory(required("blk.itest.work")));
        return options.toArray(Option[]::new);
    }

    /** A fresh, empty deploy directory for one test class's framework. */
    static Path newDeployDir() {
        try {
            // not below blk.itest.work: Pax Exam's cleanCaches() empties that when the framework starts
            Path tmp = Files.createDirectories(Path.of(required("blk.itest.tmp")));
            return Files.createTempDirectory(tmp, "deploy-");
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
    }

    /** The null-co driver's bundle jar, which the tests install and remove at run time. */
    static Path nullDriverJar() {
        Path jar = Path.of(required("blk.itest.drivers"), "org.blockhaus.protocol.null.jar");
        if (!Files.isRegularFile(jar)) {
            throw new IllegalStateException("missing " + jar + ": run the itests through Maven (mvn verify)");
        }
        return jar;
    }

    static void await(String what, Duration max, BooleanSupplier condition) throws InterruptedException {
        long deadline = System.nanoTime() + max.toNanos();
        while (!condition.getAsBoolean()) {
            if (System.nanoTime() > deadline) {
                throw new AssertionError("timed out after " + max.toSeconds() + " s waiting until " + what);
            }
            Thread.sleep(50);
        }
    }

    private static String required(String property) {
        String v = System.getProperty(property);
        if (v == null) {
            throw new IllegalStateException("system property " + property + " is not set: run the itests through Maven");
        }
        return v;
    }
}
