package org.blockhaus.shell.impl;

import java.io.InputStream;
import java.io.PrintStream;
import java.util.Arrays;
import org.blockhaus.api.BlockException;
import org.blockhaus.core.BlockCore;
import org.blockhaus.shell.CommandLine;
import org.blockhaus.shell.impl.Args.UsageException;
import org.blockhaus.shell.impl.Img.CommandException;
import org.osgi.service.component.annotations.Component;
import org.osgi.service.component.annotations.Reference;

/** {@code ./blk <command> ...}: qemu-img's command line, its output and its exit codes. */
@Component(service = CommandLine.class)
public class CliService implements CommandLine {
    @Reference
    BlockCore core;

    public CliService() {
    }

    /** Outside a framework (tests, embedding). */
    public CliService(BlockCore core) {
        this.core = core;
    }

    @Override
    public int run(String[] args, InputStream in, PrintStream out, PrintStream err) {
        if (args.length == 0) {
            err.print("qemu-img: Not enough arguments\nTry 'qemu-img --help' for more information\n");
            return 1;
        }
        String command = args[0];
        String[] rest = Arrays.copyOfRange(args, 1, args.length);
        if (command.equals("--help") || command.equals("-h") || command.equals("help")) {
            out.print(Usage.TEXT);
            return 0;
        }
        if (!Img.SUBCOMMANDS.contains(command)) {
            err.print("qemu-img: Command not found: " + command + "\nTry 'qemu-img --help' for more information\n");
            return 1;
        }
        Img img = new Img(core, out, err);
        try {
            Object result = img.run(command, rest);
            out.print(Render.render(result));
            out.flush();
            if (result instanceof Results.Result r && r.error() != null) {
                printError(err, r.error());
            }
            return result instanceof Results.Result r ? r.exitCode() : 0;
        } catch (UsageException e) {
            err.print("qemu-img: " + e.getMessage() + "\nTry 'qemu-img --help' for more information\n");
            return 1;
        } catch (BlockException e) {
            printError(err, e.getMessage());
            printDeferred(img, err);
            return 1;
        } catch (CommandException e) {
            err.print("qemu-img: " + e.getMessage() + (e.newline ? "\n" : ""));
            printDeferred(img, err);
            return e.exitCode;
        } catch (RuntimeException e) {
            printError(err, "internal error: " + e);
            return 1;
        } finally {
            out.flush();
            err.flush();
        }
    }

    private static void printDeferred(Img img, PrintStream err) {
        for (String w : img.deferredWarnings()) {
            err.print("qemu-img: warning: " + w + "\n");
        }
    }

    /** qemu-img names itself before an error (once: continuation lines stand alone). */
    static void printError(PrintStream err, String message) {
        err.print("qemu-img: " + message + "\n");
    }
}
