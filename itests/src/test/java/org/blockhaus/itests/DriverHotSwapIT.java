package org.blockhaus.itests;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.nio.ByteBuffer;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import javax.inject.Inject;
import org.blockhaus.api.BlockException;
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

/** A driver bundle installed while the framework runs serves images at once; removed, it closes them. */
@RunWith(PaxExam.class)
@ExamReactorStrategy(PerClass.class)
public class DriverHotSwapIT {
    static final String NULL_CO = "json:{\"driver\": \"null-co\", \"size\": \"1M\", \"read-zeroes\": \"on\"}";

    @Inject
    BundleContext context;

    @Inject
    BlockService blocks;

    @Configuration
    public Option[] config() {
        return Feature.minimal(Feature.newDeployDir());
    }

    @Test
    public void driverInstalledFromAFileServesImagesAndItsRemovalClosesThemCleanly() throws Exception {
        assertFalse("null-co is not part of minimal", hasDriver("null-co"));

        Bundle driver = context.installBundle(Feature.nullDriverJar().toUri().toString());
        driver.start();
        assertTrue("null-co is usable as soon as its bundle started", hasDriver("null-co"));

        Image image = blocks.open(NULL_CO, null, OpenMode.READ_ONLY);
        assertEquals(1 << 20, image.size());
        assertEquals("null-co", image.driverName());
        assertZeroes(image);
        List<String> reasons = new CopyOnWriteArrayList<>();
        image.onClose(reasons::add);

        driver.stop();
        assertTrue("stopping the driver closes its images", image.isClosed());
        assertEquals(List.of("driver 'null-co' was removed"), reasons);
        BlockException e = assertThrows(BlockException.class, () -> image.read(0, ByteBuffer.allocate(512)));
        assertEquals(BlockException.Reason.CLOSED, e.reason());
        assertFalse("a stopped driver is gone from the list", hasDriver("null-co"));
        assertFalse(hasDriver("null-aio"));

        driver.uninstall();
        assertEquals(Bundle.UNINSTALLED, driver.getState());
        assertFalse(hasDriver("null-co"));
        BlockException unknown = assertThrows(BlockException.class, () -> blocks.open(NULL_CO, null, OpenMode.READ_ONLY));
        assertEquals(BlockException.Reason.NOT_FOUND, unknown.reason());
        assertEquals("the listener heard the close once", 1, reasons.size());
    }

    @Test
    public void removingAProtocolClosesTheFormatOpenedOnTopOfIt() throws Exception {
        Bundle driver = context.installBundle(Feature.nullDriverJar().toUri().toString());
        driver.start();
        try {
            Image raw = blocks.open("json:{\"driver\": \"raw\", \"file\": {\"driver\": \"null-co\", \"read-zeroes\": \"on\"}}",
                    null, OpenMode.READ_ONLY);
            assertEquals("raw", raw.driverName());
            assertEquals("null-co", raw.file().driverName());
            List<String> reasons = new CopyOnWriteArrayList<>();
            raw.onClose(reasons::add);

            driver.stop();
            assertTrue("the raw image above null-co is closed", raw.isClosed());
            assertTrue(raw.file().isClosed());
            assertEquals(List.of("driver 'null-co' was removed"), reasons);
            assertEquals(BlockException.Reason.CLOSED,
                    assertThrows(BlockException.class, () -> raw.read(0, ByteBuffer.allocate(512))).reason());
        } finally {
            driver.uninstall();
        }
    }

    @Test
    public void reinstalledDriverWorksAgain() throws Exception {
        for (int round = 0; round < 3; round++) {
            Bundle driver = context.installBundle(Feature.nullDriverJar().toUri().toString());
            driver.start();
            try (Image image = blocks.open(NULL_CO, null, OpenMode.READ_WRITE)) {
                image.write(4096, ByteBuffer.wrap(new byte[] {1, 2, 3}), 0);
                assertZeroes(image);
            }
            driver.uninstall();
            assertFalse("round " + round, hasDriver("null-co"));
        }
    }

    @Test
    public void minimalFeatureBundlesAreAllActive() {
        for (Bundle b : context.getBundles()) {
            if (b.getHeaders().get("Fragment-Host") == null) {
                assertEquals(b.getSymbolicName() + " is active", Bundle.ACTIVE, b.getState());
            }
        }
        for (String bsn : List.of("org.blockhaus.api", "org.blockhaus.core", "org.apache.felix.scr",
                "org.apache.felix.gogo.runtime", "org.apache.felix.fileinstall")) {
            assertTrue(bsn + " is installed", Arrays.stream(context.getBundles()).anyMatch(b -> bsn.equals(b.getSymbolicName())));
        }
    }

    private boolean hasDriver(String name) {
        return blocks.drivers().stream().map(DriverInfo::name).anyMatch(name::equals);
    }

    private static void assertZeroes(Image image) throws BlockException {
        byte[] junk = new byte[8192];
        Arrays.fill(junk, (byte) 0x55);
        ByteBuffer buf = ByteBuffer.wrap(junk);
        image.read(512, buf);
        assertFalse(buf.hasRemaining());
        assertArrayEquals(new byte[8192], junk);
    }
}
