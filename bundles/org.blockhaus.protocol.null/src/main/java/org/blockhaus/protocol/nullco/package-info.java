/** QEMU's null-co and null-aio protocols: private implementation, only services leave the bundle. */
package org.blockhaus.protocol.nullco;
