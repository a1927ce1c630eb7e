package org.blockhaus.api.spi;

import java.util.Set;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.Options;
import org.osgi.annotation.versioning.ProviderType;

/** Everything a driver gets to open one node; the core implements it. */
@ProviderType
public interface OpenContext {
    /** The filename this node was opened with, or null (e.g. for a node given only by options). */
    String filename();

    /** This node's own options: children subtrees ("file.", "backing.") removed. */
    Options options();

    boolean readOnly();

    /**
     * Whether this format node is opened for a consistency check (qemu's BDRV_O_CHECK): repairs a
     * driver would make on opening are left to the check.
     */
    default boolean forCheck() {
        return false;
    }

    /** Permissions the users of this node need ({@code CONSISTENT_READ}, {@code WRITE}, ...). */
    Set<Permission> permissions();

    /** Permissions the users of this node let others have at the same time. */
    Set<Permission> sharedPermissions();

    /** Opens the child with role "file" (the storage below a format or filter). */
    BlockNode openFile() throws BlockException;

    /**
     * Opens the child with {@code role} from the options subtree of that name, or, if there is
     * none, from {@code filename} resolved relative to this image (null filename: the child is
     * absent and null is returned). {@code format} null means "probe".
     */
    BlockNode openChild(String role, String filename, boolean probeFormat) throws BlockException;

    /**
     * Opens the backing image named in this image's header, read-only. Returns null when the user
     * asked for no backing ({@code backing=null}). Relative names resolve against this image.
     */
    BlockNode openBacking(String backingFilename, String backingFormat) throws BlockException;

    /** A secret given with {@code --object secret,id=...}. */
    byte[] secret(String id) throws BlockException;

    /**
     * The object {@code --object qom-type,id=ID,...} defined (TLS credentials, say). Errors name
     * the id; a driver checks the type itself, with its own message.
     */
    default UserObject object(String id) throws BlockException {
        throw new BlockException(BlockException.Reason.NOT_FOUND, "No object with id '" + id + "'");
    }

    /** Shows a warning to the user the way qemu-img does ("qemu-img: warning: ..."). */
    void warn(String message);
}
