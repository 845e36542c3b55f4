import { describe, expect, it } from 'vitest';
import { VirtioError } from '../../spec/index.js';
import {
  ArpOp,
  buildArp,
  buildArpRequestFrame,
  buildEth,
  buildIcmpEcho,
  buildIpv4,
  buildUdp,
  buildUdpFrame,
  ETH_MIN_FRAME,
  EtherType,
  formatIpv4Address,
  formatMac,
  IcmpType,
  IpProto,
  internetChecksum,
  parseArp,
  parseEth,
  parseIcmpEcho,
  parseIpv4,
  parseIpv4Address,
  parseMac,
  parseUdp,
  symmetricFlowHash,
} from './packet.js';

const hexBytes = (h: string): Uint8Array =>
  Uint8Array.from(h.match(/../g) ?? [], (x) => Number.parseInt(x, 16));

describe('internet checksum against known packets', () => {
  it('matches the RFC 1071 worked example', () => {
    // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2, checksum 220d.
    expect(internetChecksum(hexBytes('0001f203f4f5f6f7'))).toBe(0x220d);
    // Odd length: the last byte is padded with zero.
    expect(internetChecksum(Uint8Array.of(0x01))).toBe(0xfeff);
    expect(internetChecksum(new Uint8Array(0))).toBe(0xffff);
  });

  it('computes the IPv4 header checksum of a known header (b861) and verifies it', () => {
    const header = hexBytes('450000730000400040110000c0a80001c0a800c7');
    expect(internetChecksum(header)).toBe(0xb861);
    const built = buildIpv4(
      { proto: IpProto.UDP, src: parseIpv4Address('192.168.0.1'), dst: parseIpv4Address('192.168.0.199') },
      new Uint8Array(0x73 - 20),
    );
    expect(built.subarray(0, 20)).toEqual(
      hexBytes('450000730000400040110000c0a80001c0a800c7'.replace('0000c0a8', 'b861c0a8')),
    );
    const parsed = parseIpv4(built);
    expect(parsed?.src).toBe(0xc0a80001);
    expect(parsed?.payload.length).toBe(0x73 - 20);
    // A flipped bit fails the checksum.
    built[8] ^= 1;
    expect(parseIpv4(built)).toBeNull();
  });

  it('computes the ICMP echo checksum of the classic Windows ping (4d5a)', () => {
    const data = new TextEncoder().encode('abcdefghijklmnopqrstuvwabcdefghi');
    const m = buildIcmpEcho({ type: IcmpType.ECHO_REQUEST, id: 1, seq: 1, data });
    expect((m[2] << 8) | m[3]).toBe(0x4d5a);
    expect(parseIcmpEcho(m)).toEqual({ type: IcmpType.ECHO_REQUEST, id: 1, seq: 1, data });
    m[10] ^= 1;
    expect(parseIcmpEcho(m)).toBeNull();
  });

  it('computes the UDP checksum over the pseudo-header (34e2, from an independent implementation)', () => {
    const src = parseIpv4Address('192.168.0.1');
    const dst = parseIpv4Address('192.168.0.199');
    const data = new TextEncoder().encode('hello');
    const u = buildUdp(src, dst, { srcPort: 1234, dstPort: 53, data });
    expect(u).toEqual(Uint8Array.of(0x04, 0xd2, 0x00, 0x35, 0x00, 0x0d, 0x34, 0xe2, ...data));
    expect(parseUdp(src, dst, u)).toEqual({ srcPort: 1234, dstPort: 53, data });
    // Wrong pseudo-header (other destination) fails; checksum 0 means "not computed".
    expect(parseUdp(src, dst + 1, u)).toBeNull();
    u[6] = 0;
    u[7] = 0;
    expect(parseUdp(src, dst + 1, u)?.dstPort).toBe(53);
  });
});

