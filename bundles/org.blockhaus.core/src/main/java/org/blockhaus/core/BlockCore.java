package org.blockhaus.core;

import java.util.List;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockService;
import org.blockhaus.api.spi.BlockDriver;
import org.blockhaus.api.spi.OptionSpec;
import org.osgi.annotation.versioning.ProviderType;

/**
 * The core's own face, for the shell and for embedding without a framework: a
 * {@link BlockService} plus what qemu-img's commands need beyond it.
 */
@ProviderType
public interface BlockCore extends BlockService {
    /** Creates a core outside OSGi; add drivers with {@link #addDriver}. */
    static BlockCore standalone() {
        return new org.blockhaus.core.impl.CoreService();
    }

    /** Registers a driver by hand (outside a framework; inside, drivers are services). */
    void addDriver(BlockDriver driver);

    /** Removes a driver, closing every image opened through it and every image above those. */
    void removeDriverAndClose(BlockDriver driver);

    /** The create options of a format, with those of the protocol {@code filename} would use. */
    List<OptionSpec> createOptions(String format, String filename) throws BlockException;

    /**
     * The options qemu-img amend takes for a format's images, as its driver declares them; empty
     * when the format cannot be amended. Fails with "Unknown file format" for an unknown one.
     */
    List<OptionSpec> amendOptions(String format) throws BlockException;

    /**
     * qemu-img measure: space a {@code format} image needs for {@code source}'s content (or for
     * an empty image of {@code size} bytes when source is null).
     */
    org.blockhaus.api.spi.MeasureResult measure(String format, org.blockhaus.api.Options createOptions, long size,
            org.blockhaus.api.Image source) throws BlockException;

    /**
     * Block status of {@code top} merged down its backing chain: the first layer that allocates
     * the range decides it; ranges no layer allocates, and ranges past the end of a shorter backing
     * file, read as zeroes. The answer covers at least one byte and at most {@code length}. One walk
     * for every user (convert, map, rebase, compare), so they agree.
     */
    static ChainStatus chainStatus(org.blockhaus.api.Image top, long offset, long length) throws BlockException {
        return org.blockhaus.core.impl.ChainWalk.status(top, offset, length);
    }

    /** A secret for {@code --object secret,id=...}; drivers ask for it by id. */
    void addSecret(String id, byte[] value);

    void removeSecret(String id);

    /**
     * Defines a user-creatable object ({@code --object tls-creds-x509,id=...}); drivers ask for it
     * by id. An id already in use (by any object or secret) is refused with QEMU's message.
     */
    void addObject(org.blockhaus.api.spi.UserObject object) throws BlockException;

    /**
     * Creates an object as {@code --object} defines it ({@code qom-type,id=ID,prop=value,...},
     * QEMU's key=value text): its {@link org.blockhaus.api.spi.ObjectType} (a service, or one
     * added with {@link #addObjectType}; {@code secret} is the core's own) checks and creates it
     * now, with QEMU's messages. Secrets go to the secret store ({@link #addSecret}); other
     * objects are kept by id as {@link #addObject} does.
     */
    org.blockhaus.api.spi.UserObject createObject(String definition) throws BlockException;

    /** Registers an object type by hand (outside a framework; inside, types are services). */
    void addObjectType(org.blockhaus.api.spi.ObjectType type);

    /** The object with {@code id}, or null. */
    org.blockhaus.api.spi.UserObject object(String id);

    void removeObject(String id);
}
