package org.blockhaus.api.spi;

/** qemu-img measure's answer: bytes needed now and when fully allocated. */
public record MeasureResult(long required, long fullyAllocated, long bitmaps) {
}