describe('Ethernet, ARP, IPv4, ICMP and UDP framing', () => {
  it('parses and formats addresses, rejecting malformed ones', () => {
    expect(formatMac(parseMac('52:54:00:AB:cd:ef'))).toBe('52:54:00:ab:cd:ef');
    expect(formatMac(parseMac('52-54-00-ab-cd-ef'))).toBe('52:54:00:ab:cd:ef');
    expect(formatIpv4Address(parseIpv4Address('10.0.2.15'))).toBe('10.0.2.15');
    expect(parseIpv4Address('255.255.255.255')).toBe(0xffff_ffff);
    for (const bad of ['52:54:00:ab:cd', '52:54:00:ab:cd:eg', '525400abcdef', '']) {
      expect(() => parseMac(bad)).toThrow(VirtioError);
    }
    for (const bad of ['10.0.2', '10.0.2.256', '10.0.2.x', '1.2.3.4.5']) {
      expect(() => parseIpv4Address(bad)).toThrow(VirtioError);
    }
  });

  it('pads short frames to 60 bytes and rejects frames shorter than a header', () => {
    const f = buildEth(
      parseMac('ff:ff:ff:ff:ff:ff'),
      parseMac('02:00:00:00:00:01'),
      EtherType.ARP,
      new Uint8Array(28),
    );
    expect(f.length).toBe(ETH_MIN_FRAME);
    expect(parseEth(f)?.type).toBe(EtherType.ARP);
    expect(parseEth(new Uint8Array(13))).toBeNull();
  });

  it('round-trips ARP and rejects other hardware or protocol types', () => {
    const mac = parseMac('02:00:00:00:00:01');
    const frame = buildArpRequestFrame(mac, 0x0a000001, 0x0a000002);
    const arp = parseArp((parseEth(frame) as { payload: Uint8Array }).payload);
    expect(arp).toEqual({
      op: ArpOp.REQUEST,
      senderMac: mac,
      senderIp: 0x0a000001,
      targetMac: new Uint8Array(6),
      targetIp: 0x0a000002,
    });
    const p = buildArp(arp as NonNullable<typeof arp>);
    p[1] = 6;
    expect(parseArp(p)).toBeNull();
    expect(parseArp(new Uint8Array(27))).toBeNull();
  });

  it('rejects malformed IPv4: short, wrong version, bad lengths, and does not parse fragments', () => {
    const ok = buildIpv4({ proto: IpProto.UDP, src: 1, dst: 2 }, new Uint8Array(8));
    expect(parseIpv4(ok.subarray(0, 19))).toBeNull();
    const v6 = ok.slice();
    v6[0] = 0x65;
    expect(parseIpv4(v6)).toBeNull();
    const long = ok.slice();
    long[3] = 200;
    expect(parseIpv4(long)).toBeNull();
    // Trailing Ethernet padding is cut off.
    const padded = new Uint8Array(ok.length + 10);
    padded.set(ok);
    expect(parseIpv4(padded)?.payload.length).toBe(8);
    const frag = buildIpv4({ proto: IpProto.UDP, src: 1, dst: 2, dontFragment: false }, new Uint8Array(8));
    frag[6] = 0x20;
    frag[10] = 0;
    frag[11] = 0;
    const sum = internetChecksum(frag.subarray(0, 20));
    frag[10] = sum >> 8;
    frag[11] = sum & 0xff;
    expect(parseIpv4(frag)?.proto).toBe(-1);
    expect(() => buildIpv4({ proto: 17, src: 1, dst: 2 }, new Uint8Array(65516))).toThrow(VirtioError);
  });

  it('rejects short UDP and ICMP messages and non-echo ICMP', () => {
    expect(parseUdp(1, 2, new Uint8Array(7))).toBeNull();
    const u = buildUdp(1, 2, { srcPort: 1, dstPort: 2, data: new Uint8Array(4) });
    expect(parseUdp(1, 2, u.subarray(0, 10))).toBeNull();
    expect(parseIcmpEcho(new Uint8Array(7))).toBeNull();
    const unreachable = buildIcmpEcho({ type: 3, id: 0, seq: 0, data: new Uint8Array(0) });
    expect(parseIcmpEcho(unreachable)).toBeNull();
    expect(() => buildUdp(1, 2, { srcPort: 1, dstPort: 2, data: new Uint8Array(65528) })).toThrow(
      VirtioError,
    );
  });

  it('hashes a flow the same in both directions', () => {
    const a = parseMac('02:00:00:00:00:01');
    const b = parseMac('02:00:00:00:00:02');
    const there = buildUdpFrame(
      b,
      a,
      { src: 1, dst: 2 },
      { srcPort: 10, dstPort: 20, data: new Uint8Array(4) },
    );
    const back = buildUdpFrame(
      a,
      b,
      { src: 2, dst: 1 },
      { srcPort: 20, dstPort: 10, data: new Uint8Array(4) },
    );
    const other = buildUdpFrame(
      b,
      a,
      { src: 1, dst: 2 },
      { srcPort: 11, dstPort: 20, data: new Uint8Array(4) },
    );
    expect(symmetricFlowHash(there)).toBe(symmetricFlowHash(back));
    expect(symmetricFlowHash(there)).not.toBe(symmetricFlowHash(other));
    const raw1 = buildEth(a, b, 0x88b5, new Uint8Array(4));
    const raw2 = buildEth(b, a, 0x88b5, new Uint8Array(4));
    expect(symmetricFlowHash(raw1)).toBe(symmetricFlowHash(raw2));
    expect(symmetricFlowHash(new Uint8Array(5))).toBe(0);
  });
});

describe('buildUdpFrame in one buffer', () => {
  it('is byte for byte the composition of buildUdp, buildIpv4 and buildEth', () => {
    const dst = parseMac('02:00:00:00:00:01');
    const src = parseMac('52:54:00:12:34:56');
    for (const len of [0, 1, 17, 18, 32, 1023, 1024, 1472]) {
      for (const id of [undefined, 0, 0xbeef, 0x1_0001]) {
        const data = new Uint8Array(len).map((_, i) => (i * 31 + len) & 0xff);
        const ip = { src: parseIpv4Address('10.0.2.15'), dst: parseIpv4Address('10.0.2.2'), id };
        const udp = { srcPort: 40000, dstPort: 12866, data };
        const composed = buildEth(
          dst,
          src,
          EtherType.IPV4,
          buildIpv4({ proto: IpProto.UDP, src: ip.src, dst: ip.dst, id }, buildUdp(ip.src, ip.dst, udp)),
        );
        expect(buildUdpFrame(dst, src, ip, udp)).toEqual(composed);
      }
    }
  });

  it('refuses a datagram that does not fit an IPv4 packet', () => {
    const mac = parseMac('02:00:00:00:00:01');
    let err: unknown;
    try {
      buildUdpFrame(
        mac,
        mac,
        { src: 1, dst: 2 },
        { srcPort: 1, dstPort: 2, data: new Uint8Array(0xffff - 20) },
      );
    } catch (e) {
      err = e;
    }
    expect((err as { code?: string }).code).toBe('INVALID_ARGUMENT');
  });
});
