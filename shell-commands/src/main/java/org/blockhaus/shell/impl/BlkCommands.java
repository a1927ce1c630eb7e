package org.blockhaus.shell.impl;

import java.io.PrintStream;
import org.apache.felix.service.command.CommandSession;
import org.apache.felix.service.command.Descriptor;
import org.blockhaus.api.BlockException;
import org.blockhaus.core.BlockCore;
import org.blockhaus.shell.impl.Args.UsageException;
import org.blockhaus.shell.impl.Img.CommandException;
import org.osgi.service.component.annotations.Component;
import org.osgi.service.component.annotations.Reference;

/**
 * qemu-img's commands in the Gogo shell, scope {@code blk}. Each takes qemu-img's arguments and
 * returns a result object; {@link ResultConverter} shows it with the same renderer the command
 * line uses, so the shell and {@code ./blk} print the same thing.
 */
@Component(service = BlkCommands.class, property = {"osgi.command.scope=blk",
        "osgi.command.function=drivers", "osgi.command.function=create", "osgi.command.function=info",
        "osgi.command.function=convert", "osgi.command.function=compare", "osgi.command.function=map"})
public class BlkCommands {
    @Reference
    BlockCore core;

    @Descriptor("list installed drivers: name, kind, whether it creates images, bundle state")
    public Object drivers() throws Exception {
        return run(null, "drivers");
    }

    @Descriptor("create an image: create [-q] [-f fmt] [-b backing -F fmt] [-u] [-o options] filename [size]; -o help lists a format's options")
    public Object create(CommandSession session, @Descriptor("qemu-img create arguments") String... args) throws Exception {
        return run(session, "create", args);
    }

    @Descriptor("show facts about an image: info [-f fmt] [--output=human|json] [--backing-chain] [-U] [--image-opts] filename")
    public Object info(CommandSession session, @Descriptor("qemu-img info arguments") String... args) throws Exception {
        return run(session, "info", args);
    }

    @Descriptor("copy and convert images: convert [-c] [-p] [-n] [-f fmt] [-O fmt] [-o options] [-S size] [-m n] [-W] source... target")
    public Object convert(CommandSession session, @Descriptor("qemu-img convert arguments") String... args) throws Exception {
        return run(session, "convert", args);
    }

    @Descriptor("compare the contents of two images: compare [-f fmt] [-F fmt] [-p] [-q] [-s] [-U] image1 image2")
    public Object compare(CommandSession session, @Descriptor("qemu-img compare arguments") String... args) throws Exception {
        return run(session, "compare", args);
    }

    @Descriptor("show where an image's data lives: map [--output=human|json] [-f fmt] [--start-offset=o] [--max-length=l] filename")
    public Object map(CommandSession session, @Descriptor("qemu-img map arguments") String... args) throws Exception {
        return run(session, "map", args);
    }

    private Object run(CommandSession session, String command, String... args) throws Exception {
        PrintStream out = session != null && session.getConsole() != null ? session.getConsole() : System.out;
        Img img = new Img(core, out, System.err);
        try {
            return img.run(command, args == null ? new String[0] : args);
        } catch (UsageException | BlockException | CommandException e) {
            // Gogo shows the message of a failed command; keep qemu-img's words
            throw new IllegalArgumentException(e.getMessage(), e);
        }
    }
}
