package org.blockhaus.api.spi;

import java.util.Objects;
import org.blockhaus.api.Options;

/**
 * A user-creatable object, as QEMU's {@code --object qom-type,id=ID,prop=value,...} defines it:
 * TLS credentials ({@code tls-creds-x509}, {@code tls-creds-psk}) and other objects that options
 * name by id ({@code tls-creds=ID}). Secrets have their own path ({@link OpenContext#secret}) so
 * their bytes are never kept as option text.
 *
 * @param qomType    QEMU's type name, e.g. {@code tls-creds-psk}
 * @param id         what options refer to it by
 * @param properties the remaining properties ({@code dir}, {@code endpoint}, ...), as given
 * @param instance   what its {@link ObjectType} created when it was defined (loaded TLS
 *                   credentials, say), or null for an object defined without its type
 */
public record UserObject(String qomType, String id, Options properties, Object instance) {
    /** An object kept as its definition only; its user interprets the properties. */
    public UserObject(String qomType, String id, Options properties) {
        this(qomType, id, properties, null);
    }

    public UserObject {
        Objects.requireNonNull(qomType, "qomType");
        Objects.requireNonNull(id, "id");
        Objects.requireNonNull(properties, "properties");
    }
}
