/**
 * A writer and a reader for the "newc" cpio format (`070701`), the format of Linux initramfs
 * archives (Documentation/driver-api/early-userspace/buffer-format.rst). Enough for an initrd:
 * directories, regular files, symlinks and character devices, all owned by root.
 *
 * @packageDocumentation
 */

import { VirtioError } from '../../spec/index.js';

/** One archive member. Paths are relative (no leading `/`). */
export type CpioEntry =
  | { type: 'dir'; path: string; mode?: number }
  | { type: 'file'; path: string; data: Uint8Array | string; mode?: number }
  | { type: 'symlink'; path: string; target: string }
  | { type: 'chardev'; path: string; major: number; minor: number; mode?: number };

/** A member as read back by {@link parseCpio}. */
export interface CpioMember {
  /** Path as stored. */
  path: string;
  /** Full mode including the file type bits. */
  mode: number;
  /** Contents (the target for a symlink). */
  data: Uint8Array;
  /** Device major/minor (character and block devices). */
  rdevMajor: number;
  rdevMinor: number;
}

/** newc magic. */
export const CPIO_NEWC_MAGIC = '070701';
/** Fixed header size of a newc member. */
export const CPIO_HEADER_SIZE = 110;
/** Name of the member that ends an archive. */
export const CPIO_TRAILER = 'TRAILER!!!';

/** File type bits (`S_IFMT`). */
export const CpioMode = {
  Dir: 0o040000,
  File: 0o100000,
  Symlink: 0o120000,
  CharDev: 0o020000,
  TypeMask: 0o170000,
} as const;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Rounds up to a multiple of 4. */
function pad4(n: number): number {
  return (n + 3) & ~3;
}

/** Eight uppercase hex digits. */
function field(v: number): string {
  return (v >>> 0).toString(16).toUpperCase().padStart(8, '0');
}

/**
 * Writes a newc archive, with a trailer, each member and the end padded to 4 bytes.
 * @throws VirtioError `INVALID_ARGUMENT` for an empty, absolute or duplicate path
 */
export function writeCpio(entries: readonly CpioEntry[]): Uint8Array {
  const parts: Uint8Array[] = [];
  let size = 0;
  const seen = new Set<string>();
  const push = (name: string, mode: number, data: Uint8Array, ino: number, major = 0, minor = 0): void => {
    const nameBytes = encoder.encode(`${name}\0`);
    const header = encoder.encode(
      CPIO_NEWC_MAGIC +
        field(ino) +
        field(mode) +
        field(0) + // uid
        field(0) + // gid
        field(mode & CpioMode.Dir ? 2 : 1) + // nlink
        field(0) + // mtime: reproducible archives
        field(data.length) +
        field(0) + // devmajor
        field(0) + // devminor
        field(major) +
        field(minor) +
        field(nameBytes.length) +
        field(0), // check
    );
    const headLen = pad4(CPIO_HEADER_SIZE + nameBytes.length);
    const member = new Uint8Array(headLen + pad4(data.length));
    member.set(header, 0);
    member.set(nameBytes, CPIO_HEADER_SIZE);
    member.set(data, headLen);
    parts.push(member);
    size += member.length;
  };
  let ino = 1;
  for (const e of entries) {
    if (e.path === '' || e.path.startsWith('/') || e.path === CPIO_TRAILER) {
      throw new VirtioError('INVALID_ARGUMENT', `invalid cpio path ${JSON.stringify(e.path)}`);
    }
    if (seen.has(e.path)) throw new VirtioError('INVALID_ARGUMENT', `duplicate cpio path ${e.path}`);
    seen.add(e.path);
    switch (e.type) {
      case 'dir':
        push(e.path, CpioMode.Dir | (e.mode ?? 0o755), new Uint8Array(0), ino++);
        break;
      case 'file':
        push(
          e.path,
          CpioMode.File | (e.mode ?? 0o644),
          typeof e.data === 'string' ? encoder.encode(e.data) : e.data,
          ino++,
        );
        break;
      case 'symlink':
        push(e.path, CpioMode.Symlink | 0o777, encoder.encode(e.target), ino++);
        break;
      case 'chardev':
        push(e.path, CpioMode.CharDev | (e.mode ?? 0o600), new Uint8Array(0), ino++, e.major, e.minor);
        break;
    }
  }
  push(CPIO_TRAILER, 0, new Uint8Array(0), 0);
  const out = new Uint8Array(size);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/**
 * Reads every member of one or more concatenated newc archives (as the kernel does, skipping NUL
 * padding between them). Trailers are not returned.
 * @throws VirtioError `INVALID_ARGUMENT` for a bad magic, a bad hex field or a truncated member
 */
export function parseCpio(bytes: Uint8Array): CpioMember[] {
  const out: CpioMember[] = [];
  let o = 0;
  const num = (at: number): number => {
    const s = decoder.decode(bytes.subarray(at, at + 8));
    if (!/^[0-9A-Fa-f]{8}$/.test(s))
      throw new VirtioError('INVALID_ARGUMENT', `bad cpio header field at ${String(at)}`);
    return Number.parseInt(s, 16);
  };
  while (o < bytes.length) {
    if (bytes[o] === 0) {
      o++;
      continue;
    }
    if (o + CPIO_HEADER_SIZE > bytes.length)
      throw new VirtioError('INVALID_ARGUMENT', `truncated cpio header at ${String(o)}`);
    const magic = decoder.decode(bytes.subarray(o, o + 6));
    if (magic !== CPIO_NEWC_MAGIC)
      throw new VirtioError('INVALID_ARGUMENT', `bad cpio magic ${JSON.stringify(magic)} at ${String(o)}`);
    const mode = num(o + 14);
    const fileSize = num(o + 54);
    const rdevMajor = num(o + 78);
    const rdevMinor = num(o + 86);
    const nameSize = num(o + 94);
    const nameStart = o + CPIO_HEADER_SIZE;
    const dataStart = o + pad4(CPIO_HEADER_SIZE + nameSize);
    if (nameSize === 0 || dataStart + fileSize > bytes.length) {
      throw new VirtioError('INVALID_ARGUMENT', `truncated cpio member at ${String(o)}`);
    }
    const path = decoder.decode(bytes.subarray(nameStart, nameStart + nameSize - 1));
    o = dataStart + pad4(fileSize);
    if (path === CPIO_TRAILER) continue;
    out.push({ path, mode, data: bytes.slice(dataStart, dataStart + fileSize), rdevMajor, rdevMinor });
  }
  return out;
}
