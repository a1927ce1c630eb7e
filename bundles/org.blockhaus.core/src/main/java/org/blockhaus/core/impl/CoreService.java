package org.blockhaus.core.impl;

import java.util.ArrayList;
import java.util.List;
import java.util.function.Consumer;
import org.blockhaus.api.BlockException;
import org.blockhaus.api.BlockService;
import org.blockhaus.api.ConvertOptions;
import org.blockhaus.api.DriverInfo;
import org.blockhaus.api.Image;
import org.blockhaus.api.Options;
import org.blockhaus.api.spi.BlockDriver;
import org.blockhaus.api.spi.OptionSpec;
import org.blockhaus.core.BlockCore;
import org.osgi.framework.Bundle;
import org.osgi.framework.ServiceReference;
import org.osgi.service.component.annotations.Component;
import org.osgi.service.component.annotations.Reference;
import org.osgi.service.component.annotations.ReferenceCardinality;
import org.osgi.service.component.annotations.ReferencePolicy;
import org.osgi.service.component.annotations.ReferencePolicyOption;

/**
 * The core as a service: follows driver services as they come and go (a dynamic, multiple
 * reference, so installing a driver bundle makes it usable at once and stopping one closes its
 * images) and answers {@link BlockService} calls.
 */
@Component(service = {BlockService.class, BlockCore.class}, immediate = true)
public class CoreService implements BlockCore {
    private final DriverRegistry registry = new DriverRegistry();
    private final Secrets secrets = new Secrets();
    private final ObjectTypes objectTypes = new ObjectTypes(secrets);
    private final ChainResolver resolver = new ChainResolver(registry, secrets);
    private final Creator creator = new Creator(registry, resolver, secrets);
    private final CopyEngine copier = new CopyEngine();

    @Reference(service = BlockDriver.class, cardinality = ReferenceCardinality.MULTIPLE,
            policy = ReferencePolicy.DYNAMIC, policyOption = ReferencePolicyOption.GREEDY, unbind = "unbindDriver")
    void bindDriver(ServiceReference<BlockDriver> ref, BlockDriver driver) {
        Bundle b = ref.getBundle();
        String bundle = b == null ? "?" : b.getSymbolicName() + " " + b.getVersion();
        registry.add(driver, bundle, () -> b == null ? "gone" : stateName(b.getState()));
    }

    void unbindDriver(BlockDriver driver) {
        registry.remove(driver);
    }

    @Reference(service = org.blockhaus.api.spi.ObjectType.class, cardinality = ReferenceCardinality.MULTIPLE,
            policy = ReferencePolicy.DYNAMIC, policyOption = ReferencePolicyOption.GREEDY,
            unbind = "unbindObjectType")
    void bindObjectType(org.blockhaus.api.spi.ObjectType type) {
        objectTypes.add(type);
    }

    void unbindObjectType(org.blockhaus.api.spi.ObjectType type) {
        objectTypes.remove(type);
    }

    @Override
    public void addObjectType(org.blockhaus.api.spi.ObjectType type) {
        objectTypes.add(type);
    }

    @Override
    public org.blockhaus.api.spi.UserObject createObject(String definition) throws BlockException {
        return objectTypes.create(Options.parseKeyValue(definition, "qom-type"));
    }

    /** For use without a framework (tests, embedding in plain Java). */
    @Override
    public void addDriver(BlockDriver driver) {
        registry.add(driver, "(not in a framework)", () -> "active");
    }

    @Override
    public void removeDriverAndClose(BlockDriver driver) {
        registry.remove(driver);
    }

    @Override
    public Image open(String filename, Options options, OpenMode mode) throws BlockException {
        OpenMode m = mode == null ? OpenMode.READ_ONLY : mode;
        return resolver.openTop(filename, options, m.writable(), m.forceShare(), m.warnings(), m.check());
    }

    @Override
    public CreateResult create(String filename, String format, Options createOptions, boolean unsafeBacking,
            Consumer<String> formatting, Consumer<String> warnings) throws BlockException {
        return creator.create(filename, format, createOptions == null ? Options.empty() : createOptions, unsafeBacking,
                formatting == null ? s -> { } : formatting, warnings == null ? s -> { } : warnings);
    }

    @Override
    public List<OptionSpec> createOptions(String format, String filename) throws BlockException {
        return creator.createOptions(format, filename);
    }

    @Override
    public List<OptionSpec> amendOptions(String format) throws BlockException {
        return creator.requireFormat(format).descriptor().amendOptions();
    }

    @Override
    public void convert(List<Image> sources, Image target, ConvertOptions options, Progress progress)
            throws BlockException {
        copier.convert(sources, target, options == null ? ConvertOptions.DEFAULT : options,
                progress == null ? Progress.NONE : progress);
    }

    @Override
    public List<DriverInfo> drivers() {
        List<DriverInfo> l = new ArrayList<>();
        for (DriverRegistry.Entry e : registry.entries()) {
            boolean canCreate = !e.descriptor().createOptions().isEmpty();
            l.add(new DriverInfo(e.descriptor().name(), e.descriptor().kind().qemuName(), e.bundle(), e.state().get(),
                    canCreate, e.descriptor().description(), e.descriptor().compressedWrites()));
        }
        return l;
    }

    @Override
    public org.blockhaus.api.spi.MeasureResult measure(String format, Options createOptions, long size, Image source)
            throws BlockException {
        DriverRegistry.Entry e = creator.requireFormat(format);
        return e.driver().measure(createOptions == null ? Options.empty() : createOptions, size, source);
    }

    @Override
    public void addSecret(String id, byte[] value) {
        secrets.put(id, value);
    }

    @Override
    public void removeSecret(String id) {
        secrets.remove(id);
    }

    @Override
    public void addObject(org.blockhaus.api.spi.UserObject object) throws BlockException {
        secrets.putObject(object);
    }

    @Override
    public org.blockhaus.api.spi.UserObject object(String id) {
        return secrets.object(id);
    }

    @Override
    public void removeObject(String id) {
        secrets.removeObject(id);
    }

    private static String stateName(int state) {
        return switch (state) {
            case Bundle.ACTIVE -> "active";
            case Bundle.STARTING -> "starting";
            case Bundle.STOPPING -> "stopping";
            case Bundle.RESOLVED -> "resolved";
            case Bundle.INSTALLED -> "installed";
            default -> "uninstalled";
        };
    }
}
