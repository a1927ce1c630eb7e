package org.blockhaus.nbd.common.impl;

import java.util.Map;
import java.util.Set;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.Options;
import org.blockhaus.api.spi.ObjectType;
import org.blockhaus.nbd.common.TlsCreds;
import org.osgi.service.component.annotations.Component;

/**
 * QEMU's {@code tls-creds-x509} and {@code tls-creds-psk} objects: the properties are checked in
 * the order given (as QEMU sets them), then the credential files are read and checked, so
 * {@code --object} fails at once with qemu-img's and qemu-nbd's words, used or not. The result
 * is the loaded {@link TlsCreds}, which the NBD client and server take by id.
 */
@Component(property = {ObjectType.TYPE_PROPERTY + "=tls-creds-x509", ObjectType.TYPE_PROPERTY + "=tls-creds-psk"},
        service = ObjectType.class)
public final class TlsObjectType implements ObjectType {
    /** The properties QEMU 7.2's TLS credentials objects take. */
    private static final Map<String, Set<String>> PROPERTIES = Map.of(
            "tls-creds-x509", Set.of("dir", "endpoint", "verify-peer", "priority", "sanity-check", "passwordid"),
            "tls-creds-psk", Set.of("dir", "endpoint", "verify-peer", "priority", "username"));

    @Override
    public Set<String> qomTypes() {
        return PROPERTIES.keySet();
    }

    @Override
    public Object create(String qomType, String id, Options properties) throws BlockException {
        Set<String> allowed = PROPERTIES.get(qomType);
        if (allowed == null) {
            throw BlockException.invalid("Parameter 'qom-type' does not accept value '" + qomType + "'");
        }
        for (String key : properties.topLevelKeys()) {
            if (!allowed.contains(key) || !properties.has(key)) {
                throw BlockException.invalid("Parameter '" + key + "' is unexpected");
            }
            switch (key) {
                case "endpoint" -> {
                    String e = properties.get(key);
                    if (!e.equals("client") && !e.equals("server")) {
                        throw BlockException.invalid("Parameter 'endpoint' does not accept value '" + e + "'");
                    }
                }
                case "verify-peer", "sanity-check" -> properties.getBool(key, true);
                default -> {
                    // strings, taken as given
                }
            }
        }
        return TlsCreds.fromObject(qomType, properties);
    }
}
