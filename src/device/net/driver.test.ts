import { describe, expect, it } from 'vitest';
import { Machine } from '../../platform/index.js';
import { MmioReg, NetCtrlAck, NetCtrlClass, NetCtrlMq, NetFeature, VirtioError } from '../../spec/index.js';
import { MemoryBlockBackend } from '../blk/backend.js';
import { BlkDevice } from '../blk/device.js';
import { createNetLink, type NetBackend, type NetLink } from './backend.js';
import { NetDevice, type NetDeviceOptions } from './device.js';
import { NetDriver, type NetDriverOptions } from './driver.js';
import { HostPeer } from './hostPeer.js';
import {
  ArpOp,
  buildArpRequestFrame,
  buildIcmpEchoFrame,
  buildUdpFrame,
  EtherType,
  IcmpType,
  IpProto,
  parseArp,
  parseEth,
  parseIcmpEcho,
  parseIpv4,
  parseIpv4Address,
  parseMac,
  parseUdp,
} from './packet.js';

function expectError(fn: () => unknown, code: string): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(VirtioError);
  expect((err as VirtioError).code).toBe(code);
}

/** One machine with one NIC and its probed driver. */
function nic(backend: NetBackend, device: Partial<NetDeviceOptions> = {}, driver: NetDriverOptions = {}) {
  const m = new Machine({ ramSize: 32 << 20 });
  const dev = new NetDevice({ backend, queueSize: 64, ...device });
  m.addDevice(dev, { name: 'net0' });
  const t = m.probe('net0');
  if (t === null) throw new Error('no device');
  const drv = NetDriver.probe(t, driver);
  return { m, dev, drv };
}

/** Runs the pending interrupt handlers, if any (the guest taking its interrupts). */
function service(m: Machine): void {
  try {
    m.cpu.halt();
  } catch (e) {
    if (!(e instanceof VirtioError && e.code === 'TIMEOUT')) throw e;
  }
}

/** An Ethernet frame from `src` to `dst` whose payload starts with a u32 sequence number. */
function seqFrame(dst: Uint8Array, src: Uint8Array, seq: number, len = 64): Uint8Array {
  const f = new Uint8Array(len);
  f.set(dst, 0);
  f.set(src, 6);
  f[12] = 0x88;
  f[13] = 0xb5;
  new DataView(f.buffer).setUint32(14, seq);
  for (let i = 18; i < len; i++) f[i] = (seq + i) & 0xff;
  return f;
}

function pair(device: Partial<NetDeviceOptions> = {}, driver: NetDriverOptions = {}) {
  const link = createNetLink();
  const a = nic(link.a, { mac: '52:54:00:00:00:0a', ...device }, driver);
  const b = nic(link.b, { mac: '52:54:00:00:00:0b', ...device }, driver);
  return { link, a, b };
}

/** Pumps the link and polls the drivers until nothing moves. */
function settle(link: NetLink, ...drivers: NetDriver[]): void {
  for (let i = 0; i < 1000; i++) {
    let moved = link.pump();
    for (const d of drivers) {
      const before = d.stats.rxFrames;
      d.poll();
      moved += d.stats.rxFrames - before;
    }
    if (moved === 0) return;
  }
}

/** The first `n` bytes of `data` as a big-endian u32. */
function u32(data: Uint8Array | undefined, at = 0): number {
  if (data === undefined) throw new Error('no data');
  return new DataView(data.buffer, data.byteOffset, data.length).getUint32(at);
}

