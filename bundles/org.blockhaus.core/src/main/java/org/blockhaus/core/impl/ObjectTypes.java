package org.blockhaus.core.impl;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.AccessDeniedException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.Base64;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.Options;
import org.blockhaus.api.spi.ObjectType;
import org.blockhaus.api.spi.UserObject;

/**
 * The object types {@code --object} can create: those registered as {@link ObjectType} services
 * (TLS credentials come from the nbd bundles) and the core's own {@code secret}. Creating checks
 * the definition with QEMU's messages and stores the result in {@link Secrets}.
 */
final class ObjectTypes {
    /** QEMU 7.2's ObjectType enum (qapi/qom.json): the names --object parses at all. */
    private static final Set<String> QEMU_TYPES = Set.of("authz-list", "authz-listfile", "authz-pam",
            "authz-simple", "can-bus", "can-host-socketcan", "colo-compare", "cryptodev-backend",
            "cryptodev-backend-builtin", "cryptodev-vhost-user", "dbus-vmstate", "filter-buffer", "filter-dump",
            "filter-mirror", "filter-redirector", "filter-replay", "filter-rewriter", "input-barrier", "input-linux",
            "iothread", "main-loop", "memory-backend-epc", "memory-backend-file", "memory-backend-memfd",
            "memory-backend-ram", "pef-guest", "pr-manager-helper", "qtest", "rng-builtin", "rng-egd", "rng-random",
            "secret", "secret_keyring", "sev-guest", "thread-context", "s390-pv-guest", "throttle-group",
            "tls-creds-anon", "tls-creds-psk", "tls-creds-x509", "tls-cipher-suites", "x-remote-object",
            "x-vfio-user-server");

    private final Map<String, ObjectType> byName = new ConcurrentHashMap<>();
    private final Secrets secrets;

    ObjectTypes(Secrets secrets) {
        this.secrets = secrets;
    }

    void add(ObjectType type) {
        for (String name : type.qomTypes()) {
            byName.put(name, type);
        }
    }

    void remove(ObjectType type) {
        byName.values().removeIf(t -> t == type);
    }

    /** {@code definition} is the --object text: {@code qom-type,id=ID,...}. */
    UserObject create(Options definition) throws BlockException {
        String type = definition.get("qom-type");
        if (type == null) {
            throw BlockException.invalid("Parameter 'qom-type' is missing");
        }
        ObjectType t = byName.get(type);
        if (!type.equals("secret") && t == null) {
            // a name QEMU's schema knows but nothing here creates gets qemu-img's words for a type its
            // binary lacks; other names fail the schema
            throw BlockException.invalid(QEMU_TYPES.contains(type) ? "invalid object type: " + type
                    : "Parameter 'qom-type' does not accept value '" + type + "'");
        }
        String id = definition.get("id");
        if (id == null) {
            throw BlockException.invalid("Parameter 'id' is missing");
        }
        Options props = definition.without("qom-type").without("id");
        secrets.requireFree(id);
        if (type.equals("secret")) {
            // secrets keep their own store: bytes by id, never option text
            secrets.put(id, secret(props));
            return new UserObject(type, id, Options.empty(), null);
        }
        UserObject o = new UserObject(type, id, props, t.create(type, id, props));
        secrets.putObject(o);
        return o;
    }

    /** The properties QEMU 7.2's secret object takes. */
    private static final Set<String> SECRET_PROPERTIES = Set.of("data", "file", "format", "keyid", "iv");

    /**
     * QEMU's secret object: {@code data=TEXT} or {@code file=PATH}, {@code format=raw|base64}
     * (base64 as glib decodes it: invalid characters refused, a short last group tolerated).
     * {@code keyid}/{@code iv} (a secret encrypted with another) are not supported here.
     */
    private static byte[] secret(Options o) throws BlockException {
        for (String key : o.topLevelKeys()) {
            if (!SECRET_PROPERTIES.contains(key) || !o.has(key)) {
                throw BlockException.invalid("Parameter '" + key + "' is unexpected");
            }
            if (key.equals("format") && !o.get(key).equals("raw") && !o.get(key).equals("base64")) {
                throw BlockException.invalid("Parameter 'format' does not accept value '" + o.get(key) + "'");
            }
        }
        if (o.has("data") && o.has("file")) {
            throw BlockException.invalid("'file' and 'data' are mutually exclusive");
        }
        if (!o.has("data") && !o.has("file")) {
            throw BlockException.invalid("Either 'file' or 'data' must be provided");
        }
        if (o.has("keyid") || o.has("iv")) {
            throw new BlockException(BlockException.Reason.UNSUPPORTED, "Encrypted secrets (keyid, iv) are not"
                    + " supported");
        }
        byte[] value;
        if (o.has("data")) {
            value = o.get("data").getBytes(StandardCharsets.UTF_8);
        } else {
            value = readFile(o.get("file"));
        }
        return "base64".equals(o.get("format")) ? base64(value) : value;
    }

    private static byte[] readFile(String file) throws BlockException {
        Path p = Path.of(file);
        if (Files.isDirectory(p)) {
            throw BlockException.invalid("Unable to read " + file + ": Error reading file \u201c" + file
                    + "\u201d: Is a directory"); // glib's words, which qemu passes on
        }
        try {
            return Files.readAllBytes(p);
        } catch (NoSuchFileException e) {
            throw BlockException.invalid("Unable to read " + file + ": Failed to open file \u201c" + file
                    + "\u201d: No such file or directory");
        } catch (AccessDeniedException e) {
            throw BlockException.invalid("Unable to read " + file + ": Failed to open file \u201c" + file
                    + "\u201d: Permission denied");
        } catch (IOException e) {
            throw BlockException.io("Unable to read " + file + ": " + e.getMessage(), e);
        }
    }

    private static byte[] base64(byte[] text) throws BlockException {
        StringBuilder sb = new StringBuilder();
        for (byte b : text) {
            char c = (char) (b & 0xff);
            boolean valid = c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+'
                    || c == '/' || c == '=' || c == '\n';
            if (!valid) {
                throw BlockException.invalid("Base64 data contains invalid characters");
            }
            if (c != '\n' && c != '=') {
                sb.append(c);
            }
        }
        int rest = sb.length() % 4;
        if (rest == 1) {
            sb.setLength(sb.length() - 1); // an incomplete byte, dropped as glib drops it
        } else if (rest > 1) {
            sb.append("==", 0, 4 - rest);
        }
        try {
            return Base64.getDecoder().decode(sb.toString());
        } catch (IllegalArgumentException e) {
            throw BlockException.invalid("Base64 data contains invalid characters");
        }
    }
}
