/**
 * Device configuration space as bytes: the little-endian read every device model answers
 * `readConfig` with (virtio 1.2, 2.5: "the device configuration space ... little-endian").
 *
 * @packageDocumentation
 */

/**
 * Reads `width` bytes at `offset` of a configuration space held in `view`, little-endian. Offsets
 * outside the first `size` bytes read 0 (the transport checks ranges already; this keeps a device
 * safe on its own).
 */
export function readConfigLe(view: DataView, size: number, offset: number, width: 1 | 2 | 4): number {
  if (!Number.isInteger(offset) || offset < 0 || offset + width > size) return 0;
  if (width === 1) return view.getUint8(offset);
  if (width === 2) return view.getUint16(offset, true);
  return view.getUint32(offset, true);
}