describe('NetDriver probe', () => {
  it('negotiates the features and reads MAC, MTU, pairs and status', () => {
    const link = createNetLink();
    const { dev, drv } = nic(link.a, { mac: '02:aa:bb:cc:dd:ee', mtu: 9000, queuePairs: 2 });
    for (const f of [
      NetFeature.MAC,
      NetFeature.MTU,
      NetFeature.STATUS,
      NetFeature.MRG_RXBUF,
      NetFeature.CTRL_VQ,
      NetFeature.MQ,
    ]) {
      expect(drv.features.has(f)).toBe(true);
    }
    expect(drv.mac).toEqual(parseMac('02:aa:bb:cc:dd:ee'));
    expect(drv.mtu).toBe(9000);
    expect(drv.maxFrame).toBe(9018);
    expect(drv.hdrLen).toBe(12);
    expect(drv.maxQueuePairs).toBe(2);
    expect(drv.queuePairs).toBe(2);
    expect(drv.queuePairsInUse).toBe(1);
    expect(drv.linkUp).toBe(true);
    expect(dev.isActivated).toBe(true);
    expect(dev.controlQueueIndex).toBe(4);
  });

  it('generates a local MAC without VIRTIO_NET_F_MAC and assumes the link up without STATUS', () => {
    const link = createNetLink();
    const { drv } = nic(link.a, { status: false, linkUp: false }, { without: [NetFeature.MAC] });
    expect(drv.mac[0] & 0x03).toBe(0x02);
    expect(drv.linkUp).toBe(true);
  });

  it('rejects a device that is not a network device and bad options', () => {
    const m = new Machine({ ramSize: 8 << 20 });
    m.addDevice(new BlkDevice({ backend: new MemoryBlockBackend(4096) }), { name: 'blk0' });
    expectError(() => NetDriver.probe(m.probe('blk0') as never), 'DEVICE_REJECTED');
    const link = createNetLink();
    const m2 = new Machine({ ramSize: 8 << 20 });
    const dev = new NetDevice({ backend: link.a, queueSize: 16 });
    m2.addDevice(dev, { name: 'net0' });
    const t = m2.probe('net0');
    expectError(() => NetDriver.probe(t as never, { queuePairs: 0 }), 'INVALID_ARGUMENT');
    expectError(() => NetDriver.probe(t as never, { maxQueuePairs: 0 }), 'INVALID_ARGUMENT');
    expectError(() => NetDriver.probe(t as never, { rxBufferSize: 8 }), 'INVALID_ARGUMENT');
    // The device stays usable after a refused probe.
    const drv = NetDriver.probe(t as never);
    expect(drv.linkUp).toBe(true);
    drv.remove();
    expectError(() => drv.send(new Uint8Array(60)), 'INVALID_STATE');
    drv.remove();
  });
});

