/**
 * A host-side peer in TypeScript on the far end of a {@link NetBackend}: a tiny IPv4 host with a MAC
 * and an address that
 *
 * - answers ARP requests for its address (and learns senders' addresses),
 * - answers ICMP echo requests (ping), and can ping,
 * - runs a request/response server over UDP (netperf UDP_RR / TCP_RR style): a request of any size
 *   to {@link HostPeerOptions.rrPort} is answered with `rrResponseSize` bytes whose first bytes echo
 *   the request's first 8 (the transaction id), so a client measures round trips of fixed sizes
 *   such as 32/1024,
 * - runs a bulk receiver (iperf UDP style) on {@link HostPeerOptions.sinkPort}: datagrams carrying a
 *   big-endian u32 sequence number first are counted, with losses, reordering and duplicates,
 * - and sends bulk datagrams in the same format ({@link HostPeer.bulkSend}), also on request: a
 *   datagram to {@link HostPeerOptions.sourcePort} carrying big-endian u32 `count` and `size` is
 *   answered with `count` bulk datagrams of `size` bytes (the receive side of an iperf-like run,
 *   paced by the receiver's requests).
 *
 * Frames the peer does not understand are counted and ignored.
 *
 * @packageDocumentation
 */

import { VirtioError } from '../../spec/index.js';
import type { NetBackend } from './backend.js';
import {
  ArpOp,
  buildArp,
  buildEth,
  buildIcmpEchoFrame,
  buildUdpFrame,
  EtherType,
  IcmpType,
  IpProto,
  internetChecksum,
  macEquals,
  parseArp,
  parseEth,
  parseIcmpEcho,
  parseIpv4,
  parseIpv4Address,
  parseMac,
  parseUdp,
} from './packet.js';

/** Options of a {@link HostPeer}. */
export interface HostPeerOptions {
  /** The peer's side of the segment. */
  backend: NetBackend;
  /** IPv4 address (dotted quad or number). */
  ip: string | number;
  /** MAC address. Default 02:00:00:00:00:fe. */
  mac?: Uint8Array | string;
  /** UDP port of the request/response server. Default {@link HOST_PEER_RR_PORT}. */
  rrPort?: number;
  /** Bytes of each response. Default 1024. */
  rrResponseSize?: number;
  /** UDP port of the bulk receiver. Default {@link HOST_PEER_SINK_PORT}. */
  sinkPort?: number;
  /** UDP port of the bulk source (answers requests with bulk datagrams). Default {@link HOST_PEER_SOURCE_PORT}. */
  sourcePort?: number;
}

/** Offsets in a request/response answer frame: IPv4 header, UDP header, UDP payload. */
const RR_IP = 14;
const RR_UDP = RR_IP + 20;
const RR_PAYLOAD = RR_UDP + 8;

/** Default port of the request/response server (netperf's data port). */
export const HOST_PEER_RR_PORT = 12866;
/** Default port of the bulk receiver (iperf's). */
export const HOST_PEER_SINK_PORT = 5001;
/** Default port of the bulk source. */
export const HOST_PEER_SOURCE_PORT = 5002;
/** Most datagrams one bulk source request may ask for. */
export const HOST_PEER_SOURCE_MAX_COUNT = 4096;
/** Sequence numbers behind the newest one whose duplicates the bulk receiver still recognizes. */
export const HOST_PEER_SINK_WINDOW = 1 << 16;

/** Counters of a {@link HostPeer}. */
export interface HostPeerCounters {
  /** Frames received. */
  frames: number;
  /** ARP requests for our address answered. */
  arpReplies: number;
  /** ICMP echo requests answered. */
  echoReplies: number;
  /** ICMP echo replies received (answers to {@link HostPeer.ping}). */
  echoRepliesReceived: number;
  /** Request/response transactions answered. */
  rrTransactions: number;
  /** Bulk datagrams received. */
  sinkDatagrams: number;
  /** Bulk payload bytes received. */
  sinkBytes: number;
  /** Bulk sequence numbers skipped (lost, or reordered until they arrive). */
  sinkLost: number;
  /** Bulk datagrams that arrived after a later one. */
  sinkOutOfOrder: number;
  /** Bulk datagrams whose sequence number was already seen. */
  sinkDuplicates: number;
  /** Bulk datagrams older than the duplicate window ({@link HOST_PEER_SINK_WINDOW}): not counted. */
  sinkTooOld: number;
  /** Bulk source requests answered. */
  sourceRequests: number;
  /** Frames sent. */
  sent: number;
  /** Frames not for us, or not understood, or malformed (bad checksum, short). */
  ignored: number;
}

