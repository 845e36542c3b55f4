import { describe, expect, it } from 'vitest';
import { utf8Decode, utf8Encode } from './utf8.js';

describe('utf8', () => {
  const samples = [
    '',
    'ascii',
    'org.qemu.guest_agent.0',
    'é',
    '€uro',
    '日本語',
    '😀 emoji',
    'a\u0000b',
    '\ud800 lone',
    'x\udc00',
  ];

  it('encodes like TextEncoder, lone surrogates included', () => {
    for (const s of samples) expect([...utf8Encode(s)], s).toEqual([...new TextEncoder().encode(s)]);
  });

  it('decodes like TextDecoder, malformed and truncated sequences included', () => {
    const bytes = [
      ...samples.map((s) => new TextEncoder().encode(s)),
      Uint8Array.from([0xc3]),
      Uint8Array.from([0x80, 0x41]),
      Uint8Array.from([0xc0, 0xaf]),
      Uint8Array.from([0xed, 0xa0, 0x80]),
      Uint8Array.from([0xf4, 0x90, 0x80, 0x80]),
      Uint8Array.from([0xe2, 0x82, 0x41]),
    ];
    for (const b of bytes) expect(utf8Decode(b), [...b].join(',')).toBe(new TextDecoder().decode(b));
  });
});
