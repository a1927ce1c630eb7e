/** Test support shared by driver bundles: the block-node contract suite. Not deployed at run time. */
@Export
@Version("1.0.0")
package org.blockhaus.testkit;

import org.osgi.annotation.bundle.Export;
import org.osgi.annotation.versioning.Version;
