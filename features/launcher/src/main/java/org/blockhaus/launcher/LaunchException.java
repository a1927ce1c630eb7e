package org.blockhaus.launcher;

import java.io.Serial;

/** The launcher could not do its job; the message is shown to the user after "blk: ". */
final class LaunchException extends Exception {
    @Serial private static final long serialVersionUID = 1L;

    LaunchException(String message) {
        super(message);
    }

    LaunchException(String message, Throwable cause) {
        super(message, cause);
    }
}
