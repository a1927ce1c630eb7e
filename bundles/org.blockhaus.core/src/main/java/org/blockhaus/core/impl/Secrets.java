package org.blockhaus.core.impl;

import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;

/** Secrets given by id ({@code --object secret,id=...}); drivers ask for them by id only. */
final class Secrets {
    private final Map<String, byte[]> byId = new ConcurrentHashMap<>();

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
}
