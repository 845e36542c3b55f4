import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  ACPI_CHECKSUM_OFFSET,
  ACPI_HEADER_SIZE,
  AmlOp,
  AmlResource,
  acpiFixChecksum,
  amlInteger,
  amlNameSeg,
  amlPkgLength,
  amlVirtioResources,
  buildVirtioSsdt,
} from './aml.js';

/** `iasl` output for the one-device SSDT (docs: shared v86-linux-guest reference, route A). */
const IASL_ONE_DEVICE =
  '5353445468000000028a56495254494f564d4d494f00000001000000494e544c250920201043045c5f53425f5b823a56' +
  '523030085f4849440d4c4e524f3030303500085f55494400085f435253111a0a1786090001000000d0000200008906000101' +
  '050000007900';

const hexOf = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const sum = (b: Uint8Array): number => b.reduce((a, x) => (a + x) & 0xff, 0);

function hasIasl(): boolean {
  try {
    execFileSync('iasl', ['-v'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

describe('aml encoder', () => {
  it('builds the exact bytes iasl produces for one device', () => {
    const t = buildVirtioSsdt([{ base: 0xd000_0000, size: 0x200, irq: 5 }], {
      creatorId: 'INTL',
      creatorRevision: 0x2020_0925,
    });
    expect(hexOf(t)).toBe(IASL_ONE_DEVICE);
  });

  it('writes a valid header: signature, length, revision, checksum summing to zero', () => {
    const devices = Array.from({ length: 3 }, (_, i) => ({
      base: 0xd000_0000 + i * 0x200,
      size: 0x200,
      irq: [5, 3, 5][i],
    }));
    const t = buildVirtioSsdt(devices);
    const dv = new DataView(t.buffer, t.byteOffset, t.byteLength);
    expect(new TextDecoder().decode(t.subarray(0, 4))).toBe('SSDT');
    expect(dv.getUint32(4, true)).toBe(t.length);
    expect(t[8]).toBe(2);
    expect(sum(t)).toBe(0);
    expect(new TextDecoder().decode(t.subarray(10, 16))).toBe('VIRTIO');
    expect(new TextDecoder().decode(t.subarray(28, 32))).toBe('VMIO');
    // One Device op per window, each with the hardware ID.
    const text = Buffer.from(t).toString('latin1');
    expect(text.split('LNRO0005').length - 1).toBe(3);
    for (const name of ['VR00', 'VR01', 'VR02']) expect(text).toContain(name);
    expect(t[ACPI_HEADER_SIZE]).toBe(AmlOp.Scope);
  });

  it('places base, size and irq in the resource template', () => {
    const r = amlVirtioResources({ base: 0xfeb0_0200, size: 0x1000, irq: 11 });
    const dv = new DataView(r.buffer);
    expect(r[0]).toBe(AmlResource.Memory32Fixed);
    expect(dv.getUint16(1, true)).toBe(9);
    expect(r[3]).toBe(1); // read-write
    expect(dv.getUint32(4, true)).toBe(0xfeb0_0200);
    expect(dv.getUint32(8, true)).toBe(0x1000);
    expect(r[12]).toBe(AmlResource.ExtendedInterrupt);
    expect(r[15]).toBe(0x01); // consumer, level, active-high, exclusive
    expect(r[16]).toBe(1);
    expect(dv.getUint32(17, true)).toBe(11);
    expect([...r.subarray(21)]).toEqual([AmlResource.EndTag, 0]);
  });

  it('encodes PkgLength in 1 to 4 bytes', () => {
    expect([...amlPkgLength(0)]).toEqual([1]);
    expect([...amlPkgLength(0x3e)]).toEqual([0x3f]);
    // 0x3f content + 2 length bytes = 0x41
    expect([...amlPkgLength(0x3f)]).toEqual([0x41, 0x04]);
    const three = amlPkgLength(0x1000);
    expect(three.length).toBe(3);
    expect(three[0] >> 6).toBe(2);
    expect((three[0] & 0xf) | (three[1] << 4) | (three[2] << 12)).toBe(0x1003);
    expect(amlPkgLength(0x10_0000).length).toBe(4);
    expect(() => amlPkgLength(0x1000_0000)).toThrow(/too long/);
  });

  it('encodes integers with the shortest prefix', () => {
    expect([...amlInteger(0)]).toEqual([AmlOp.Zero]);
    expect([...amlInteger(1)]).toEqual([AmlOp.One]);
    expect([...amlInteger(0xff)]).toEqual([AmlOp.BytePrefix, 0xff]);
    expect([...amlInteger(0x1234)]).toEqual([AmlOp.WordPrefix, 0x34, 0x12]);
    expect([...amlInteger(0xd000_0000)]).toEqual([AmlOp.DWordPrefix, 0, 0, 0, 0xd0]);
  });

  it('fixes a checksum in place', () => {
    const t = buildVirtioSsdt([{ base: 0xd000_0000, size: 0x200, irq: 5 }]);
    t[20] ^= 0x55;
    expect(sum(t)).not.toBe(0);
    acpiFixChecksum(t);
    expect(sum(t)).toBe(0);
    expect(t[ACPI_CHECKSUM_OFFSET]).toBeGreaterThanOrEqual(0);
  });

  it('rejects invalid input', () => {
    expect(() => buildVirtioSsdt([])).toThrow(/1 to 256 devices/);
    expect(() =>
      buildVirtioSsdt(Array.from({ length: 257 }, () => ({ base: 0, size: 0x200, irq: 5 }))),
    ).toThrow(/1 to 256/);
    expect(() => amlVirtioResources({ base: -1, size: 0x200, irq: 5 })).toThrow(/base out of range/);
    expect(() => amlVirtioResources({ base: 0, size: 0x200, irq: 2 ** 32 })).toThrow(/irq out of range/);
    expect(() => amlVirtioResources({ base: 0xffff_ff00, size: 0x200, irq: 5 })).toThrow(
      /invalid virtio window/,
    );
    expect(() => amlVirtioResources({ base: 0, size: 0, irq: 5 })).toThrow(/invalid virtio window/);
    expect(() => amlNameSeg('vr00')).toThrow(/invalid aml name/);
    expect(() => amlNameSeg('ABCDE')).toThrow(/invalid aml name/);
    expect(() => amlInteger(-1)).toThrow(/out of range/);
    expect(() => amlInteger(1.5)).toThrow(/out of range/);
    expect(() => buildVirtioSsdt([{ base: 0, size: 0x200, irq: 5 }], { oemId: 'TOOLONGID' })).toThrow(
      /longer than 6/,
    );
    expect(() => buildVirtioSsdt([{ base: 0, size: 0x200, irq: 5 }], { creatorId: 'é' })).toThrow(
      /non-printable/,
    );
  });

  it.runIf(hasIasl())(
    'decodes with iasl -d into one LNRO0005 device per window (acpica-tools installed)',
    () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aml-'));
      try {
        const devices = Array.from({ length: 20 }, (_, i) => ({
          base: 0xd000_0000 + i * 0x200,
          size: 0x200,
          irq: i % 2 ? 3 : 5,
        }));
        fs.writeFileSync(path.join(dir, 'v.aml'), buildVirtioSsdt(devices));
        execFileSync('iasl', ['-d', 'v.aml'], { cwd: dir, stdio: 'ignore' });
        const dsl = fs.readFileSync(path.join(dir, 'v.dsl'), 'utf8');
        expect(dsl.match(/Name \(_HID, "LNRO0005"\)/g)?.length).toBe(20);
        expect(dsl).toContain('0xD0002600,');
        expect(dsl.match(/Interrupt \(ResourceConsumer, Level, ActiveHigh, Exclusive/g)?.length).toBe(20);
        expect(dsl).not.toMatch(/Error|Invalid/i);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  );
});
