package org.blockhaus.api;

import java.util.EnumMap;
import java.util.Map;

/**
 * What a node can do, per optional feature, in nbdkit's three states: not at all, emulated
 * (correct but no faster than the plain path), or natively.
 */
public final class Capabilities {
    public enum Feature { WRITE, WRITE_ZEROES, DISCARD, FUA, FLUSH, BLOCK_STATUS, RESIZE, CACHE }

    public enum Support { NONE, EMULATE, NATIVE }

    /** Readable, writable, flushable; everything else left to the core. */
    public static final Capabilities BASIC = builder()
            .with(Feature.WRITE, Support.NATIVE).with(Feature.FLUSH, Support.NATIVE).build();

    private final Map<Feature, Support> support;

    private Capabilities(Map<Feature, Support> support) {
        this.support = support;
    }

    public Support get(Feature feature) {
        return support.getOrDefault(feature, Support.NONE);
    }

    public boolean isNative(Feature feature) {
        return get(feature) == Support.NATIVE;
    }

    public boolean can(Feature feature) {
        return get(feature) != Support.NONE;
    }

    public static Builder builder() {
        return new Builder();
    }

    public Builder toBuilder() {
        Builder b = new Builder();
        b.map.putAll(support);
        return b;
    }

    @Override
    public String toString() {
        return support.toString();
    }

    public static final class Builder {
        private final EnumMap<Feature, Support> map = new EnumMap<>(Feature.class);

        public Builder with(Feature feature, Support level) {
            map.put(feature, level);
            return this;
        }

        public Capabilities build() {
            return new Capabilities(new EnumMap<>(map));
        }
    }
}
