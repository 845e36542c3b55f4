import { describe, expect, it } from 'vitest';
import { createNetLink } from './backend.js';
import { HOST_PEER_SINK_WINDOW, HOST_PEER_SOURCE_MAX_COUNT, HostPeer } from './hostPeer.js';
import { buildUdpFrame, parseEth, parseIpv4, parseIpv4Address, parseMac, parseUdp } from './packet.js';

const GUEST_MAC = parseMac('52:54:00:00:00:01');
const GUEST_IP = parseIpv4Address('10.0.2.15');
const PEER_IP = '10.0.2.2';

function setup() {
  const link = createNetLink();
  const peer = new HostPeer({ backend: link.b, ip: PEER_IP });
  const got: Uint8Array[] = [];
  link.a.onReceive((f) => got.push(f.slice()));
  const udp = (dstPort: number, data: Uint8Array): void => {
    link.a.send(
      buildUdpFrame(
        peer.mac,
        GUEST_MAC,
        { src: GUEST_IP, dst: peer.ip, id: 1 },
        { srcPort: 40000, dstPort, data },
      ),
    );
    link.pump();
    link.pump();
  };
  return { link, peer, got, udp };
}

function u32s(...xs: number[]): Uint8Array {
  const b = new Uint8Array(4 * xs.length);
  const d = new DataView(b.buffer);
  for (let i = 0; i < xs.length; i++) d.setUint32(4 * i, xs[i]);
  return b;
}

describe('HostPeer bulk source', () => {
  it('answers a request with count datagrams of size bytes, sequence numbers continuing across requests', () => {
    const { peer, got, udp } = setup();
    udp(peer.sourcePort, u32s(5, 1000));
    udp(peer.sourcePort, u32s(3, 4));
    expect(got).toHaveLength(8);
    const seqs = got.map((f) => {
      const eth = parseEth(f);
      const ip = eth === null ? null : parseIpv4(eth.payload);
      const u = ip === null ? null : parseUdp(ip.src, ip.dst, ip.payload);
      if (u === null) throw new Error('not udp');
      expect(u.dstPort).toBe(40000);
      return { seq: new DataView(u.data.buffer, u.data.byteOffset).getUint32(0), len: u.data.length };
    });
    expect(seqs.map((s) => s.seq)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(seqs.map((s) => s.len)).toEqual([1000, 1000, 1000, 1000, 1000, 4, 4, 4]);
    expect(peer.counters.sourceRequests).toBe(2);
  });

  it('ignores (and counts) requests too short, too many, or of a size outside 4..1472', () => {
    const { peer, got, udp } = setup();
    const before = peer.counters.ignored;
    udp(peer.sourcePort, u32s(5));
    udp(peer.sourcePort, u32s(HOST_PEER_SOURCE_MAX_COUNT + 1, 100));
    udp(peer.sourcePort, u32s(1, 3));
    udp(peer.sourcePort, u32s(1, 1473));
    expect(got).toHaveLength(0);
    expect(peer.counters.sourceRequests).toBe(0);
    expect(peer.counters.ignored - before).toBe(4);
  });
});

describe('HostPeer bulk receiver: bounded duplicate window', () => {
  it('counts in-order, lost, late, duplicate and too-old datagrams exactly', () => {
    const { peer, udp } = setup();
    const send = (seq: number): void => udp(peer.sinkPort, u32s(seq, 0xdeadbeef));
    send(0);
    send(1);
    send(4); // 2 and 3 skipped
    send(2); // late
    send(2); // duplicate
    send(4); // duplicate
    const c = peer.counters;
    expect(c.sinkDatagrams).toBe(4);
    expect(c.sinkLost).toBe(1);
    expect(c.sinkOutOfOrder).toBe(1);
    expect(c.sinkDuplicates).toBe(2);
    // Far ahead: everything behind the window is too old to judge, and not counted as received.
    send(4 + HOST_PEER_SINK_WINDOW + 10);
    send(3);
    expect(c.sinkTooOld).toBe(1);
    expect(c.sinkDatagrams).toBe(5);
    // Within the window after a long jump: skipped numbers read as unseen, not as duplicates.
    send(4 + HOST_PEER_SINK_WINDOW + 5);
    expect(c.sinkDuplicates).toBe(2);
    expect(c.sinkOutOfOrder).toBe(2);
  });
});

describe('HostPeer request/response answers', () => {
  it('echo the first 8 request bytes with valid IPv4 and UDP checksums, for any id and across flows', () => {
    const { peer, got, link } = setup();
    let x = 12345;
    const rand = (): number => {
      x = (x * 1103515245 + 12345) >>> 0;
      return x >>> 24;
    };
    for (let i = 0; i < 500; i++) {
      const req = new Uint8Array(i % 3 === 0 ? 5 : 32).map(() => rand());
      const port = 40000 + (i % 4);
      link.a.send(
        buildUdpFrame(
          peer.mac,
          GUEST_MAC,
          { src: GUEST_IP, dst: peer.ip, id: i },
          { srcPort: port, dstPort: peer.rrPort, data: req },
        ),
      );
      link.pump();
      link.pump();
      const f = got.pop();
      if (f === undefined) throw new Error('no answer');
      const eth = parseEth(f);
      const ip = eth === null ? null : parseIpv4(eth.payload);
      // parseIpv4 and parseUdp return null for a wrong checksum.
      expect(ip).not.toBeNull();
      const u = ip === null ? null : parseUdp(ip.src, ip.dst, ip.payload);
      expect(u).not.toBeNull();
      if (u === null) return;
      expect(u.dstPort).toBe(port);
      expect(u.data.length).toBe(peer.rrResponseSize);
      const echo = new Uint8Array(8);
      echo.set(req.subarray(0, 8));
      expect(u.data.subarray(0, 8)).toEqual(echo);
      expect(u.data.subarray(8).every((b) => b === 0)).toBe(true);
    }
    expect(peer.counters.rrTransactions).toBe(500);
  });
});
