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
        "osgi.command.function=convert", "osgi.command.function=compare", "osgi.command.function=map",
        "osgi.command.function=check", "osgi.command.function=resize", "osgi.command.function=measure",
        "osgi.command.function=snapshot", "osgi.command.function=amend", "osgi.command.function=commit",
        "osgi.command.function=rebase", "osgi.command.function=bench", "osgi.command.function=dd",
        "osgi.command.function=formats", "osgi.command.function=bitmap"})
public class BlkCommands {
    @Reference
    BlockCore core;

    @Descriptor("names of the installed format drivers (used by tab completion)")
    public java.util.List<String> formats() {
        return core.drivers().stream().filter(d -> d.kind().equals("format")).map(d -> d.name()).toList();
    }

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

    @Descriptor("copy and convert images: convert [-c] [-p] [-q] [-n] [-f fmt] [-O fmt] [-o options] [-B backing -F fmt] [-l snapshot] [-S size] [-m n] [-W] [-t cache] [-T cache] [--target-is-zero] [--salvage] source... target")
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

    @Descriptor("check an image for errors: check [-q] [-f fmt] [--output=human|json] [-r leaks|all] [-U] filename")
    public Object check(CommandSession session, @Descriptor("qemu-img check arguments") String... args) throws Exception {
        return run(session, "check", args);
    }

    @Descriptor("change an image's size: resize [--shrink] [--preallocation=mode] [-f fmt] [-q] filename [+|-]size")
    public Object resize(CommandSession session, @Descriptor("qemu-img resize arguments") String... args) throws Exception {
        return run(session, "resize", args);
    }

    @Descriptor("space an image needs: measure [--output=human|json] [-O fmt] [-o options] (--size N | [-f fmt] filename)")
    public Object measure(CommandSession session, @Descriptor("qemu-img measure arguments") String... args) throws Exception {
        return run(session, "measure", args);
    }

    @Descriptor("persistent dirty bitmaps: bitmap [-f fmt] {--add [-g granularity] | --remove | --clear | --enable | --disable | --merge source [-b src_file [-F src_fmt]]}... filename bitmap")
    public Object bitmap(CommandSession session, @Descriptor("qemu-img bitmap arguments") String... args) throws Exception {
        return run(session, "bitmap", args);
    }

    @Descriptor("internal snapshots: snapshot [-l | -a name | -c name | -d name] [-f fmt] [-U] filename")
    public Object snapshot(CommandSession session, @Descriptor("qemu-img snapshot arguments") String... args) throws Exception {
        return run(session, "snapshot", args);
    }

    @Descriptor("change format options in place: amend [-p] [-q] [-f fmt] [--force] -o options filename")
    public Object amend(CommandSession session, @Descriptor("qemu-img amend arguments") String... args) throws Exception {
        return run(session, "amend", args);
    }

    @Descriptor("write an image's changes into its backing file (then empty it unless -d): commit [-q] [-f fmt] [-b base] [-d] [-p] filename")
    public Object commit(CommandSession session, @Descriptor("qemu-img commit arguments") String... args) throws Exception {
        return run(session, "commit", args);
    }

    @Descriptor("change an image's backing file, keeping its content (-u: only the name): rebase [-q] [-f fmt] [-p] [-u] -b backing [-F fmt] filename")
    public Object rebase(CommandSession session, @Descriptor("qemu-img rebase arguments") String... args) throws Exception {
        return run(session, "rebase", args);
    }

    @Descriptor("measure I/O speed: bench [-c count] [-d depth] [-f fmt] [-o offset] [-s size] [-S step] [-t cache] [-i aio] [-w [--pattern=byte] [--flush-interval=n] [--no-drain]] [-q] filename")
    public Object bench(CommandSession session, @Descriptor("qemu-img bench arguments") String... args) throws Exception {
        return run(session, "bench", args);
    }

    @Descriptor("copy with dd's operands: dd [-f fmt] [-O fmt] [bs=size] [count=n] [skip=n] if=input of=output")
    public Object dd(CommandSession session, @Descriptor("qemu-img dd arguments") String... args) throws Exception {
        return run(session, "dd", args);
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
