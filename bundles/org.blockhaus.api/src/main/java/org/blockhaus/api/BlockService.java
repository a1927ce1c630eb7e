package org.blockhaus.api;

import java.util.List;
import java.util.function.Consumer;
import org.osgi.annotation.versioning.ProviderType;

/**
 * The entry point for users of Blockhaus (registered as an OSGi service by the core bundle):
 * opens driver chains from any filename form QEMU accepts and creates images.
 */
@ProviderType
public interface BlockService {
    /**
     * Opens a chain. {@code filename} is a path, a URI ({@code nbd://h/e}), a {@code prefix:}
     * form, {@code json:{...}}, or null when {@code options} say everything. Options use QEMU's
     * dotted keys: {@code driver} (the format, as {@code -f}), {@code file.*},
     * {@code backing.*}, {@code backing=null}, {@code read-only}, {@code force-share}.
     */
    Image open(String filename, Options options, OpenMode mode) throws BlockException;

    /**
     * Creates an image. {@code createOptions} holds {@code -o} options plus {@code size} (may be
     * absent when a backing file gives the size), {@code backing_file}, {@code backing_fmt}.
     * {@code formatting} hears qemu-img's "fmt=... size=..." summary after the options were checked
     * and before anything is written.
     */
    default CreateResult create(String filename, String format, Options createOptions, Consumer<String> formatting,
            Consumer<String> warnings) throws BlockException {
        return create(filename, format, createOptions, false, formatting, warnings);
    }

    /**
     * As {@link #create(String, String, Options, Consumer, Consumer)}; with {@code unsafeBacking}
     * ({@code qemu-img create -u}) the backing file is recorded without being opened, so it need
     * not exist, and the size and backing format must be given.
     */
    CreateResult create(String filename, String format, Options createOptions, boolean unsafeBacking,
            Consumer<String> formatting, Consumer<String> warnings) throws BlockException;

    /** Copies {@code sources} (concatenated) into {@code target}, as qemu-img convert does. */
    void convert(List<Image> sources, Image target, ConvertOptions options, Progress progress) throws BlockException;

    /** The drivers installed right now. */
    List<DriverInfo> drivers();

    /** How to open: read-only or read-write, and whether others' locks are ignored (-U). */
    /**
     * @param check opened by {@code check} (qemu's BDRV_O_CHECK): formats skip the repairs they
     *        would make on opening (qcow2's refcount rebuild of a dirty image), so that the
     *        check sees the image as it is and reports (and repairs) it itself
     */
    record OpenMode(boolean writable, boolean forceShare, Consumer<String> warnings, boolean check) {
        public static final OpenMode READ_ONLY = new OpenMode(false, false, w -> { });
        public static final OpenMode READ_WRITE = new OpenMode(true, false, w -> { });

        public OpenMode(boolean writable, boolean forceShare, Consumer<String> warnings) {
            this(writable, forceShare, warnings, false);
        }
    }

    /** @param summary qemu-img's "fmt=... size=..." text after the filename */
    record CreateResult(String filename, String format, String summary) {
    }

    /** Progress reports, 0 to 100. */
    @FunctionalInterface
    interface Progress {
        Progress NONE = p -> { };

        void update(double percent);
    }
}
