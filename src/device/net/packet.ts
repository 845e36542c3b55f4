/**
 * Just enough Ethernet, ARP (RFC 826), IPv4 (RFC 791), ICMP echo (RFC 792) and UDP (RFC 768) to
 * talk to a guest NIC: builders that return whole frames and parsers that check lengths and
 * checksums before trusting a field. No options, no fragments (a fragment is not parsed as UDP or
 * ICMP), no IPv6. Used by the host-side peer and by tests.
 *
 * All multi-byte fields are big-endian (network order). Checksums are the 16-bit one's complement
 * sum of RFC 1071.
 *
 * @packageDocumentation
 */

import { ETH_HLEN, VirtioError } from '../../spec/index.js';

/** EtherType values used here. */
export const EtherType = {
  /** Internet Protocol version 4. */
  IPV4: 0x0800,
  /** Address Resolution Protocol. */
  ARP: 0x0806,
  /** 802.1Q VLAN tag. */
  VLAN: 0x8100,
  /** IEEE 802 local experimental EtherType 1: the raw test protocol of the benchmarks. */
  LOCAL_EXPERIMENTAL: 0x88b5,
} as const;

/** IPv4 protocol numbers used here. */
export const IpProto = {
  /** ICMP. */
  ICMP: 1,
  /** UDP. */
  UDP: 17,
} as const;

/** ARP opcodes. */
export const ArpOp = {
  /** Who has. */
  REQUEST: 1,
  /** Is at. */
  REPLY: 2,
} as const;

/** ICMP types used here. */
export const IcmpType = {
  /** Echo reply. */
  ECHO_REPLY: 0,
  /** Echo request. */
  ECHO_REQUEST: 8,
} as const;

/** Bytes of an IPv4 header without options. */
export const IPV4_HLEN = 20;
/** Bytes of a UDP header. */
export const UDP_HLEN = 8;
/** Bytes of an ICMP echo header. */
export const ICMP_ECHO_HLEN = 8;
/** Bytes of an ARP packet for Ethernet/IPv4. */
export const ARP_LEN = 28;
/** Smallest Ethernet frame without FCS: shorter frames are padded with zeroes. */
export const ETH_MIN_FRAME = 60;

/** The broadcast MAC address. */
export const BROADCAST_MAC: Uint8Array = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);

/**
 * Parses `aa:bb:cc:dd:ee:ff` (or `-` separated) into 6 bytes.
 * @throws VirtioError `INVALID_ARGUMENT` otherwise
 */
export function parseMac(text: string): Uint8Array {
  const parts = text.split(/[:-]/);
  if (parts.length !== 6 || !parts.every((p) => /^[0-9a-fA-F]{2}$/.test(p))) {
    throw new VirtioError('INVALID_ARGUMENT', `invalid mac address ${text}`);
  }
  return Uint8Array.from(parts.map((p) => Number.parseInt(p, 16)));
}

/** Formats 6 bytes as `aa:bb:cc:dd:ee:ff`. */
export function formatMac(mac: Uint8Array): string {
  return Array.from(mac.subarray(0, 6), (b) => b.toString(16).padStart(2, '0')).join(':');
}

/**
 * Parses a dotted-quad IPv4 address into a 32-bit unsigned number.
 * @throws VirtioError `INVALID_ARGUMENT` otherwise
 */
export function parseIpv4Address(text: string): number {
  const parts = text.split('.');
  if (parts.length !== 4 || !parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255)) {
    throw new VirtioError('INVALID_ARGUMENT', `invalid ipv4 address ${text}`);
  }
  return parts.reduce((a, p) => a * 256 + Number(p), 0);
}

/** Formats a 32-bit IPv4 address as a dotted quad. */
export function formatIpv4Address(ip: number): string {
  return [ip >>> 24, (ip >>> 16) & 0xff, (ip >>> 8) & 0xff, ip & 0xff].join('.');
}

