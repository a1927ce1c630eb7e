package org.blockhaus.shell.impl;

import java.util.List;
import java.util.Map;
import org.blockhaus.api.DriverInfo;

/**
 * What the commands return: plain data. {@link Render} is the one place that turns these into
 * qemu-img's human text or JSON; Gogo shows them through the same renderer.
 */
final class Results {
    private Results() {
    }

    /** Output selected with --output. */
    enum Output { HUMAN, JSON }

    /** Something a command returns, with the exit code qemu-img would give. */
    interface Result {
        default int exitCode() {
            return 0;
        }

        /** An error qemu-img reports after the output it printed (then the exit code is 1), or null. */
        default String error() {
            return null;
        }
    }

    /** qemu-img info; {@code images} has one map per image (several with --backing-chain). */
    record Info(List<Map<String, Object>> images, boolean chain, Output output) implements Result {
    }

    /** One line of qemu-img map. */
    record MapEntry(long start, long length, int depth, boolean present, boolean zero, boolean data, long offset,
            String file) {
    }

    /** @param error why the human table stops early (data without a host offset), or null */
    record MapResult(List<MapEntry> entries, Output output, String error) implements Result {
        @Override
        public int exitCode() {
            return error == null ? 0 : 1;
        }
    }

    /** qemu-img compare: the lines it prints and its exit code. */
    record Compare(List<String> lines, int exitCode, boolean progress) implements Result {
    }

    /** qemu-img create: the "Formatting ..." line, unless -q. */
    record Created(String filename, String summary, boolean quiet) implements Result {
    }

    record Converted(long bytes) implements Result {
    }

    record Drivers(List<DriverInfo> drivers) implements Result {
    }

    /** Plain text that a command prints as it is ({@code -o help}). */
    record Text(String text) implements Result {
    }

    /** qemu-img check: the driver's counts, or "not supported" (exit 63). */
    record Check(String filename, String format, org.blockhaus.api.spi.CheckResult result, Output output)
            implements Result {
        @Override
        public int exitCode() {
            if (result.checkErrors() > 0) {
                return 1;
            }
            if (result.corruptions() > 0) {
                return 2;
            }
            return result.leaks() > 0 ? 3 : 0;
        }
    }

    /** A command that prints nothing (-q) but still ends with an exit code. */
    record Quiet(int exitCode) implements Result {
    }

    /** qemu-img measure. */
    record Measure(org.blockhaus.api.spi.MeasureResult result, Output output) implements Result {
    }

    /** qemu-img snapshot -l. */
    record Snapshots(String filename, List<org.blockhaus.api.spi.SnapshotNode.Snapshot> list) implements Result {
    }

    /** qemu-img bench's report. */
    record Bench(String header, double seconds) implements Result {
    }
}