describe('NetDriver traffic between two machines over an in-process link', () => {
  it('exchanges frames both ways, counted on both sides', () => {
    const { link, a, b } = pair();
    const sent: Uint8Array[] = [];
    for (let i = 0; i < 200; i++) {
      const f = seqFrame(b.drv.mac, a.drv.mac, i, 60 + (i % 1400));
      sent.push(f);
      expect(a.drv.send(f)).toBe(true);
      if (i % 16 === 15) settle(link, a.drv, b.drv);
    }
    settle(link, a.drv, b.drv);
    expect(b.drv.receive()).toEqual(sent);
    expect(b.drv.send(seqFrame(a.drv.mac, b.drv.mac, 7))).toBe(true);
    settle(link, a.drv, b.drv);
    expect(a.drv.receive()).toEqual([seqFrame(a.drv.mac, b.drv.mac, 7)]);
    const bytes = sent.reduce((n, f) => n + f.length, 0);
    expect(a.dev.counters.txFrames).toBe(200);
    expect(a.dev.counters.txBytes).toBe(bytes);
    expect(b.dev.counters.rxFrames).toBe(200);
    expect(b.dev.counters.rxBytes).toBe(bytes);
    expect(b.drv.stats.rxFrames).toBe(200);
    expect(b.drv.stats.rxBytes).toBe(bytes);
    expect(a.drv.stats.txFrames).toBe(200);
    expect(b.dev.counters.rxDropNoBuffer).toBe(0);
  });

  it('receives frames spanning several small merged buffers, and without MRG_RXBUF', () => {
    const small = pair({}, { rxBufferSize: 128 });
    const big = seqFrame(small.b.drv.mac, small.a.drv.mac, 1, 1500);
    small.a.drv.send(big);
    settle(small.link, small.a.drv, small.b.drv);
    expect(small.b.drv.receive()).toEqual([big]);
    expect(small.b.dev.counters.rxFrames).toBe(1);

    const plain = pair({}, { without: [NetFeature.MRG_RXBUF] });
    expect(plain.b.drv.rxBufferSize).toBe(12 + 1518);
    const f = seqFrame(plain.b.drv.mac, plain.a.drv.mac, 2, 1518);
    plain.a.drv.send(f);
    settle(plain.link, plain.a.drv, plain.b.drv);
    expect(plain.b.drv.receive()).toEqual([f]);
  });

  it('refuses frames of bad length and pairs not in use; reports a full ring', () => {
    const { a } = pair({ queueSize: 4 });
    expectError(() => a.drv.send(new Uint8Array(13)), 'INVALID_ARGUMENT');
    expectError(() => a.drv.send(new Uint8Array(1519)), 'INVALID_ARGUMENT');
    expectError(() => a.drv.send(new Uint8Array(60), 1), 'INVALID_ARGUMENT');
    expectError(() => a.drv.send(new Uint8Array(60), -1), 'INVALID_ARGUMENT');
    // Queue frames without kicking: the ring of 4 fills up.
    for (let i = 0; i < 4; i++) expect(a.drv.send(new Uint8Array(60), 0, false)).toBe(true);
    expect(a.drv.send(new Uint8Array(60), 0, false)).toBe(false);
    expect(a.drv.stats.txRingFull).toBe(1);
    a.drv.flush();
    expect(a.dev.counters.txFrames).toBe(4);
    expect(a.drv.send(new Uint8Array(60))).toBe(true);
  });

  it('waits, then drops and counts, when the receiver stops posting buffers; never loses count', () => {
    const { link, a, b } = pair({ rxBacklog: 32, queueSize: 16 });
    const n = 200;
    for (let i = 0; i < n; i++) {
      a.drv.send(seqFrame(b.drv.mac, a.drv.mac, i));
      a.drv.poll();
      link.pump();
    }
    // b never polled: 16 buffers filled, 32 frames wait, the rest were dropped.
    expect(b.dev.counters.rxFrames).toBe(16);
    expect(b.dev.rxWaiting).toBe(32);
    expect(b.dev.counters.rxDropNoBuffer).toBe(n - 48);
    settle(link, a.drv, b.drv);
    const got = b.drv.receive();
    expect(got.length).toBe(48);
    const seqs = got.map((f) => new DataView(f.buffer).getUint32(14));
    expect(seqs).toEqual([...Array(48).keys()]);
    expect(b.dev.counters.rxFrames + b.dev.counters.rxDropNoBuffer).toBe(n);
  });

  it('follows link down and up during traffic through the configuration interrupt', () => {
    const { link, a, b } = pair();
    const changes: boolean[] = [];
    a.drv.onLinkChange((up) => changes.push(up));
    let seq = 0;
    const burst = (k: number): number => {
      let ok = 0;
      for (let i = 0; i < k; i++) if (a.drv.send(seqFrame(b.drv.mac, a.drv.mac, seq++))) ok++;
      settle(link, a.drv, b.drv);
      return ok;
    };
    expect(burst(10)).toBe(10);
    a.dev.setLink(false);
    // Sent before the guest took the interrupt: the device drops them.
    expect(burst(5)).toBe(5);
    expect(a.dev.counters.txDropLinkDown).toBe(5);
    service(a.m);
    expect(a.drv.linkUp).toBe(false);
    expect(changes).toEqual([false]);
    expect(a.drv.stats.configChanges).toBe(1);
    // Now the driver knows: frames are refused at the driver.
    expect(burst(5)).toBe(0);
    expect(a.drv.stats.txLinkDown).toBe(5);
    // Frames towards the down link are dropped by the device.
    b.drv.send(seqFrame(a.drv.mac, b.drv.mac, 99));
    settle(link, a.drv, b.drv);
    expect(a.dev.counters.rxDropLinkDown).toBe(1);
    a.dev.setLink(true);
    service(a.m);
    expect(a.drv.linkUp).toBe(true);
    expect(changes).toEqual([false, true]);
    expect(burst(10)).toBe(10);
    const got = b.drv.receive().map((f) => new DataView(f.buffer).getUint32(14));
    expect(got).toEqual([...Array(10).keys(), ...Array.from({ length: 10 }, (_, i) => 20 + i)]);
    expect(a.dev.counters.txFrames + a.dev.counters.txDropLinkDown).toBe(a.drv.stats.txFrames);
  });
});

