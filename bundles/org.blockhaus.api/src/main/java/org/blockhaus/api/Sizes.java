package org.blockhaus.api;

import java.math.BigDecimal;
import java.math.MathContext;
import java.math.RoundingMode;

/** Sizes as QEMU writes and reads them. */
public final class Sizes {
    private static final String SUFFIXES = "BKMGTPE";
    private static final java.util.regex.Pattern HEX = java.util.regex.Pattern.compile(
            "0[xX]([0-9a-fA-F]+)([kKmMgGtTpP]?)");

    private Sizes() {
    }

    /**
     * Parses a size: a non-negative decimal number (a fraction allowed) with an optional suffix
     * b, k, M, G, T, P or E (either case; powers of 1024), or a hexadecimal one ({@code 0x...}).
     * No suffix means bytes.
     */
    public static long parse(String text) throws BlockException {
        // leading blanks are skipped (strtod does), trailing ones are not: QEMU refuses them
        String t = text == null ? "" : text.replaceFirst("^[ \\t\\n\\x0B\\f\\r]+", "");
        if (t.isEmpty()) {
            throw BlockException.invalid("empty size");
        }
        java.util.regex.Matcher hex = HEX.matcher(t);
        if (hex.matches()) {
            // QEMU takes hexadecimal too: the digits run as far as they go (so "0x1b" is 27), no
            // fraction; a suffix after them is deprecated there but still works
            int hexShift = hex.group(2).isEmpty() ? 0 : SUFFIXES.indexOf(hex.group(2).toUpperCase()) * 10;
            java.math.BigInteger v = new java.math.BigInteger(hex.group(1), 16).shiftLeft(hexShift);
            if (v.bitLength() > 63) {
                throw new BlockException(BlockException.Reason.OUT_OF_RANGE, "size too large: '" + text + "'");
            }
            return v.longValueExact();
        }
        int shift = 0;
        char last = Character.toUpperCase(t.charAt(t.length() - 1));
        if (Character.isLetter(last)) {
            int idx = SUFFIXES.indexOf(last);
            if (idx < 0) {
                throw BlockException.invalid("invalid size suffix in '" + text + "'");
            }
            shift = idx * 10;
            t = t.substring(0, t.length() - 1);
        }
        if (t.length() <= 18 && isDigits(t)) {
            // whole numbers (nearly every size) without BigDecimal: its class initialisation alone
            // costs about 6 ms, a few percent of a short command's start-up
            long n = Long.parseLong(t);
            if (n > (Long.MAX_VALUE >> shift)) {
                throw new BlockException(BlockException.Reason.OUT_OF_RANGE, "size too large: '" + text + "'");
            }
            return n << shift;
        }
        if (!t.matches("[0-9]+(\\.[0-9]*)?")) {
            throw BlockException.invalid("invalid size '" + text + "'");
        }
        BigDecimal v = new BigDecimal(t).multiply(BigDecimal.ONE.movePointRight(0).multiply(
                new BigDecimal(java.math.BigInteger.ONE.shiftLeft(shift))));
        if (t.contains(".") && shift == 0 && v.stripTrailingZeros().scale() > 0) {
            throw BlockException.invalid("fractional byte count in '" + text + "'");
        }
        BigDecimal whole = v.setScale(0, RoundingMode.DOWN);
        if (whole.compareTo(BigDecimal.valueOf(Long.MAX_VALUE)) > 0) {
            throw new BlockException(BlockException.Reason.OUT_OF_RANGE, "size too large: '" + text + "'");
        }
        return whole.longValueExact();
    }

    /**
     * QEMU's human size: three significant digits and a binary unit, switching to the next unit
     * from 1000 of the current one ("10 MiB", "68 KiB", "0.977 KiB", "1.5 GiB").
     */
    public static String human(long bytes) {
        if (bytes <= 0) {
            return bytes + " B";
        }
        String[] units = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
        double scaled = bytes * 1.024;
        int log2 = 63 - Long.numberOfLeadingZeros((long) Math.floor(scaled));
        int unit = Math.min(log2 / 10, units.length - 1);
        return threeSignificant(bytes, unit * 10) + " " + units[unit];
    }

    private static boolean isDigits(String t) {
        for (int i = 0; i < t.length(); i++) {
            if (t.charAt(i) < '0' || t.charAt(i) > '9') {
                return false;
            }
        }
        return !t.isEmpty();
    }

    /**
     * {@code bytes / 2^shift} as printf's %.3g prints it (the exact binary value rounded half to
     * even), in long arithmetic: the unit is chosen so that the value lies in [0.9765, 1000), so
     * it needs at most three decimals, and {@code bytes * 10^decimals} fits a long below 2^53
     * bytes; beyond that BigDecimal does it.
     */
    static String threeSignificant(long bytes, int shift) {
        if (shift == 0) {
            return Long.toString(bytes); // whole bytes below 1000
        }
        long whole = bytes >>> shift;
        int decimals = whole >= 100 ? 0 : whole >= 10 ? 1 : whole >= 1 ? 2 : 3;
        if (bytes >= 1L << 53) {
            BigDecimal value = new BigDecimal(bytes).divide(new BigDecimal(java.math.BigInteger.ONE.shiftLeft(shift)));
            return threeSignificant(value);
        }
        long n = bytes * POW10[decimals];
        long q = n >>> shift;
        long rem = n & ((1L << shift) - 1);
        long half = 1L << (shift - 1);
        if (rem > half || (rem == half && (q & 1) == 1)) {
            q++;
        }
        if (q == 1000 && decimals == 0) {
            return "1e+03";
        }
        // q has three digits (or is 1000 after rounding up, a power of ten): place the point
        String digits = Long.toString(q);
        while (digits.length() <= decimals) {
            digits = "0" + digits;
        }
        String out = decimals == 0 ? digits
                : digits.substring(0, digits.length() - decimals) + "." + digits.substring(digits.length() - decimals);
        if (out.indexOf('.') >= 0) {
            int end = out.length();
            while (out.charAt(end - 1) == '0') {
                end--;
            }
            if (out.charAt(end - 1) == '.') {
                end--;
            }
            out = out.substring(0, end);
        }
        return out;
    }

    private static final long[] POW10 = {1, 10, 100, 1000};

    /** printf's %.3g for positive values below 1000 after rounding (switches to e-notation at 1000). */
    private static String threeSignificant(BigDecimal v) {
        BigDecimal r = v.round(new MathContext(3, RoundingMode.HALF_EVEN));
        if (r.compareTo(new BigDecimal(1000)) >= 0) {
            return "1e+03";
        }
        r = r.stripTrailingZeros();
        return r.scale() < 0 ? r.setScale(0).toPlainString() : r.toPlainString();
    }
}
