package org.blockhaus.shell.impl;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.util.Arrays;
import java.util.Set;
import java.util.TreeSet;
import org.apache.felix.service.command.Descriptor;
import org.blockhaus.core.BlockCore;
import org.blockhaus.format.raw.RawDriver;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * The Gogo commands (scope blk): each is documented for {@code help blk:<command>}, returns a
 * data object a Java caller can read, and shows it exactly as ./blk prints it.
 */
class BlkCommandsTest extends QemuComparison {
    private BlkCommands commands;

    @BeforeEach
    void commands() {
        BlockCore core = BlockCore.standalone();
        core.addDriver(new RawDriver());
        core.addDriver(TestDrivers.file());
        core.addDriver(TestDrivers.qcow2());
        commands = new BlkCommands();
        commands.core = core;
    }

    @Test
    void everyQemuImgCommandIsRegisteredAndDescribed() {
        Set<String> commands = new TreeSet<>();
        for (Method m : BlkCommands.class.getDeclaredMethods()) {
            if (Modifier.isPublic(m.getModifiers())) {
                commands.add(m.getName());
            }
        }
        assertTrue(commands.containsAll(Img.SUBCOMMANDS), commands.toString());
        for (Method m : BlkCommands.class.getDeclaredMethods()) {
            if (Modifier.isPublic(m.getModifiers())) {
                assertNotNull(m.getAnnotation(Descriptor.class), m.getName() + " has no @Descriptor");
                assertTrue(m.getAnnotation(Descriptor.class).value().length() > 20, m.getName());
            }
        }
    }

    @Test
    void commandsReturnDataThatRendersAsTheCommandLinePrints() throws Exception {
        sh("qemu-img", "create", "-q", "-f", "qcow2", "a.qcow2", "64M");
        sh("qemu-io", "-c", "write -P 1 0 1M", "a.qcow2");
        String a = dir.resolve("a.qcow2").toString();

        Results.Info info = assertInstanceOf(Results.Info.class, commands.info(null, "--output=json", a));
        assertEquals("qcow2", info.images().get(0).get("format"));
        assertEquals(64L << 20, ((Number) info.images().get(0).get("virtual-size")).longValue());

        Results.MapResult map = assertInstanceOf(Results.MapResult.class, commands.map(null, a));
        assertEquals(1 << 20, map.entries().get(0).length());
        assertTrue(map.entries().get(0).data());

        Results.Check check = assertInstanceOf(Results.Check.class, commands.check(null, a));
        assertEquals(0, check.result().leaks());
        assertEquals(0, check.exitCode());

        Results.Compare cmp = assertInstanceOf(Results.Compare.class, commands.compare(null, a, a));
        assertEquals(0, cmp.exitCode());

        Results.Measure m = assertInstanceOf(Results.Measure.class, commands.measure(null, "-O", "qcow2", a));
        assertTrue(m.result().required() > 0);

        ResultConverter converter = new ResultConverter();
        for (String[] c : new String[][] {{"info", a}, {"map", "--output=json", a}, {"check", a},
            {"measure", "-O", "qcow2", a}, {"snapshot", "-l", a}}) {
            Object result = switch (c[0]) {
                case "info" -> commands.info(null, Arrays.copyOfRange(c, 1, c.length));
                case "map" -> commands.map(null, Arrays.copyOfRange(c, 1, c.length));
                case "check" -> commands.check(null, Arrays.copyOfRange(c, 1, c.length));
                case "measure" -> commands.measure(null, Arrays.copyOfRange(c, 1, c.length));
                default -> commands.snapshot(null, Arrays.copyOfRange(c, 1, c.length));
            };
            String cli = blk(c).out();
            CharSequence shown = converter.format(result, 0, null);
            assertEquals(cli.endsWith("\n") ? cli.substring(0, cli.length() - 1) : cli,
                    relative(String.valueOf(shown)), String.join(" ", c));
        }
        assertTrue(commands.formats().contains("qcow2"));
        Results.Drivers drivers = assertInstanceOf(Results.Drivers.class, commands.drivers());
        assertTrue(drivers.drivers().stream().anyMatch(d -> d.name().equals("file") && d.kind().equals("protocol")));
    }

    @Test
    void failuresKeepQemuImgsWords() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> commands.info(null, dir.resolve("nofile").toString()));
        assertEquals("Could not open '" + dir.resolve("nofile") + "': Could not open '" + dir.resolve("nofile")
                + "': No such file or directory", e.getMessage());
    }
}