describe('NetDriver multiqueue', () => {
  function udpFrame(dst: Uint8Array, src: Uint8Array, port: number, seq: number): Uint8Array {
    const data = new Uint8Array(32);
    new DataView(data.buffer).setUint32(0, seq);
    return buildUdpFrame(dst, src, { src: 0x0a000001, dst: 0x0a000002 }, { srcPort: port, dstPort: 9, data });
  }

  it('selects the pairs through the control queue and spreads traffic over every queue', () => {
    const { link, a, b } = pair({ queuePairs: 4 }, { queuePairs: 4 });
    expect(a.dev.queuePairsInUse).toBe(4);
    expect(a.drv.queuePairsInUse).toBe(4);
    let seq = 0;
    for (let round = 0; round < 16; round++) {
      for (let p = 0; p < 4; p++) a.drv.send(udpFrame(b.drv.mac, a.drv.mac, 1000 + round * 4 + p, seq++), p);
      settle(link, a.drv, b.drv);
    }
    expect(a.dev.counters.txFramesPerPair).toEqual([16, 16, 16, 16]);
    expect(a.drv.stats.txPerPair).toEqual([16, 16, 16, 16]);
    const perPair = b.dev.counters.rxFramesPerPair;
    expect(perPair.reduce((x, y) => x + y)).toBe(64);
    for (const n of perPair) expect(n).toBeGreaterThan(0);
    expect(b.drv.stats.rxPerPair).toEqual(perPair);
    const got = b.drv
      .receive()
      .map((f) => new DataView(f.buffer).getUint32(14 + 20 + 8))
      .sort((x, y) => x - y);
    expect(got).toEqual([...Array(64).keys()]);
  });

  it('rejects pair counts out of range before and at the device, and unknown commands', () => {
    const { a } = pair({ queuePairs: 3 }, { queuePairs: 2 });
    expect(a.dev.queuePairsInUse).toBe(2);
    expectError(() => a.drv.setQueuePairs(0), 'INVALID_ARGUMENT');
    expectError(() => a.drv.setQueuePairs(4), 'INVALID_ARGUMENT');
    expect(a.drv.command(NetCtrlClass.MQ, NetCtrlMq.VQ_PAIRS_SET, Uint8Array.of(0, 0))).toBe(NetCtrlAck.ERR);
    expect(a.drv.command(NetCtrlClass.MQ, NetCtrlMq.VQ_PAIRS_SET, Uint8Array.of(4, 0))).toBe(NetCtrlAck.ERR);
    expect(a.drv.command(NetCtrlClass.VLAN, 0, Uint8Array.of(1, 0))).toBe(NetCtrlAck.ERR);
    expect(a.drv.command(9, 9)).toBe(NetCtrlAck.ERR);
    expectError(() => a.drv.command(NetCtrlClass.MQ, 0, new Uint8Array(61)), 'INVALID_ARGUMENT');
    a.drv.setQueuePairs(3);
    expect(a.dev.queuePairsInUse).toBe(3);
    a.drv.setQueuePairs(1);
    expect(a.dev.queuePairsInUse).toBe(1);
    expect(a.dev.counters.ctrlErrors).toBe(4);
    // Without MQ there is nothing to select.
    const single = pair();
    expectError(() => single.a.drv.setQueuePairs(1), 'INVALID_STATE');
    expect(single.a.drv.command(NetCtrlClass.MQ, NetCtrlMq.VQ_PAIRS_SET, Uint8Array.of(1, 0))).toBe(
      NetCtrlAck.ERR,
    );
  });

  it('sets up only the pairs asked for and still finds the control queue at 2N', () => {
    const link = createNetLink();
    const { dev, drv } = nic(link.a, { queuePairs: 4 }, { maxQueuePairs: 2, queuePairs: 2 });
    expect(drv.queuePairs).toBe(2);
    expect(dev.controlQueueIndex).toBe(8);
    expect(dev.queuePairsInUse).toBe(2);
  });
});