/** A received ICMP echo reply. */
export interface EchoReply {
  /** Sender address. */
  readonly from: number;
  /** Identifier. */
  readonly id: number;
  /** Sequence number. */
  readonly seq: number;
  /** Data bytes. */
  readonly data: Uint8Array;
}

/** The host-side peer. */
export class HostPeer {
  /** MAC address. */
  readonly mac: Uint8Array;
  /** IPv4 address. */
  readonly ip: number;
  /** Port of the request/response server. */
  readonly rrPort: number;
  /** Bytes of each response. */
  readonly rrResponseSize: number;
  /** Port of the bulk receiver. */
  readonly sinkPort: number;
  /** Port of the bulk source. */
  readonly sourcePort: number;
  /** Counters. */
  readonly counters: HostPeerCounters = {
    frames: 0,
    arpReplies: 0,
    echoReplies: 0,
    echoRepliesReceived: 0,
    rrTransactions: 0,
    sinkDatagrams: 0,
    sinkBytes: 0,
    sinkLost: 0,
    sinkOutOfOrder: 0,
    sinkDuplicates: 0,
    sinkTooOld: 0,
    sourceRequests: 0,
    sent: 0,
    ignored: 0,
  };
  /** Echo replies received, oldest first (take them with {@link HostPeer.takeEchoReplies}). */
  private echoes: EchoReply[] = [];
  /** IPv4 address to MAC, learned from ARP and IPv4 frames. */
  private readonly arp = new Map<number, Uint8Array>();
  private readonly backend: NetBackend;
  /**
   * Next expected bulk sequence number, and which of the last {@link HOST_PEER_SINK_WINDOW}
   * sequence numbers were seen (one bit each, indexed by the low 16 bits): memory stays bounded
   * however long the run.
   */
  private sinkNext = 0;
  private readonly sinkSeen = new Uint8Array(HOST_PEER_SINK_WINDOW >>> 3);
  private ipId = 0;
  /** Next sequence number of the bulk source. */
  private sourceSeq = 0;
  /** The last request/response flow's answer frame and its checksum base (see rrAnswer). */
  private rrTemplate: { mac: Uint8Array; ip: number; port: number; frame: Uint8Array; base: number } | null =
    null;

