package org.blockhaus.itests;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import javax.inject.Inject;
import org.blockhaus.api.BlockService;
import org.blockhaus.api.BlockService.OpenMode;
import org.blockhaus.api.DriverInfo;
import org.blockhaus.api.Image;
import org.junit.Test;
import org.junit.runner.RunWith;
import org.ops4j.pax.exam.Configuration;
import org.ops4j.pax.exam.Option;
import org.ops4j.pax.exam.junit.PaxExam;
import org.ops4j.pax.exam.spi.reactors.ExamReactorStrategy;
import org.ops4j.pax.exam.spi.reactors.PerClass;
import org.osgi.framework.Bundle;
import org.osgi.framework.BundleContext;

/**
 * The deploy directory ./blk watches (Felix FileInstall): a driver jar dropped in is installed
 * and started; deleted, it is uninstalled and the images opened through it are closed.
 */
@RunWith(PaxExam.class)
@ExamReactorStrategy(PerClass.class)
public class DeployDirectoryIT {
    static final Duration FILEINSTALL_MAX = Duration.ofSeconds(20);

    @Inject
    BundleContext context;

    @Inject
    BlockService blocks;

    @Configuration
    public Option[] config() {
        return Feature.minimal(Feature.newDeployDir());
    }

    @Test
    public void jarDroppedIntoTheDeployDirectoryBecomesADriverAndLeavesWhenDeleted() throws Exception {
        Path deploy = Path.of(context.getProperty("felix.fileinstall.dir"));
        assertTrue("FileInstall watches " + deploy, Files.isDirectory(deploy));
        assertFalse(hasDriver("null-co"));

        Path jar = deploy.resolve("org.blockhaus.protocol.null.jar");
        Path partial = deploy.resolve("org.blockhaus.protocol.null.jar.part");
        Files.copy(Feature.nullDriverJar(), partial);
        Files.move(partial, jar); // appear whole, as a careful operator's cp + mv does
        Feature.await("null-co is registered", FILEINSTALL_MAX, () -> hasDriver("null-co"));
        assertEquals(Bundle.ACTIVE, nullBundle().getState());

        Image image = blocks.open("json:{\"driver\": \"null-co\", \"read-zeroes\": \"on\"}", null, OpenMode.READ_ONLY);
        image.read(0, ByteBuffer.allocate(4096));
        List<String> reasons = new CopyOnWriteArrayList<>();
        image.onClose(reasons::add);

        Files.delete(jar);
        Feature.await("null-co is gone", FILEINSTALL_MAX, () -> !hasDriver("null-co"));
        Feature.await("its bundle is uninstalled", FILEINSTALL_MAX, () -> nullBundle() == null);
        assertTrue("the image opened through it was closed", image.isClosed());
        assertEquals(List.of("driver 'null-co' was removed"), reasons);
    }

    private Bundle nullBundle() {
        for (Bundle b : context.getBundles()) {
            if ("org.blockhaus.protocol.null".equals(b.getSymbolicName())) {
                return b;
            }
        }
        return null;
    }

    private boolean hasDriver(String name) {
        return blocks.drivers().stream().map(DriverInfo::name).anyMatch(name::equals);
    }
}