describe('NetDriver with the host peer', () => {
  const guestIp = parseIpv4Address('10.0.2.15');
  const peerIp = parseIpv4Address('10.0.2.2');

  function withPeer() {
    const link = createNetLink();
    const guest = nic(link.a);
    const peer = new HostPeer({ backend: link.b, ip: '10.0.2.2', rrResponseSize: 1024 });
    const exchange = (frame: Uint8Array): Uint8Array[] => {
      guest.drv.send(frame);
      settle(link, guest.drv);
      return guest.drv.receive();
    };
    return { link, guest, peer, exchange };
  }

  it('resolves the peer with ARP and pings it', () => {
    const { link, guest, peer, exchange } = withPeer();
    const mac = guest.drv.mac;
    const [arpFrame] = exchange(buildArpRequestFrame(mac, guestIp, peerIp));
    const eth = parseEth(arpFrame);
    expect(eth?.type).toBe(EtherType.ARP);
    const arp = parseArp(eth?.payload as Uint8Array);
    expect(arp?.op).toBe(ArpOp.REPLY);
    expect(arp?.senderIp).toBe(peerIp);
    expect(arp?.senderMac).toEqual(peer.mac);
    expect(arp?.targetMac).toEqual(mac);
    expect(peer.macOf(guestIp)).toEqual(mac);
    // An ARP request for another address is not answered.
    expect(exchange(buildArpRequestFrame(mac, guestIp, peerIp + 1))).toEqual([]);

    for (let seq = 1; seq <= 5; seq++) {
      const data = Uint8Array.from({ length: 56 }, (_, i) => i + seq);
      const [reply] = exchange(
        buildIcmpEchoFrame(
          peer.mac,
          mac,
          { src: guestIp, dst: peerIp },
          { type: IcmpType.ECHO_REQUEST, id: 0x1234, seq, data },
        ),
      );
      const ip = parseIpv4((parseEth(reply) as { payload: Uint8Array }).payload);
      expect(ip?.proto).toBe(IpProto.ICMP);
      expect(ip?.src).toBe(peerIp);
      expect(ip?.dst).toBe(guestIp);
      // parseIcmpEcho checks the checksum.
      const echo = parseIcmpEcho(ip?.payload as Uint8Array);
      expect(echo).toEqual({ type: IcmpType.ECHO_REPLY, id: 0x1234, seq, data });
    }
    expect(peer.counters.echoReplies).toBe(5);
    expect(peer.counters.arpReplies).toBe(1);

    // The peer pings the guest, which answers by hand.
    expect(peer.ping(guestIp, 7, 1, Uint8Array.of(1, 2, 3))).toBe(true);
    settle(link, guest.drv);
    const [request] = guest.drv.receive();
    const rip = parseIpv4((parseEth(request) as { payload: Uint8Array }).payload);
    const rq = parseIcmpEcho(rip?.payload as Uint8Array);
    expect(rq).toEqual({ type: IcmpType.ECHO_REQUEST, id: 7, seq: 1, data: Uint8Array.of(1, 2, 3) });
    guest.drv.send(
      buildIcmpEchoFrame(
        peer.mac,
        mac,
        { src: guestIp, dst: peerIp },
        { type: IcmpType.ECHO_REPLY, id: 7, seq: 1, data: Uint8Array.of(1, 2, 3) },
      ),
    );
    settle(link, guest.drv);
    expect(peer.takeEchoReplies()).toEqual([{ from: guestIp, id: 7, seq: 1, data: Uint8Array.of(1, 2, 3) }]);
    expect(peer.counters.echoRepliesReceived).toBe(1);
    expect(peer.ping(parseIpv4Address('10.9.9.9'), 7, 1)).toBe(false);
  });

  it('answers fixed-size request/response transactions and runs bulk transfers both ways', () => {
    const { link, guest, peer, exchange } = withPeer();
    const mac = guest.drv.mac;
    exchange(buildArpRequestFrame(mac, guestIp, peerIp));
    for (let txn = 0; txn < 50; txn++) {
      const req = new Uint8Array(32);
      new DataView(req.buffer).setUint32(0, txn);
      const [resp] = exchange(
        buildUdpFrame(
          peer.mac,
          mac,
          { src: guestIp, dst: peerIp },
          { srcPort: 40000, dstPort: peer.rrPort, data: req },
        ),
      );
      const ip = parseIpv4((parseEth(resp) as { payload: Uint8Array }).payload);
      const udp = parseUdp(ip?.src as number, ip?.dst as number, ip?.payload as Uint8Array);
      expect(udp?.dstPort).toBe(40000);
      expect(udp?.data.length).toBe(1024);
      expect(u32(udp?.data)).toBe(txn);
    }
    expect(peer.counters.rrTransactions).toBe(50);

    // Guest -> peer bulk: the sink counts everything, in order.
    for (let s = 0; s < 300; s++) {
      const data = new Uint8Array(1400);
      new DataView(data.buffer).setUint32(0, s);
      guest.drv.send(
        buildUdpFrame(
          peer.mac,
          mac,
          { src: guestIp, dst: peerIp },
          { srcPort: 40001, dstPort: peer.sinkPort, data },
        ),
      );
      if (s % 32 === 31) settle(link, guest.drv);
    }
    settle(link, guest.drv);
    expect(peer.counters.sinkDatagrams).toBe(300);
    expect(peer.counters.sinkBytes).toBe(300 * 1400);
    expect(peer.counters.sinkLost).toBe(0);
    expect(peer.counters.sinkDuplicates).toBe(0);

    // Peer -> guest bulk, paced by the guest's polling.
    let received = 0;
    for (let k = 0; k < 10; k++) {
      expect(peer.bulkSend(guestIp, 6000, 30, 1000, k * 30)).toBe(30);
      settle(link, guest.drv);
      for (const f of guest.drv.receive()) {
        const ip = parseIpv4((parseEth(f) as { payload: Uint8Array }).payload);
        const u = parseUdp(ip?.src as number, ip?.dst as number, ip?.payload as Uint8Array);
        expect(u?.dstPort).toBe(6000);
        expect(u32(u?.data)).toBe(received);
        received++;
      }
    }
    expect(received).toBe(300);
    expect(guest.dev.counters.rxDropNoBuffer).toBe(0);
  });

  it('counts what it does not understand', () => {
    const { peer } = withPeer();
    peer.handle(new Uint8Array(10));
    peer.handle(seqFrame(peer.mac, parseMac('02:00:00:00:00:01'), 1));
    peer.handle(seqFrame(parseMac('02:00:00:00:00:09'), parseMac('02:00:00:00:00:01'), 1));
    const bad = buildUdpFrame(
      peer.mac,
      parseMac('02:00:00:00:00:01'),
      { src: guestIp, dst: peerIp },
      { srcPort: 1, dstPort: 2, data: new Uint8Array(4) },
    );
    peer.handle(bad);
    bad[14 + 20 + 8] ^= 0xff;
    peer.handle(bad);
    expect(peer.counters.ignored).toBe(5);
    expect(peer.sendUdp(parseIpv4Address('1.2.3.4'), 1, 2, new Uint8Array(1))).toBe(false);
    expectError(() => peer.sendUdp(guestIp, 0, 2, new Uint8Array(1)), 'INVALID_ARGUMENT');
    expectError(
      () => new HostPeer({ backend: createNetLink().a, ip: '10.0.0.1', rrResponseSize: 4 }),
      'INVALID_ARGUMENT',
    );
    expectError(() => new HostPeer({ backend: createNetLink().a, ip: '10.0.0.300' }), 'INVALID_ARGUMENT');
  });
});

describe('hostile guest: rx queue disabled behind the driver', () => {
  it('a frame arriving after QueueReady=0 on the rx queue is dropped, not an exception', () => {
    const { link, a, b } = pair();
    // The guest turns rx queue 0 of machine b off behind its driver's back (legal register write).
    b.m.bus.write(b.m.slot('net0').base + MmioReg.QueueSel, 4, 0);
    b.m.bus.write(b.m.slot('net0').base + MmioReg.QueueReady, 4, 0);
    a.drv.send(seqFrame(new Uint8Array([0x52, 0x54, 0, 0, 0, 0x0b]), new Uint8Array(6), 1));
    expect(() => settle(link, a.drv)).not.toThrow();
    expect(b.drv.stats.rxFrames).toBe(0);
  });
});
