package org.blockhaus.api;

import java.math.BigDecimal;
import java.math.BigInteger;
import java.math.MathContext;
import java.math.RoundingMode;
import java.util.function.Consumer;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/** Sizes as QEMU writes and reads them. */
public final class Sizes {
    private static final String SUFFIXES = "BKMGTPE";

    /** What only the full grammar needs, initialised on its first use (see {@link #plainSize}). */
    private static final class Grammar {
        static final BigInteger LIMIT = BigInteger.ONE.shiftLeft(64);
        static final Pattern HEX = Pattern.compile("0[xX]([0-9a-fA-F]+)");
        static final Pattern DECIMAL = Pattern.compile("[0-9]+");
        static final Pattern FRACTION = Pattern.compile("\\.([0-9]*)([eE][+-]?[0-9]+)?");
    }

    private Sizes() {
    }

    /**
     * Parses a size as QEMU's {@code qemu_strtosz} does, for every size a user types (image sizes,
     * size options, {@code -S}, {@code bench}'s sizes, resize): leading blanks; an optional
     * {@code +}; decimal digits, or hexadecimal after {@code 0x}; an optional fraction (decimal
     * only, never with an exponent, and only with a suffix that scales it: {@code 1.5k}, not
     * {@code 1.5}); an optional suffix b, k, M, G, T, P or E in either case (powers of 1024);
     * nothing after it, trailing blanks included. The result must be below 2^63 here; see
     * {@link #parseUnsigned} for the full 64-bit range. A suffix on a hexadecimal number works but
     * is deprecated in QEMU; this overload does not say so (see {@link #parse(String, Consumer)}).
     *
     * @throws BlockException INVALID for text that is not a size, OUT_OF_RANGE for one too large
     */
    public static long parse(String text) throws BlockException {
        return parse(text, w -> { });
    }

    /** As {@link #parse(String)}; {@code warn} receives QEMU's warning for a suffixed hexadecimal number. */
    public static long parse(String text, Consumer<String> warn) throws BlockException {
        long v = parseUnsigned(text, warn);
        if (v < 0) {
            throw new BlockException(BlockException.Reason.OUT_OF_RANGE, "size too large: '" + text + "'");
        }
        return v;
    }

    /**
     * A size option as QEMU's option parser reads it, with its messages, which name the option:
     * the grammar of {@link #parse(String)} over the whole unsigned 64-bit range (the result may
     * be negative as a {@code long}).
     */
    public static long parseOption(String param, String text, Consumer<String> warn) throws BlockException {
        try {
            return parseUnsigned(text, warn);
        } catch (BlockException e) {
            if (e.reason() == BlockException.Reason.OUT_OF_RANGE) {
                throw BlockException.invalid("Value '" + text + "' is out of range for parameter '" + param + "'");
            }
            throw BlockException.invalid("Parameter '" + param + "' expects a non-negative number below 2^64\n"
                    + "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
                    + "and exabytes, respectively.");
        }
    }

    /**
     * The grammar of {@link #parse(String)} over the unsigned 64-bit range: values from 2^63 on come
     * back negative. A fraction is kept as QEMU keeps it, a double's value as a 64-bit binary
     * fraction, scaled by the suffix and rounded to the nearest byte.
     */
    public static long parseUnsigned(String text, Consumer<String> warn) throws BlockException {
        if (text == null) {
            throw BlockException.invalid("empty size");
        }
        long fast = plainSize(text);
        if (fast >= 0) {
            return fast;
        }
        return fullGrammar(text, warn);
    }

    private static long fullGrammar(String text, Consumer<String> warn) throws BlockException {
        int p = 0;
        while (p < text.length() && " \t\n\u000b\f\r".indexOf(text.charAt(p)) >= 0) {
            p++;
        }
        boolean negative = false;
        if (p < text.length() && (text.charAt(p) == '+' || text.charAt(p) == '-')) {
            negative = text.charAt(p) == '-';
            p++;
        }
        BigInteger whole;
        BigDecimal fraction = BigDecimal.ZERO;
        boolean hex = false;
        Matcher m = Grammar.HEX.matcher(text).region(p, text.length());
        if (m.lookingAt()) {
            hex = true;
            whole = new BigInteger(m.group(1), 16);
        } else {
            m = Grammar.DECIMAL.matcher(text).region(p, text.length());
            if (!m.lookingAt()) {
                throw invalid(text);
            }
            whole = new BigInteger(m.group());
        }
        if (whole.compareTo(Grammar.LIMIT) >= 0) {
            throw outOfRange(text); // the digits alone overflow, before anything else is looked at
        }
        if (negative) {
            throw invalid(text);
        }
        p = m.end();
        if (!hex && p < text.length() && text.charAt(p) == '.') {
            Matcher f = Grammar.FRACTION.matcher(text).region(p, text.length());
            f.lookingAt(); // always matches the dot
            if (f.group(2) != null && !f.group(1).isEmpty()) {
                throw invalid(text); // an exponent makes the whole number invalid
            }
            if (f.group(1).isEmpty()) {
                p++; // "1.k": a dot without digits is allowed before a suffix
            } else {
                fraction = new BigDecimal("0." + f.group(1));
                p += 1 + f.group(1).length();
            }
        } else if (hex && p < text.length() && text.charAt(p) == '.') {
            throw invalid(text);
        }
        int shift = 0;
        if (p < text.length() && SUFFIXES.indexOf(Character.toUpperCase(text.charAt(p))) >= 0) {
            shift = SUFFIXES.indexOf(Character.toUpperCase(text.charAt(p))) * 10;
            if (hex) {
                warn.accept("Using a multiplier suffix on hex numbers is deprecated: " + text);
            }
            p++;
        }
        if (p != text.length()) {
            throw invalid(text);
        }
        BigInteger fixed = new BigDecimal(fraction.doubleValue()).multiply(new BigDecimal(Grammar.LIMIT)).toBigInteger();
        if (shift == 0) {
            if (fixed.signum() != 0) {
                throw invalid(text); // a fraction of a byte
            }
            return whole.longValue();
        }
        BigInteger scaledFraction = fixed.shiftLeft(shift);
        BigInteger value = whole.shiftLeft(shift).add(scaledFraction.shiftRight(64))
                .add(scaledFraction.testBit(63) ? BigInteger.ONE : BigInteger.ZERO); // half a byte rounds up
        if (value.compareTo(Grammar.LIMIT) >= 0) {
            throw outOfRange(text);
        }
        return value.longValue();
    }

    /**
     * Decimal digits with at most one suffix and nothing else, the form of nearly every size, in
     * long arithmetic; -1 for anything else. BigDecimal's and BigInteger's class initialisation
     * alone cost milliseconds of a short command's start-up.
     */
    private static long plainSize(String t) {
        int n = t.length();
        int shift = 0;
        if (n > 1) {
            int idx = SUFFIXES.indexOf(Character.toUpperCase(t.charAt(n - 1)));
            if (idx >= 0) {
                shift = idx * 10;
                n--;
            }
        }
        if (n == 0 || n > 18) {
            return -1;
        }
        long v = 0;
        for (int i = 0; i < n; i++) {
            char c = t.charAt(i);
            if (c < '0' || c > '9') {
                return -1;
            }
            v = v * 10 + (c - '0');
        }
        return v > (Long.MAX_VALUE >> shift) ? -1 : v << shift;
    }

    private static BlockException outOfRange(String text) {
        return new BlockException(BlockException.Reason.OUT_OF_RANGE, "size too large: '" + text + "'");
    }

    private static BlockException invalid(String text) {
        return BlockException.invalid("invalid size '" + text + "'");
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
