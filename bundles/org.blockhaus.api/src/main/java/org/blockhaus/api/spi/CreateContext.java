package org.blockhaus.api.spi;

import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.Options;
import org.osgi.annotation.versioning.ProviderType;

/** Everything a driver gets to create an image; the core implements it. */
@ProviderType
public interface CreateContext {
    String filename();

    /** Create options ({@code -o}), validated against the descriptor; includes "size". */
    Options options();

    /** Virtual size in bytes. */
    long size();

    /**
     * Formats: creates the storage below the image with the protocol the filename names
     * (passing {@code protocolOptions} such as preallocation and nocow) and opens it read-write,
     * empty.
     */
    BlockNode createFile(Options protocolOptions) throws BlockException;

    /**
     * Creates a second file next to the image (qcow2's external {@code data_file}), with the
     * protocol its name selects, and opens it read-write, empty. Relative names resolve against
     * the image's directory.
     */
    BlockNode createFile(String filename, Options protocolOptions) throws BlockException;

    /**
     * {@code qemu-img create -u}: the backing file is recorded as given but never opened (it need
     * not exist yet), so a driver must not call {@link #openBacking}. The core has then already
     * made sure a size and a backing format were given.
     */
    default boolean unsafeBacking() {
        return false;
    }

    /** Opens a backing image read-only, to check it and to learn its size. */
    BlockNode openBacking(String backingFilename, String backingFormat) throws BlockException;

    byte[] secret(String id) throws BlockException;

    void warn(String message);
}
