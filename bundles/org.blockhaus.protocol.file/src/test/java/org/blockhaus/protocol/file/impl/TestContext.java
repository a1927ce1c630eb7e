package org.blockhaus.protocol.file.impl;

import java.util.ArrayList;
import java.util.EnumSet;
import java.util.List;
import java.util.Set;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockNode;
import org.blockhaus.api.Options;
import org.blockhaus.api.spi.OpenContext;
import org.blockhaus.api.spi.Permission;

/** An OpenContext with exactly the permissions a test names (QEMU's, where the core differs). */
final class TestContext implements OpenContext {
    final String filename;
    final Options options;
    final boolean readOnly;
    final Set<Permission> perm;
    final Set<Permission> shared;
    final List<String> warnings = new ArrayList<>();

    TestContext(String filename, Options options, boolean readOnly, Set<Permission> perm, Set<Permission> shared) {
        this.filename = filename;
        this.options = options.has("filename") ? options : options.with("filename", filename);
        this.readOnly = readOnly;
        this.perm = perm;
        this.shared = shared;
    }

    /** What qemu-io -f raw holds: read and write, sharing everything. */
    static TestContext readWrite(String filename, Options options) {
        return new TestContext(filename, options, false, EnumSet.of(Permission.CONSISTENT_READ, Permission.WRITE),
                Permission.all());
    }

    static TestContext readWrite(String filename) {
        return readWrite(filename, Options.empty());
    }

    /** What qemu-io -r -f raw holds: read, sharing everything. */
    static TestContext readOnly(String filename) {
        return new TestContext(filename, Options.empty(), true, EnumSet.of(Permission.CONSISTENT_READ),
                Permission.all());
    }

    /** A permission pair: what a user holds and what it lets others have. */
    record Perms(Set<Permission> perm, Set<Permission> shared) {
        TestContext context(String filename, boolean readOnly) {
            return new TestContext(filename, Options.empty(), readOnly, perm, shared);
        }
    }

    @Override public String filename() { return filename; }
    @Override public Options options() { return options; }
    @Override public boolean readOnly() { return readOnly; }
    @Override public Set<Permission> permissions() { return perm; }
    @Override public Set<Permission> sharedPermissions() { return shared; }
    @Override public void warn(String message) { warnings.add(message); }

    @Override
    public BlockNode openFile() {
        throw new UnsupportedOperationException("protocols have no file child");
    }

    @Override
    public BlockNode openChild(String role, String filename, boolean probeFormat) {
        throw new UnsupportedOperationException("protocols have no children");
    }

    @Override
    public BlockNode openBacking(String backingFilename, String backingFormat) {
        throw new UnsupportedOperationException("protocols have no backing");
    }

    @Override
    public byte[] secret(String id) throws BlockException {
        throw BlockException.invalid("no secrets here");
    }
}
