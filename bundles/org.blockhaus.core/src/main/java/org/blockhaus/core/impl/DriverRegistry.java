package org.blockhaus.core.impl;

import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CopyOnWriteArrayList;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockException.Reason;
import org.blockhaus.api.spi.BlockDriver;
import org.blockhaus.api.spi.DriverDescriptor;

/**
 * The drivers present right now and the nodes each one has open. Removing a driver closes its
 * nodes and everything built on them before the driver's bundle goes away.
 */
final class DriverRegistry {
    /** A registered driver with where it came from (for blk:drivers). */
    record Entry(BlockDriver driver, DriverDescriptor descriptor, String bundle, java.util.function.Supplier<String> state,
            long order) {
    }

    private final List<Entry> entries = new CopyOnWriteArrayList<>();
    private final Map<BlockDriver, Set<ManagedNode>> openNodes = new ConcurrentHashMap<>();
    private long counter;

    synchronized void add(BlockDriver driver, String bundle, java.util.function.Supplier<String> state) {
        DriverDescriptor d = driver.descriptor();
        entries.add(new Entry(driver, d, bundle, state, counter++));
        openNodes.putIfAbsent(driver, ConcurrentHashMap.newKeySet());
    }

    /** Forgets the driver after closing every node it opened, with the users of those nodes. */
    void remove(BlockDriver driver) {
        synchronized (this) {
            entries.removeIf(e -> e.driver() == driver);
        }
        Set<ManagedNode> nodes = openNodes.remove(driver);
        if (nodes != null) {
            String name;
            try {
                name = driver.descriptor().name();
            } catch (RuntimeException e) {
                name = "?";
            }
            for (ManagedNode n : new ArrayList<>(nodes)) {
                n.closeWithUsers("driver '" + name + "' was removed");
            }
        }
    }

    void track(BlockDriver driver, ManagedNode node) throws BlockException {
        Set<ManagedNode> set = openNodes.get(driver);
        if (set == null) {
            throw new BlockException(Reason.CLOSED, "driver '" + node.driverName() + "' was removed while opening");
        }
        set.add(node);
    }

    void untrack(BlockDriver driver, ManagedNode node) {
        Set<ManagedNode> set = openNodes.get(driver);
        if (set != null) {
            set.remove(node);
        }
    }

    List<Entry> entries() {
        List<Entry> l = new ArrayList<>(entries);
        l.sort(Comparator.comparing((Entry e) -> e.descriptor().name()));
        return l;
    }

    /** The driver named {@code name}; if several register it, the first registered wins. */
    Entry find(String name) {
        for (Entry e : entries) {
            if (e.descriptor().name().equals(name)) {
                return e;
            }
        }
        return null;
    }

    /** The protocol driver that claims a URI scheme ("nbd") or prefix ("nbd:"). */
    Entry findProtocol(String schemeOrPrefix) {
        for (Entry e : entries) {
            if (e.descriptor().kind() == DriverDescriptor.Kind.PROTOCOL
                    && e.descriptor().protocols().contains(schemeOrPrefix)) {
                return e;
            }
        }
        return null;
    }

    List<Entry> protocols() {
        List<Entry> l = new ArrayList<>();
        for (Entry e : entries) {
            if (e.descriptor().kind() == DriverDescriptor.Kind.PROTOCOL) {
                l.add(e);
            }
        }
        return l;
    }

    List<Entry> formats() {
        List<Entry> l = new ArrayList<>();
        for (Entry e : entries) {
            if (e.descriptor().kind() == DriverDescriptor.Kind.FORMAT) {
                l.add(e);
            }
        }
        return l;
    }

    int openCount(BlockDriver driver) {
        Set<ManagedNode> s = openNodes.get(driver);
        return s == null ? 0 : s.size();
    }
}
