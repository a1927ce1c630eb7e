package org.blockhaus.api.spi;

import java.util.Set;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.Options;
import org.osgi.annotation.versioning.ConsumerType;

/**
 * A type of QEMU's user-creatable objects ({@code --object qom-type,id=ID,prop=value,...}), as a
 * service with {@link #TYPE_PROPERTY} naming the types it creates. The core calls
 * {@link #create} when the object is defined, so a mistake (a bad property, a missing or broken
 * credentials file) is reported then, with QEMU's words, and whether or not anything uses the
 * object, as qemu-img and qemu-nbd do. Drivers get the result back by id
 * ({@link OpenContext#object}, {@link UserObject#instance()}).
 */
@ConsumerType
public interface ObjectType {
    /** Service property: the QEMU type names this service creates ({@code tls-creds-psk}, ...). */
    String TYPE_PROPERTY = "blk.object.type";

    /** The QEMU type names this creates. */
    Set<String> qomTypes();

    /**
     * Checks {@code properties} (those after qom-type and id) and creates the object, doing now
     * what QEMU does at creation (for TLS credentials: reading and checking the files).
     *
     * @return the object's state, kept as {@link UserObject#instance()}
     */
    Object create(String qomType, String id, Options properties) throws BlockException;
}
