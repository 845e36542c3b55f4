/**
 * The seed v2 ABI ("[PATCH v2 4/5] virtio-mmio: add MSI interrupt feature support" and
 * "[PATCH v2 5/5] virtio-mmio: MSI vector and event mapping", Feb 2020), as posted. It was never
 * merged and collides with later standard features: bit 39 is VIRTIO_F_NOTIF_CONFIG_DATA, bit 40
 * is VIRTIO_F_RING_RESET, and 0x0c0 is QueueReset. It is a non-standard, opt-in profile that is
 * never offered together with the features it collides with (docs/profiles).
 *
 * @packageDocumentation
 */

/** Seed feature bits (collide with {@link FeatureBit.NOTIF_CONFIG_DATA} and RING_RESET). */
export const SeedFeatureBit = {
  /** Per-queue notification addresses; QueueNotify becomes readable. */
  MMIO_NOTIFICATION: 39,
  /** MSI interrupts through the Msi* registers. */
  MMIO_MSI: 40,
} as const;

/** Seed MSI registers. MsiVecNum sits where the standard puts QueueReset. */
export const SeedMmioReg = {
  /** R: number of MSI vectors the device supports. */
  MsiVecNum: 0x0c0,
  /** R: MSI state; enabled is bit 31 and sharing bit 30 (driver header, not the spec text). */
  MsiState: 0x0c4,
  /** W: MSI command, one of {@link MsiCmd}. */
  MsiCommand: 0x0c8,
  /** W: selects the vector that CONFIGURE, MASK, UNMASK and MAP_* act on. */
  MsiVecSel: 0x0d0,
  /** W: low 32 bits of the MSI address staged for CONFIGURE. */
  MsiAddrLow: 0x0d4,
  /** W: high 32 bits of the MSI address staged for CONFIGURE. */
  MsiAddrHigh: 0x0d8,
  /** W: MSI data staged for CONFIGURE. */
  MsiData: 0x0dc,
} as const;

/** MsiState bits as the seed's driver header defines them. */
export const MsiStateBit = {
  /** MSI is enabled (driver header bit 31; the spec text says bit 0). */
  ENABLED: 0x8000_0000,
  /** The device uses sharing mode (driver header bit 30; the spec text says bit 1). */
  SHARING: 0x4000_0000,
} as const;

/** Seed MSI commands written to MsiCommand. */
export const MsiCmd = {
  /** Enable MSI delivery. */
  ENABLE: 1,
  /** Disable MSI delivery; the device falls back to its wired line. */
  DISABLE: 2,
  /** Latch the staged address/data into the selected vector. */
  CONFIGURE: 3,
  /** Mask the selected vector. */
  MASK: 4,
  /** Unmask the selected vector (delivers a pending message). */
  UNMASK: 5,
  /** Sharing mode: map the configuration event to the selected vector. */
  MAP_CONFIG: 6,
  /** Sharing mode: map queue QueueSel to the selected vector. */
  MAP_QUEUE: 7,
} as const;

/** "No vector": unmaps an event (MsiVecSel value). */
export const MSI_NO_VECTOR = 0xffff_ffff;
