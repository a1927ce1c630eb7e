/** The core's service interface, for the shell and for embedding Blockhaus in plain Java. */
@Export
@Version("1.1.0")
package org.blockhaus.core;

import org.osgi.annotation.bundle.Export;
import org.osgi.annotation.versioning.Version;