  /** @throws VirtioError `INVALID_ARGUMENT` for a bad address, port or size */
  constructor(options: HostPeerOptions) {
    this.backend = options.backend;
    this.ip = typeof options.ip === 'number' ? options.ip >>> 0 : parseIpv4Address(options.ip);
    const mac = options.mac ?? '02:00:00:00:00:fe';
    this.mac = typeof mac === 'string' ? parseMac(mac) : mac.slice(0, 6);
    this.rrPort = checkPort(options.rrPort ?? HOST_PEER_RR_PORT);
    this.sinkPort = checkPort(options.sinkPort ?? HOST_PEER_SINK_PORT);
    this.sourcePort = checkPort(options.sourcePort ?? HOST_PEER_SOURCE_PORT);
    this.rrResponseSize = options.rrResponseSize ?? 1024;
    if (!Number.isInteger(this.rrResponseSize) || this.rrResponseSize < 8 || this.rrResponseSize > 1472) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `rr response size ${String(this.rrResponseSize)} not in 8..1472`,
      );
    }
    this.backend.onReceive((frame) => this.handle(frame));
  }

  /** The MAC learned for `ip`, or undefined. */
  macOf(ip: number): Uint8Array | undefined {
    return this.arp.get(ip >>> 0);
  }

  /** Handles one frame from the segment. */
  handle(frame: Uint8Array): void {
    this.counters.frames++;
    const eth = parseEth(frame);
    if (eth === null) {
      this.counters.ignored++;
      return;
    }
    const forUs = macEquals(eth.dst, this.mac) || eth.dst.every((b) => b === 0xff);
    if (!forUs) {
      this.counters.ignored++;
      return;
    }
    if (eth.type === EtherType.ARP) this.handleArp(eth.payload);
    else if (eth.type === EtherType.IPV4) this.handleIpv4(eth.src, eth.payload);
    else this.counters.ignored++;
  }

  private handleArp(payload: Uint8Array): void {
    const a = parseArp(payload);
    if (a === null) {
      this.counters.ignored++;
      return;
    }
    if (a.senderIp !== 0) this.arp.set(a.senderIp, a.senderMac);
    if (a.op !== ArpOp.REQUEST || a.targetIp !== this.ip) {
      if (a.op !== ArpOp.REPLY) this.counters.ignored++;
      return;
    }
    this.counters.arpReplies++;
    this.emit(
      buildEth(
        a.senderMac,
        this.mac,
        EtherType.ARP,
        buildArp({
          op: ArpOp.REPLY,
          senderMac: this.mac,
          senderIp: this.ip,
          targetMac: a.senderMac,
          targetIp: a.senderIp,
        }),
      ),
    );
  }

  private handleIpv4(srcMac: Uint8Array, payload: Uint8Array): void {
    const ip = parseIpv4(payload);
    if (ip === null || ip.dst !== this.ip) {
      this.counters.ignored++;
      return;
    }
    this.arp.set(ip.src, srcMac.slice());
    if (ip.proto === IpProto.ICMP) {
      const e = parseIcmpEcho(ip.payload);
      if (e === null) {
        this.counters.ignored++;
        return;
      }
      if (e.type === IcmpType.ECHO_REPLY) {
        this.counters.echoRepliesReceived++;
        this.echoes.push({ from: ip.src, id: e.id, seq: e.seq, data: e.data.slice() });
        return;
      }
      this.counters.echoReplies++;
      this.emit(
        buildIcmpEchoFrame(
          srcMac,
          this.mac,
          { src: this.ip, dst: ip.src, id: this.nextId() },
          { type: IcmpType.ECHO_REPLY, id: e.id, seq: e.seq, data: e.data },
        ),
      );
      return;
    }
    if (ip.proto !== IpProto.UDP) {
      this.counters.ignored++;
      return;
    }
    const u = parseUdp(ip.src, ip.dst, ip.payload);
    if (u === null) {
      this.counters.ignored++;
      return;
    }
    if (u.dstPort === this.rrPort) {
      this.counters.rrTransactions++;
      this.emit(this.rrAnswer(srcMac, ip.src, u.srcPort, u.data));
    } else if (u.dstPort === this.sinkPort && u.data.length >= 4) {
      this.sinkReceive(u.data);
    } else if (u.dstPort === this.sourcePort && u.data.length >= 8) {
      const d = new DataView(u.data.buffer, u.data.byteOffset, u.data.length);
      const count = d.getUint32(0);
      const size = d.getUint32(4);
      if (count > HOST_PEER_SOURCE_MAX_COUNT || size < 4 || size > 1472) {
        this.counters.ignored++;
        return;
      }
      this.counters.sourceRequests++;
      this.bulkSend(ip.src, u.srcPort, count, size, this.sourceSeq);
      this.sourceSeq = (this.sourceSeq + count) >>> 0;
    } else {
      this.counters.ignored++;
    }
  }

  /** Bulk receiver accounting (iperf UDP style). */
  private sinkReceive(data: Uint8Array): void {
    const c = this.counters;
    const seq = ((data[0] << 24) | (data[1] << 16) | (data[2] << 8) | data[3]) >>> 0;
    const seen = this.sinkSeen;
    if (seq < this.sinkNext) {
      if (this.sinkNext - seq > HOST_PEER_SINK_WINDOW) {
        c.sinkTooOld++;
        return;
      }
      if ((seen[(seq & 0xffff) >>> 3] & (1 << (seq & 7))) !== 0) {
        c.sinkDuplicates++;
        return;
      }
      c.sinkOutOfOrder++;
      c.sinkLost--;
    } else {
      // Sequence numbers skipped (sinkNext..seq-1) were not seen: clear their bits (at most the window).
      const gap = Math.min(seq - this.sinkNext, HOST_PEER_SINK_WINDOW);
      for (let i = 0; i < gap; i++) {
        const s = (this.sinkNext + i) & 0xffff;
        seen[s >>> 3] &= ~(1 << (s & 7));
      }
      c.sinkLost += seq - this.sinkNext;
      this.sinkNext = seq + 1;
    }
    seen[(seq & 0xffff) >>> 3] |= 1 << (seq & 7);
    c.sinkDatagrams++;
    c.sinkBytes += data.length;
  }

  /**
   * The answer to a request/response transaction: the flow's response frame (built once, then
   * kept) with the request's first 8 bytes echoed, a new IP id, the IP header checksum recomputed
   * and the UDP checksum updated for the 8 changed bytes (RFC 1624). Returns the kept frame
   * itself: a backend copies what it keeps past `send` (the {@link NetBackend} contract).
   */
  private rrAnswer(mac: Uint8Array, dstIp: number, dstPort: number, req: Uint8Array): Uint8Array {
    let t = this.rrTemplate;
    if (t === null || t.ip !== dstIp || t.port !== dstPort || !macEquals(t.mac, mac)) {
      const frame = buildUdpFrame(
        mac,
        this.mac,
        { src: this.ip, dst: dstIp, id: 0 },
        { srcPort: this.rrPort, dstPort, data: new Uint8Array(this.rrResponseSize) },
      );
      // One's complement sum of the pseudo-header and the segment with a zero payload and checksum
      // field: the checksum the frame carries, inverted back (0xffff stands for a sum of 0).
      const carried = (frame[RR_UDP + 6] << 8) | frame[RR_UDP + 7];
      t = { mac: mac.slice(0, 6), ip: dstIp, port: dstPort, frame, base: ~carried & 0xffff };
      this.rrTemplate = t;
    }
    const f = t.frame;
    let sum = t.base;
    for (let i = 0; i < 8; i += 2) {
      const hi = i < req.length ? req[i] : 0;
      const lo = i + 1 < req.length ? req[i + 1] : 0;
      f[RR_PAYLOAD + i] = hi;
      f[RR_PAYLOAD + i + 1] = lo;
      sum += (hi << 8) | lo;
    }
    while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
    const csum = ~sum & 0xffff;
    f[RR_UDP + 6] = csum === 0 ? 0xff : csum >>> 8;
    f[RR_UDP + 7] = csum === 0 ? 0xff : csum & 0xff;
    const id = this.nextId();
    f[RR_IP + 4] = id >>> 8;
    f[RR_IP + 5] = id & 0xff;
    f[RR_IP + 10] = 0;
    f[RR_IP + 11] = 0;
    const h = internetChecksum(f.subarray(RR_IP, RR_IP + 20));
    f[RR_IP + 10] = h >>> 8;
    f[RR_IP + 11] = h & 0xff;
    return f;
  }

  private nextId(): number {
    this.ipId = (this.ipId + 1) & 0xffff;
    return this.ipId;
  }

  private emit(frame: Uint8Array): void {
    this.counters.sent++;
    this.backend.send(frame);
  }

  /**
   * Sends a UDP datagram to `dstIp` (whose MAC must have been learned). Returns false when it is not.
   * @throws VirtioError `INVALID_ARGUMENT` for a bad port or a payload over 1472 bytes
   */
  sendUdp(dstIp: number, srcPort: number, dstPort: number, data: Uint8Array): boolean {
    checkPort(srcPort);
    checkPort(dstPort);
    if (data.length > 1472) throw new VirtioError('INVALID_ARGUMENT', `udp payload of ${data.length} bytes`);
    const mac = this.arp.get(dstIp >>> 0);
    if (mac === undefined) return false;
    this.emit(
      buildUdpFrame(
        mac,
        this.mac,
        { src: this.ip, dst: dstIp, id: this.nextId() },
        { srcPort, dstPort, data },
      ),
    );
    return true;
  }

  /**
   * Bulk sender: `count` datagrams of `size` payload bytes (at least 4: the big-endian sequence
   * number, from `firstSeq`) to `dstIp:dstPort`. Returns the number sent (0 when the MAC is unknown).
   */
  bulkSend(dstIp: number, dstPort: number, count: number, size: number, firstSeq = 0): number {
    if (!Number.isInteger(size) || size < 4 || size > 1472) {
      throw new VirtioError('INVALID_ARGUMENT', `bulk datagram size ${String(size)} not in 4..1472`);
    }
    const data = new Uint8Array(size);
    let sent = 0;
    for (let i = 0; i < count; i++) {
      const seq = (firstSeq + i) >>> 0;
      data[0] = seq >>> 24;
      data[1] = (seq >>> 16) & 0xff;
      data[2] = (seq >>> 8) & 0xff;
      data[3] = seq & 0xff;
      if (!this.sendUdp(dstIp, this.sinkPort, dstPort, data)) break;
      sent++;
    }
    return sent;
  }

  /** Sends an ICMP echo request to `dstIp` (whose MAC must be known); false when it is not. */
  ping(dstIp: number, id: number, seq: number, data: Uint8Array = new Uint8Array(56)): boolean {
    const mac = this.arp.get(dstIp >>> 0);
    if (mac === undefined) return false;
    this.emit(
      buildIcmpEchoFrame(
        mac,
        this.mac,
        { src: this.ip, dst: dstIp, id: this.nextId() },
        {
          type: IcmpType.ECHO_REQUEST,
          id,
          seq,
          data,
        },
      ),
    );
    return true;
  }

  /** Returns and forgets the echo replies received. */
  takeEchoReplies(): EchoReply[] {
    const out = this.echoes;
    this.echoes = [];
    return out;
  }

  /** Closes the backend. */
  close(): void {
    this.backend.close();
  }
}

function checkPort(port: number): number {
  if (!Number.isInteger(port) || port < 1 || port > 0xffff) {
    throw new VirtioError('INVALID_ARGUMENT', `udp port ${String(port)} not in 1..65535`);
  }
  return port;
}