/** True when both MACs hold the same 6 bytes. */
export function macEquals(a: Uint8Array, b: Uint8Array): boolean {
  for (let i = 0; i < 6; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** The one's complement sum of `bytes` folded to 16 bits, starting from `initial` (RFC 1071). */
function onesSum(bytes: Uint8Array, initial: number): number {
  let sum = initial;
  const n = bytes.length;
  for (let i = 0; i + 1 < n; i += 2) sum += (bytes[i] << 8) | bytes[i + 1];
  if ((n & 1) === 1) sum += bytes[n - 1] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}

/**
 * The Internet checksum of `bytes` (RFC 1071): the one's complement of the one's complement sum
 * of the 16-bit words (an odd last byte is padded with zero). A block that includes a correct
 * checksum field sums to 0.
 */
export function internetChecksum(bytes: Uint8Array, initial = 0): number {
  return ~onesSum(bytes, initial) & 0xffff;
}

/** The UDP pseudo-header sum (RFC 768): source, destination, zero, protocol, UDP length. */
function pseudoSum(src: number, dst: number, proto: number, length: number): number {
  return (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + proto + length;
}

/** A parsed Ethernet frame: addresses, EtherType and the payload (a view into the frame). */
export interface EthFrame {
  /** Destination MAC (view). */
  readonly dst: Uint8Array;
  /** Source MAC (view). */
  readonly src: Uint8Array;
  /** EtherType. */
  readonly type: number;
  /** What follows the header (view; may include padding). */
  readonly payload: Uint8Array;
}

/** Builds an Ethernet frame, padded with zeroes to {@link ETH_MIN_FRAME} bytes. */
export function buildEth(dst: Uint8Array, src: Uint8Array, type: number, payload: Uint8Array): Uint8Array {
  const f = new Uint8Array(Math.max(ETH_MIN_FRAME, ETH_HLEN + payload.length));
  f.set(dst.subarray(0, 6), 0);
  f.set(src.subarray(0, 6), 6);
  f[12] = type >>> 8;
  f[13] = type & 0xff;
  f.set(payload, ETH_HLEN);
  return f;
}

/** Parses an Ethernet header; null for a frame shorter than 14 bytes. */
export function parseEth(frame: Uint8Array): EthFrame | null {
  if (frame.length < ETH_HLEN) return null;
  return {
    dst: frame.subarray(0, 6),
    src: frame.subarray(6, 12),
    type: (frame[12] << 8) | frame[13],
    payload: frame.subarray(ETH_HLEN),
  };
}

/** An ARP packet for Ethernet and IPv4. */
export interface ArpPacket {
  /** {@link ArpOp}. */
  readonly op: number;
  /** Sender hardware address. */
  readonly senderMac: Uint8Array;
  /** Sender protocol address. */
  readonly senderIp: number;
  /** Target hardware address. */
  readonly targetMac: Uint8Array;
  /** Target protocol address. */
  readonly targetIp: number;
}

/** Builds an ARP payload (28 bytes: htype 1, ptype 0x0800, hlen 6, plen 4). */
export function buildArp(p: ArpPacket): Uint8Array {
  const b = new Uint8Array(ARP_LEN);
  const v = new DataView(b.buffer);
  v.setUint16(0, 1);
  v.setUint16(2, EtherType.IPV4);
  b[4] = 6;
  b[5] = 4;
  v.setUint16(6, p.op);
  b.set(p.senderMac.subarray(0, 6), 8);
  v.setUint32(14, p.senderIp >>> 0);
  b.set(p.targetMac.subarray(0, 6), 18);
  v.setUint32(24, p.targetIp >>> 0);
  return b;
}

/** Parses an Ethernet/IPv4 ARP payload; null when it is anything else or too short. */
export function parseArp(payload: Uint8Array): ArpPacket | null {
  if (payload.length < ARP_LEN) return null;
  const v = new DataView(payload.buffer, payload.byteOffset, payload.length);
  if (v.getUint16(0) !== 1 || v.getUint16(2) !== EtherType.IPV4 || payload[4] !== 6 || payload[5] !== 4) {
    return null;
  }
  return {
    op: v.getUint16(6),
    senderMac: payload.slice(8, 14),
    senderIp: v.getUint32(14),
    targetMac: payload.slice(18, 24),
    targetIp: v.getUint32(24),
  };
}

/** A parsed IPv4 packet. */
export interface Ipv4Packet {
  /** Protocol number. */
  readonly proto: number;
  /** Source address. */
  readonly src: number;
  /** Destination address. */
  readonly dst: number;
  /** Time to live. */
  readonly ttl: number;
  /** Identification. */
  readonly id: number;
  /** The payload, `totalLength - ihl * 4` bytes (view). */
  readonly payload: Uint8Array;
}

/** Fields of {@link buildIpv4}. */
export interface Ipv4Fields {
  /** Protocol number. */
  readonly proto: number;
  /** Source address. */
  readonly src: number;
  /** Destination address. */
  readonly dst: number;
  /** Time to live (default 64). */
  readonly ttl?: number;
  /** Identification (default 0). */
  readonly id?: number;
  /** Don't-fragment flag (default true). */
  readonly dontFragment?: boolean;
}

/** Builds an IPv4 packet (20-byte header, no options) with its header checksum. */
export function buildIpv4(f: Ipv4Fields, payload: Uint8Array): Uint8Array {
  const total = IPV4_HLEN + payload.length;
  if (total > 0xffff) throw new VirtioError('INVALID_ARGUMENT', `ipv4 packet of ${total} bytes`);
  const b = new Uint8Array(total);
  const v = new DataView(b.buffer);
  b[0] = 0x45;
  v.setUint16(2, total);
  v.setUint16(4, (f.id ?? 0) & 0xffff);
  v.setUint16(6, (f.dontFragment ?? true) ? 0x4000 : 0);
  b[8] = f.ttl ?? 64;
  b[9] = f.proto;
  v.setUint32(12, f.src >>> 0);
  v.setUint32(16, f.dst >>> 0);
  v.setUint16(10, internetChecksum(b.subarray(0, IPV4_HLEN)));
  b.set(payload, IPV4_HLEN);
  return b;
}

/**
 * Parses an IPv4 packet: version 4, a header of at least 20 bytes whose checksum is right, a total
 * length inside the buffer (trailing Ethernet padding is cut off). Fragments (MF set or an offset)
 * are returned with an empty payload flagged by proto -1: nothing here reassembles. Null when the
 * packet is malformed.
 */
export function parseIpv4(data: Uint8Array): Ipv4Packet | null {
  if (data.length < IPV4_HLEN || data[0] >> 4 !== 4) return null;
  const ihl = (data[0] & 0xf) * 4;
  if (ihl < IPV4_HLEN || data.length < ihl) return null;
  const v = new DataView(data.buffer, data.byteOffset, data.length);
  const total = v.getUint16(2);
  if (total < ihl || total > data.length) return null;
  if (internetChecksum(data.subarray(0, ihl)) !== 0) return null;
  const frag = v.getUint16(6);
  const fragmented = (frag & 0x2000) !== 0 || (frag & 0x1fff) !== 0;
  return {
    proto: fragmented ? -1 : data[9],
    src: v.getUint32(12),
    dst: v.getUint32(16),
    ttl: data[8],
    id: v.getUint16(4),
    payload: fragmented ? data.subarray(0, 0) : data.subarray(ihl, total),
  };
}

/** An ICMP echo request or reply. */
export interface IcmpEcho {
  /** {@link IcmpType.ECHO_REQUEST} or {@link IcmpType.ECHO_REPLY}. */
  readonly type: number;
  /** Identifier. */
  readonly id: number;
  /** Sequence number. */
  readonly seq: number;
  /** Data (view). */
  readonly data: Uint8Array;
}

/** Builds an ICMP echo message with its checksum. */
export function buildIcmpEcho(e: IcmpEcho): Uint8Array {
  const b = new Uint8Array(ICMP_ECHO_HLEN + e.data.length);
  const v = new DataView(b.buffer);
  b[0] = e.type;
  v.setUint16(4, e.id & 0xffff);
  v.setUint16(6, e.seq & 0xffff);
  b.set(e.data, ICMP_ECHO_HLEN);
  v.setUint16(2, internetChecksum(b));
  return b;
}

/** Parses an ICMP echo request or reply with a correct checksum; null otherwise. */
export function parseIcmpEcho(data: Uint8Array): IcmpEcho | null {
  if (data.length < ICMP_ECHO_HLEN || data[1] !== 0) return null;
  if (data[0] !== IcmpType.ECHO_REQUEST && data[0] !== IcmpType.ECHO_REPLY) return null;
  if (internetChecksum(data) !== 0) return null;
  return {
    type: data[0],
    id: (data[4] << 8) | data[5],
    seq: (data[6] << 8) | data[7],
    data: data.subarray(ICMP_ECHO_HLEN),
  };
}

/** A UDP datagram. */
export interface UdpDatagram {
  /** Source port. */
  readonly srcPort: number;
  /** Destination port. */
  readonly dstPort: number;
  /** Payload (view). */
  readonly data: Uint8Array;
}

/** Builds a UDP datagram with its checksum over the pseudo-header (0 is sent as 0xffff, RFC 768). */
export function buildUdp(src: number, dst: number, d: UdpDatagram): Uint8Array {
  const len = UDP_HLEN + d.data.length;
  if (len > 0xffff) throw new VirtioError('INVALID_ARGUMENT', `udp datagram of ${len} bytes`);
  const b = new Uint8Array(len);
  const v = new DataView(b.buffer);
  v.setUint16(0, d.srcPort);
  v.setUint16(2, d.dstPort);
  v.setUint16(4, len);
  b.set(d.data, UDP_HLEN);
  const sum = internetChecksum(b, pseudoSum(src, dst, IpProto.UDP, len));
  v.setUint16(6, sum === 0 ? 0xffff : sum);
  return b;
}

/**
 * Parses a UDP datagram carried in IPv4 from `src` to `dst`: length inside the buffer, checksum
 * right (or 0, "not computed"). Null otherwise.
 */
export function parseUdp(src: number, dst: number, data: Uint8Array): UdpDatagram | null {
  if (data.length < UDP_HLEN) return null;
  const len = (data[4] << 8) | data[5];
  if (len < UDP_HLEN || len > data.length) return null;
  const d = data.subarray(0, len);
  const sum = (d[6] << 8) | d[7];
  if (sum !== 0 && internetChecksum(d, pseudoSum(src, dst, IpProto.UDP, len)) !== 0) return null;
  return { srcPort: (d[0] << 8) | d[1], dstPort: (d[2] << 8) | d[3], data: d.subarray(UDP_HLEN) };
}

/**
 * Builds a whole Ethernet frame carrying an IPv4/UDP datagram (the same bytes as
 * `buildEth(…, buildIpv4(…, buildUdp(…)))`, written into one buffer: one allocation, one copy).
 * @throws VirtioError `INVALID_ARGUMENT` for a datagram that does not fit an IPv4 packet
 */
export function buildUdpFrame(
  dstMac: Uint8Array,
  srcMac: Uint8Array,
  ip: { src: number; dst: number; id?: number },
  udp: UdpDatagram,
): Uint8Array {
  const udpLen = UDP_HLEN + udp.data.length;
  if (udpLen > 0xffff) throw new VirtioError('INVALID_ARGUMENT', `udp datagram of ${udpLen} bytes`);
  const total = IPV4_HLEN + udpLen;
  if (total > 0xffff) throw new VirtioError('INVALID_ARGUMENT', `ipv4 packet of ${total} bytes`);
  const f = new Uint8Array(Math.max(ETH_MIN_FRAME, ETH_HLEN + total));
  f.set(dstMac.subarray(0, 6), 0);
  f.set(srcMac.subarray(0, 6), 6);
  f[12] = EtherType.IPV4 >>> 8;
  f[13] = EtherType.IPV4 & 0xff;
  const o = ETH_HLEN;
  const src = ip.src >>> 0;
  const dst = ip.dst >>> 0;
  const id = (ip.id ?? 0) & 0xffff;
  f[o] = 0x45;
  f[o + 2] = total >>> 8;
  f[o + 3] = total & 0xff;
  f[o + 4] = id >>> 8;
  f[o + 5] = id & 0xff;
  f[o + 6] = 0x40; // don't fragment, as buildIpv4's default
  f[o + 8] = 64;
  f[o + 9] = IpProto.UDP;
  writeU32(f, o + 12, src);
  writeU32(f, o + 16, dst);
  const hsum = internetChecksum(f.subarray(o, o + IPV4_HLEN));
  f[o + 10] = hsum >>> 8;
  f[o + 11] = hsum & 0xff;
  const u = o + IPV4_HLEN;
  f[u] = udp.srcPort >>> 8;
  f[u + 1] = udp.srcPort & 0xff;
  f[u + 2] = udp.dstPort >>> 8;
  f[u + 3] = udp.dstPort & 0xff;
  f[u + 4] = udpLen >>> 8;
  f[u + 5] = udpLen & 0xff;
  f.set(udp.data, u + UDP_HLEN);
  const sum = internetChecksum(f.subarray(u, u + udpLen), pseudoSum(src, dst, IpProto.UDP, udpLen));
  const csum = sum === 0 ? 0xffff : sum;
  f[u + 6] = csum >>> 8;
  f[u + 7] = csum & 0xff;
  return f;
}

/** Big-endian u32 at `at`. */
function writeU32(b: Uint8Array, at: number, v: number): void {
  b[at] = v >>> 24;
  b[at + 1] = (v >>> 16) & 0xff;
  b[at + 2] = (v >>> 8) & 0xff;
  b[at + 3] = v & 0xff;
}

/** Builds a whole Ethernet frame carrying an ICMP echo message. */
export function buildIcmpEchoFrame(
  dstMac: Uint8Array,
  srcMac: Uint8Array,
  ip: { src: number; dst: number; id?: number },
  echo: IcmpEcho,
): Uint8Array {
  return buildEth(
    dstMac,
    srcMac,
    EtherType.IPV4,
    buildIpv4({ proto: IpProto.ICMP, src: ip.src, dst: ip.dst, id: ip.id }, buildIcmpEcho(echo)),
  );
}

/** Builds an ARP request frame: who has `targetIp`, tell `senderIp` (broadcast). */
export function buildArpRequestFrame(senderMac: Uint8Array, senderIp: number, targetIp: number): Uint8Array {
  return buildEth(
    BROADCAST_MAC,
    senderMac,
    EtherType.ARP,
    buildArp({ op: ArpOp.REQUEST, senderMac, senderIp, targetMac: new Uint8Array(6), targetIp }),
  );
}

/**
 * A flow hash of a frame that is the same in both directions (source and destination swapped):
 * over the IPv4 addresses and, for UDP and TCP, the ports; over the MAC addresses otherwise. Used
 * for receive steering; never allocates.
 */
export function symmetricFlowHash(frame: Uint8Array): number {
  if (frame.length < ETH_HLEN) return 0;
  const type = (frame[12] << 8) | frame[13];
  if (type === EtherType.IPV4 && frame.length >= ETH_HLEN + IPV4_HLEN) {
    const o = ETH_HLEN;
    const a = ((frame[o + 12] << 24) | (frame[o + 13] << 16) | (frame[o + 14] << 8) | frame[o + 15]) >>> 0;
    const b = ((frame[o + 16] << 24) | (frame[o + 17] << 16) | (frame[o + 18] << 8) | frame[o + 19]) >>> 0;
    let h = Math.imul((a ^ b) >>> 0, 0x9e3779b1) ^ Math.imul(((a + b) >>> 0) | 0, 0x85ebca6b);
    const proto = frame[o + 9];
    const ihl = (frame[o] & 0xf) * 4;
    if ((proto === 6 || proto === IpProto.UDP) && frame.length >= o + ihl + 4) {
      const p = o + ihl;
      const sp = (frame[p] << 8) | frame[p + 1];
      const dp = (frame[p + 2] << 8) | frame[p + 3];
      h ^= Math.imul(sp ^ dp, 0xc2b2ae35) ^ Math.imul(sp + dp, 0x27d4eb2f);
    }
    return (h ^ (h >>> 15)) >>> 0;
  }
  let x = 0;
  let y = 0;
  for (let i = 0; i < 6; i++) {
    x = (x * 31 + frame[i]) | 0;
    y = (y * 31 + frame[6 + i]) | 0;
  }
  const h = Math.imul((x ^ y) >>> 0, 0x9e3779b1) ^ Math.imul((x + y) | 0, 0x85ebca6b);
  return (h ^ (h >>> 15)) >>> 0;
}
