/** The shell's one exported type: the command line as a service. */
@Export
@Version("1.0.0")
package org.blockhaus.shell;

import org.osgi.annotation.bundle.Export;
import org.osgi.annotation.versioning.Version;
