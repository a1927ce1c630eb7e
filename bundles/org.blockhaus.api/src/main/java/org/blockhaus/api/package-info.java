/**
 * The consumer API of Blockhaus: open a chain of block drivers from a filename, a URI,
 * {@code json:{...}} or dotted options; read, write, flush; ask what an image is.
 *
 * <p>Entry point: the {@link org.blockhaus.api.BlockService} OSGi service (provided by
 * {@code org.blockhaus.core}). Everything a driver implements lives in {@link org.blockhaus.api.spi}.
 */
@org.osgi.annotation.bundle.Export
@org.osgi.annotation.versioning.Version("1.1.0")
package org.blockhaus.api;
