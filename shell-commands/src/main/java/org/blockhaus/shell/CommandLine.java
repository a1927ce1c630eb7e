package org.blockhaus.shell;

import java.io.InputStream;
import java.io.PrintStream;
import org.osgi.annotation.versioning.ProviderType;

/**
 * qemu-img's command line as a service: {@code run(["info", "--output=json", "disk.img"], ...)}
 * prints what qemu-img prints and returns its exit code. The launcher calls it for {@code ./blk}.
 */
@ProviderType
public interface CommandLine {
    int run(String[] args, InputStream in, PrintStream out, PrintStream err);
}
