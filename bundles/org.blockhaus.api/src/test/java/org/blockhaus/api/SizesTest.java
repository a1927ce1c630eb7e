package org.blockhaus.api;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.math.BigDecimal;
import java.math.MathContext;
import java.math.RoundingMode;
import java.util.Random;
import org.junit.jupiter.api.Test;

/**
 * Sizes' long-arithmetic paths against exact BigDecimal references: human sizes (printf's %.3g
 * of the exact binary value, ties to even) and whole-number parsing, including ties, unit edges,
 * powers of two and the overflow limit.
 */
class SizesTest {
    private static final String[] UNITS = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};

    /** The exact reference: BigDecimal division and rounding, as human() was written before. */
    private static String reference(long bytes) {
        if (bytes <= 0) {
            return bytes + " B";
        }
        double scaled = bytes * 1.024;
        int log2 = 63 - Long.numberOfLeadingZeros((long) Math.floor(scaled));
        int unit = Math.min(log2 / 10, UNITS.length - 1);
        BigDecimal v = new BigDecimal(bytes).divide(new BigDecimal(java.math.BigInteger.ONE.shiftLeft(unit * 10)));
        BigDecimal r = v.round(new MathContext(3, RoundingMode.HALF_EVEN));
        String s;
        if (r.compareTo(new BigDecimal(1000)) >= 0) {
            s = "1e+03";
        } else {
            r = r.stripTrailingZeros();
            s = r.scale() < 0 ? r.setScale(0).toPlainString() : r.toPlainString();
        }
        return s + " " + UNITS[unit];
    }

    @Test
    void humanSizesEqualTheExactReference() {
        Random rnd = new Random(11);
        for (int i = 0; i < 200_000; i++) {
            long b = switch (i % 4) {
                case 0 -> rnd.nextLong() >>> rnd.nextInt(64);
                case 1 -> (1L << rnd.nextInt(63)) + rnd.nextInt(3) - 1;
                // ties: a value with exactly one more binary digit than three decimals can hold
                case 2 -> ((long) (1 + rnd.nextInt(999)) << (10 * (1 + rnd.nextInt(5)))) / 1000 * 1000 + rnd.nextInt(5);
                default -> (long) (1 + rnd.nextInt(1_000_000)) << rnd.nextInt(40);
            };
            if (b <= 0) {
                continue;
            }
            assertEquals(reference(b), Sizes.human(b), "bytes " + b);
        }
        for (long b : new long[] {1, 999, 1000, 1023, 1024, 1025, 1_047_552, 1_048_064, (1L << 53) - 1, 1L << 53,
            Long.MAX_VALUE, 1152, 1160, 1164, 1165, 1166}) {
            assertEquals(reference(b), Sizes.human(b), "bytes " + b);
        }
        assertEquals("0.977 KiB", Sizes.human(1000));
        assertEquals("1.5 GiB", Sizes.human(1536L << 20));
    }

    @Test
    void wholeNumbersParseAsBefore() throws Exception {
        assertEquals(2147483648L, Sizes.parse("2147483648"));
        assertEquals(64L << 10, Sizes.parse("64k"));
        assertEquals(3L << 30, Sizes.parse(" 3G"));
        assertEquals(1L << 60, Sizes.parse("1E"));
        assertEquals(7L << 50, Sizes.parse("7P"));
        assertEquals(999_999_999_999_999_999L, Sizes.parse("999999999999999999"));
        assertEquals(1536L << 20, Sizes.parse("1.5G")); // the BigDecimal path still serves fractions
        assertThrows(BlockException.class, () -> Sizes.parse("8E"));
        assertThrows(BlockException.class, () -> Sizes.parse("8796093022208T"));
        assertThrows(BlockException.class, () -> Sizes.parse("9999999999999999999"));
        assertThrows(BlockException.class, () -> Sizes.parse("12q"));
        assertThrows(BlockException.class, () -> Sizes.parse("1 "));
    }

    @Test
    void theFullGrammarAsQemuStrtosz() throws Exception {
        java.util.List<String> warnings = new java.util.ArrayList<>();
        assertEquals(1024, Sizes.parse("+1k"));
        assertEquals(12, Sizes.parse("00012"));
        assertEquals(1024, Sizes.parse("1.k"));
        assertEquals(1331, Sizes.parse("1.3k")); // 1331.2: rounded to the nearest byte
        assertEquals(102, Sizes.parse("0.1k")); // 102.4, as qemu-img create makes it
        assertEquals(16384, Sizes.parse("0x10k", warnings::add));
        assertEquals(java.util.List.of("Using a multiplier suffix on hex numbers is deprecated: 0x10k"), warnings);
        assertEquals(31, Sizes.parse("0X1f"));
        assertEquals(-1L, Sizes.parseUnsigned("18446744073709551615", w -> { })); // 2^64 - 1, unsigned
        assertEquals(Long.MIN_VALUE, Sizes.parseUnsigned("8E", w -> { }));
        for (String bad : new String[] {"1.5", "1e3", "1.5e3k", "-0", "-1k", "0x", "0x1.5k", "1kk", "k", "", "1 "}) {
            BlockException e = assertThrows(BlockException.class, () -> Sizes.parse(bad), bad);
            assertEquals(BlockException.Reason.INVALID_ARGUMENT, e.reason(), bad);
        }
        for (String big : new String[] {"8E", "16E", "18446744073709551616", "0x10000000000000000"}) {
            BlockException e = assertThrows(BlockException.class, () -> Sizes.parse(big), big);
            assertEquals(BlockException.Reason.OUT_OF_RANGE, e.reason(), big);
        }
        BlockException e = assertThrows(BlockException.class, () -> Sizes.parseOption("size", "16E", w -> { }));
        assertEquals("Value '16E' is out of range for parameter 'size'", e.getMessage());
    }
}
