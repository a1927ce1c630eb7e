package org.blockhaus.api;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

class OptionsTest {
    @Test
    void keyValueListsUnescapeDoubledCommasAndLaterKeysWin() throws Exception {
        Options o = Options.parseKeyValue("file.filename=a,,b.img,size=1M,size=2M", null);
        assertEquals("a,b.img", o.get("file.filename"));
        assertEquals("2M", o.get("size"));
    }

    @Test
    void aBareFirstItemTakesTheImpliedKey() throws Exception {
        assertEquals("disk.img", Options.parseKeyValue("disk.img,driver=raw", "file").get("file"));
    }

    @Test
    void jsonFlattensToDottedKeysAndKeepsNull() throws Exception {
        Options o = Options.parseJson("{\"driver\": \"qcow2\", \"file\": {\"driver\": \"file\", \"filename\": \"x\"},"
                + " \"backing\": null, \"n\": 5, \"b\": true, \"l\": [\"a\", {\"k\": 1}]}");
        assertEquals("qcow2", o.get("driver"));
        assertEquals("x", o.get("file.filename"));
        assertTrue(o.isNull("backing"));
        assertEquals("5", o.get("n"));
        assertEquals("on", o.get("b"));
        assertEquals("a", o.get("l.0"));
        assertEquals("1", o.get("l.1.k"));
        assertEquals("x", o.subtree("file").get("filename"));
        assertNull(o.withoutTree("file").get("file.driver"));
    }

    @Test
    void malformedJsonIsAnErrorInQemusWords() {
        BlockException e = assertThrows(BlockException.class, () -> Options.parseJson("{bad"));
        assertEquals("Could not parse the JSON options: JSON parse error, invalid keyword 'bad'", e.getMessage());
    }

    @Test
    void deeplyNestedJsonIsRefusedNotAStackOverflow() {
        String deep = "{\"a\":".repeat(10_000) + "1" + "}".repeat(10_000);
        assertThrows(BlockException.class, () -> Options.parseJson(deep));
    }

    @Test
    void sizesTakeQemusSuffixesAndRefuseOverflow() throws Exception {
        assertEquals(10L << 20, Sizes.parse("10M"));
        assertEquals(1536, Sizes.parse("1.5k"));
        assertEquals(512, Sizes.parse("512"));
        assertEquals(1L << 60, Sizes.parse("1E"));
        assertThrows(BlockException.class, () -> Sizes.parse("10X"));
        assertThrows(BlockException.class, () -> Sizes.parse("16E"));
        assertThrows(BlockException.class, () -> Sizes.parse("-1"));
        assertThrows(BlockException.class, () -> Sizes.parse(""));
    }

    @Test
    void humanSizesLookLikeQemus() {
        assertEquals("10 MiB", Sizes.human(10L << 20));
        assertEquals("4 KiB", Sizes.human(4096));
        assertEquals("512 B", Sizes.human(512));
        assertEquals("1.5 GiB", Sizes.human(3L << 29));
        assertEquals("196 KiB", Sizes.human(196 * 1024));
    }
}
