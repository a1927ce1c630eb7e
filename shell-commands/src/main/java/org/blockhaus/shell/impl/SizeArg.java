package org.blockhaus.shell.impl;

import java.math.BigDecimal;
import java.math.BigInteger;
import java.util.function.Consumer;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.blockhaus.api.BlockException;

/**
 * A size option as qemu's option parser reads it (an unsigned 64-bit byte count): leading blanks,
 * decimal digits, or hexadecimal after {@code 0x}; an optional fraction (decimal only, never with
 * an exponent, and only with a suffix that scales it); an optional suffix b, k, M, G, T, P or E
 * in either case (powers of 1024); nothing after it. The scaled result is rounded to the nearest
 * byte and must stay below 2^64. The errors are qemu's, which name the parameter.
 */
final class SizeArg {
    private static final String SUFFIXES = "BKMGTPE";
    private static final BigInteger LIMIT = BigInteger.ONE.shiftLeft(64);
    private static final Pattern HEX = Pattern.compile("0[xX]([0-9a-fA-F]+)");
    private static final Pattern DECIMAL = Pattern.compile("[0-9]+");
    private static final Pattern FRACTION = Pattern.compile("\\.([0-9]*)([eE][+-]?[0-9]+)?");

    private SizeArg() {
    }

    /**
     * @param warn receives qemu's deprecation warning for a suffix on a hexadecimal number
     * @return the value as an unsigned 64-bit number
     */
    static long parse(String text, String param, Consumer<String> warn) throws BlockException {
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
        Matcher m = HEX.matcher(text).region(p, text.length());
        if (m.lookingAt()) {
            hex = true;
            whole = new BigInteger(m.group(1), 16);
        } else {
            m = DECIMAL.matcher(text).region(p, text.length());
            if (!m.lookingAt()) {
                throw invalid(param);
            }
            whole = new BigInteger(m.group());
        }
        if (whole.compareTo(LIMIT) >= 0) {
            throw outOfRange(text, param); // the digits alone overflow, before anything else is looked at
        }
        if (negative) {
            throw invalid(param);
        }
        p = m.end();
        if (!hex && p < text.length() && text.charAt(p) == '.') {
            Matcher f = FRACTION.matcher(text).region(p, text.length());
            f.lookingAt(); // always matches the dot
            if (f.group(2) != null && !f.group(1).isEmpty()) {
                throw invalid(param); // an exponent makes the whole number invalid
            }
            if (f.group(1).isEmpty()) {
                p++; // "1.k": a dot without digits is allowed before a suffix
            } else {
                fraction = new BigDecimal("0." + f.group(1));
                p += 1 + f.group(1).length();
            }
        } else if (hex && p < text.length() && text.charAt(p) == '.') {
            throw invalid(param);
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
            throw invalid(param);
        }
        // qemu keeps the fraction as a 64-bit binary fraction (a double's value, truncated)
        BigInteger fixed = new BigDecimal(fraction.doubleValue()).multiply(new BigDecimal(LIMIT)).toBigInteger();
        if (shift == 0) {
            if (fixed.signum() != 0) {
                throw invalid(param); // a fraction of a byte
            }
            return whole.longValue();
        }
        BigInteger scaledFraction = fixed.shiftLeft(shift);
        BigInteger value = whole.shiftLeft(shift).add(scaledFraction.shiftRight(64))
                .add(scaledFraction.testBit(63) ? BigInteger.ONE : BigInteger.ZERO); // half a byte rounds up
        if (value.compareTo(LIMIT) >= 0) {
            throw outOfRange(text, param);
        }
        return value.longValue();
    }

    private static BlockException outOfRange(String text, String param) {
        return BlockException.invalid("Value '" + text + "' is out of range for parameter '" + param + "'");
    }

    private static BlockException invalid(String param) {
        return BlockException.invalid("Parameter '" + param + "' expects a non-negative number below 2^64\n"
                + "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
                + "and exabytes, respectively.");
    }
}
