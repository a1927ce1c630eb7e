package org.blockhaus.core.impl;

import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.spi.UserObject;

/**
 * QEMU's user-creatable objects by id ({@code --object}): secrets, whose bytes drivers ask for by
 * id only, and the other objects (TLS credentials...), kept as their type and properties. Secrets
 * and objects share one id space, as in QEMU.
 */
final class Secrets {
    private final Map<String, byte[]> byId = new ConcurrentHashMap<>();
    private final Map<String, UserObject> objects = new ConcurrentHashMap<>();

    void put(String id, byte[] value) {
        byId.put(id, value.clone());
    }

    void remove(String id) {
        byId.remove(id);
    }

    byte[] get(String id) throws BlockException {
        byte[] v = byId.get(id);
        if (v == null) {
            throw new BlockException(Reason.NOT_FOUND, "No secret with id '" + id + "' found");
        }
        return v.clone();
    }

    synchronized void putObject(UserObject o) throws BlockException {
        requireFree(o.id());
        objects.put(o.id(), o);
    }

    /** QEMU refuses an id in use before it creates the new object. */
    void requireFree(String id) throws BlockException {
        if (byId.containsKey(id) || objects.containsKey(id)) {
            throw BlockException.invalid("attempt to add duplicate property '" + id + "' to object (type 'container')");
        }
    }

    UserObject object(String id) {
        return objects.get(id);
    }

    UserObject requireObject(String id) throws BlockException {
        UserObject o = objects.get(id);
        if (o == null) {
            throw new BlockException(Reason.NOT_FOUND, "No object with id '" + id + "'");
        }
        return o;
    }

    /** Forgets the object or secret {@code id} (a command's --object definitions end with it). */
    void removeObject(String id) {
        objects.remove(id);
        byId.remove(id);
    }
}
