package org.blockhaus.itests;

import static org.junit.Assert.assertTrue;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import javax.inject.Inject;
import org.apache.felix.service.command.CommandProcessor;
import org.apache.felix.service.command.CommandSession;
import org.apache.felix.service.command.Converter;
import org.junit.Before;
import org.junit.Test;
import org.junit.runner.RunWith;
import org.ops4j.pax.exam.Configuration;
import org.ops4j.pax.exam.Option;
import org.ops4j.pax.exam.junit.PaxExam;
import org.ops4j.pax.exam.spi.reactors.ExamReactorStrategy;
import org.ops4j.pax.exam.spi.reactors.PerClass;
import org.osgi.framework.Bundle;
import org.osgi.framework.BundleContext;
import org.osgi.framework.InvalidSyntaxException;

/** The blk commands through a Gogo CommandSession, as an operator in the shell runs them. */
@RunWith(PaxExam.class)
@ExamReactorStrategy(PerClass.class)
public class ShellSessionIT {
    @Inject
    BundleContext context;

    @Inject
    CommandProcessor processor;

    @Configuration
    public Option[] config() {
        return Feature.minimal(Feature.newDeployDir());
    }

    /** Gogo finds commands by service; the injected processor may come before SCR registered ours. */
    @Before
    public void blkCommandsAreRegistered() throws Exception {
        Feature.await("the blk commands are registered", Duration.ofSeconds(10), () -> {
            try {
                return context.getServiceReferences((String) null, "(osgi.command.scope=blk)") != null;
            } catch (InvalidSyntaxException e) {
                throw new IllegalStateException(e);
            }
        });
    }

    @Test
    public void driversListsTheMinimalDriversAndAHotInstalledOne() throws Exception {
        String before = run("blk:drivers");
        assertTrue(before, before.matches("(?s).*\\braw\\s+format\\b.*"));
        assertTrue(before, before.matches("(?s).*\\bfile\\s+protocol\\b.*"));
        assertTrue(before, !before.contains("null-co"));

        Bundle driver = context.installBundle(Feature.nullDriverJar().toUri().toString());
        driver.start();
        try {
            String after = run("blk:drivers");
            assertTrue(after, after.matches("(?s).*\\bnull-co\\s+protocol\\b.*"));
        } finally {
            driver.uninstall();
        }
        assertTrue(!run("blk:drivers").contains("null-co"));
    }

    @Test
    public void infoPrintsQemuImgJsonForARawFile() throws Exception {
        Path dir = Files.createTempDirectory(Files.createDirectories(Path.of(System.getProperty("blk.itest.tmp"))), "img-");
        Path image = dir.resolve("disk.raw");
        try (var ch = java.nio.channels.FileChannel.open(image, java.nio.file.StandardOpenOption.CREATE_NEW,
                java.nio.file.StandardOpenOption.WRITE)) {
            ch.truncate(0);
            ch.write(java.nio.ByteBuffer.wrap(new byte[] {1}), 3 * 1024 * 1024 - 1); // 3 MiB, sparse
        }
        String json = run("blk:info --output=json " + image);
        assertTrue(json, json.contains("\"virtual-size\": 3145728"));
        assertTrue(json, json.contains("\"format\": \"raw\""));
        assertTrue(json, json.contains("\"filename\": \"" + image + "\""));

        String human = run("blk:info -f raw " + image);
        assertTrue(human, human.contains("file format: raw"));
        assertTrue(human, human.contains("virtual size: 3 MiB (3145728 bytes)"));
    }

    @Test
    public void helpDescribesTheBlkCommands() throws Exception {
        String help = run("help blk:info");
        assertTrue(help, help.contains("info"));
        assertTrue(help, help.contains("scope: blk"));
    }

    @Test
    public void anUnknownDriverFailsWithQemusWords() throws Exception {
        try {
            run("blk:info -f nosuchformat /nonexistent");
            throw new AssertionError("expected a failure");
        } catch (IllegalArgumentException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("nosuchformat"));
        }
    }

    /** Runs one command line; returns what it printed plus its result as Gogo shows it. */
    private String run(String commandLine) throws Exception {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        PrintStream out = new PrintStream(bytes, true, StandardCharsets.UTF_8);
        try (CommandSession session = processor.createSession(new ByteArrayInputStream(new byte[0]), out, out)) {
            Object result = session.execute(commandLine);
            if (result != null) {
                out.println(session.format(result, Converter.INSPECT));
            }
            out.flush();
            return bytes.toString(StandardCharsets.UTF_8);
        }
    }
}
