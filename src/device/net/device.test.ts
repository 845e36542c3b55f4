import { describe, expect, it } from 'vitest';
import {
  DeviceId,
  ETH_HLEN,
  FeatureBit,
  NET_HDR_SIZE,
  NET_HDR_SIZE_LEGACY,
  NetConfig,
  NetCtrlAck,
  NetCtrlClass,
  NetCtrlMq,
  NetFeature,
  NetGso,
  NetHdr,
  NetHdrFlag,
  NetStatus,
  VirtioError,
} from '../../spec/index.js';
import { activateWithFakeContext, type FakeContext } from '../../testing/index.js';
import { Features } from '../features.js';
import { createNetLink, type NetBackend } from './backend.js';
import { NetDevice, type NetDeviceOptions } from './device.js';

/** A backend that records what the device sends. */
class RecordingBackend implements NetBackend {
  readonly sent: Uint8Array[] = [];
  handler: ((f: Uint8Array) => void) | null = null;
  closed = false;
  send(frame: Uint8Array): void {
    this.sent.push(frame.slice());
  }
  onReceive(handler: (f: Uint8Array) => void): void {
    this.handler = handler;
  }
  close(): void {
    this.closed = true;
  }
}

function frame(len: number, seed = 1): Uint8Array {
  const f = Uint8Array.from({ length: len }, (_, i) => (i * 7 + seed) & 0xff);
  return f;
}

function negotiated(dev: NetDevice, without: number[] = []): Features {
  const f = dev.features.clone().set(FeatureBit.VERSION_1);
  for (const b of without) f.clear(b);
  return f;
}

function setup(options: Partial<NetDeviceOptions> = {}, without: number[] = [], queueSize = 16) {
  const backend = new RecordingBackend();
  const dev = new NetDevice({ backend, queueSize, ...options });
  const configChanges: number[] = [];
  dev.attach({ configChanged: () => configChanges.push(1) });
  const ctx = activateWithFakeContext(dev, { features: negotiated(dev, without), memSize: 4 << 20 });
  return { backend, dev, ctx, configChanges };
}

/** Posts `count` receive buffers of `size` bytes on queue `qi`; tokens are the addresses. */
function postRx(ctx: FakeContext, qi: number, size: number, count: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    const gpa = ctx.alloc(size, 0xee);
    expect(ctx.drivers[qi].add([], [{ addr: gpa, len: size }], gpa)).toBe(true);
    out.push(gpa);
  }
  return out;
}

/** Queues one tx chain (header then frame, in `split` readable pieces) on queue `qi` and kicks. */
function transmit(
  ctx: FakeContext,
  dev: NetDevice,
  qi: number,
  payload: Uint8Array,
  hdr: Uint8Array = new Uint8Array(NET_HDR_SIZE),
  split = false,
): void {
  const all = new Uint8Array(hdr.length + payload.length);
  all.set(hdr);
  all.set(payload, hdr.length);
  const gpa = ctx.allocBytes(all);
  const segs = split
    ? [
        { addr: gpa, len: 5 },
        { addr: gpa + 5, len: all.length - 5 },
      ]
    : [{ addr: gpa, len: all.length }];
  expect(ctx.drivers[qi].add(segs, [], gpa)).toBe(true);
  dev.notify(qi);
}

/** Sends a control command on queue `qi`; returns the ack byte and the used length. */
function control(ctx: FakeContext, dev: NetDevice, qi: number, bytes: number[], ackLen = 1) {
  const cmd = ctx.allocBytes(Uint8Array.from(bytes));
  const ack = ctx.alloc(Math.max(ackLen, 1), 0x55);
  const inSegs = ackLen > 0 ? [{ addr: ack, len: ackLen }] : [];
  expect(ctx.drivers[qi].add([{ addr: cmd, len: bytes.length }], inSegs, 1)).toBe(true);
  dev.notify(qi);
  const [u] = ctx.harvest(qi);
  return { ack: ctx.mem.read8(ack + Math.max(ackLen, 1) - 1), len: u.len };
}

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

describe('NetDevice construction and configuration space', () => {
  it('offers MAC, MTU, STATUS, MRG_RXBUF, CTRL_VQ and MQ (no offloads) and lays out the queues', () => {
    const dev = new NetDevice({ backend: new RecordingBackend(), queuePairs: 3, queueSize: 64 });
    expect(dev.deviceId).toBe(DeviceId.NET);
    expect(dev.features.bits()).toEqual(
      [
        NetFeature.MTU,
        NetFeature.MAC,
        NetFeature.MRG_RXBUF,
        NetFeature.STATUS,
        NetFeature.CTRL_VQ,
        NetFeature.MQ,
      ].sort((a, b) => a - b),
    );
    for (const off of [NetFeature.CSUM, NetFeature.GUEST_CSUM, NetFeature.HOST_TSO4, NetFeature.GUEST_TSO4]) {
      expect(dev.features.has(off)).toBe(false);
    }
    // rx0 tx0 rx1 tx1 rx2 tx2 ctrl
    expect(dev.queueMaxSizes).toEqual([64, 64, 64, 64, 64, 64, 64]);
    expect(dev.configSize).toBe(NetConfig.size);
    const single = new NetDevice({
      backend: new RecordingBackend(),
      ctrlVq: false,
      status: false,
      mrgRxbuf: false,
    });
    expect(single.queueMaxSizes.length).toBe(2);
    expect(single.features.bits()).toEqual([NetFeature.MTU, NetFeature.MAC]);
  });

  it('reads every configuration field at every width, little-endian, and refuses every write', () => {
    const dev = new NetDevice({
      backend: new RecordingBackend(),
      mac: '02:11:22:33:44:55',
      queuePairs: 0x1234 & 0xff,
      mtu: 0x0abc,
      speed: 0x01020304,
    });
    const bytes = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    const expected = new Uint8Array(NetConfig.size);
    expected.set(bytes, NetConfig.mac);
    expected[NetConfig.status] = NetStatus.LINK_UP;
    expected[NetConfig.maxVirtqueuePairs] = 0x34;
    expected[NetConfig.mtu] = 0xbc;
    expected[NetConfig.mtu + 1] = 0x0a;
    expected.set([0x04, 0x03, 0x02, 0x01], NetConfig.speed);
    expected[NetConfig.duplex] = 1;
    const view = new DataView(expected.buffer);
    for (let off = 0; off < NetConfig.size; off++) {
      expect(dev.readConfig(off, 1)).toBe(expected[off]);
      if (off + 2 <= NetConfig.size) expect(dev.readConfig(off, 2)).toBe(view.getUint16(off, true));
      if (off + 4 <= NetConfig.size) expect(dev.readConfig(off, 4)).toBe(view.getUint32(off, true));
      for (const w of [1, 2, 4] as const) expect(dev.writeConfig(off, w, 0)).toBe(false);
    }
    // Outside the structure reads 0.
    expect(dev.readConfig(NetConfig.size, 1)).toBe(0);
    expect(dev.readConfig(NetConfig.size - 2, 4)).toBe(0);
    expect(dev.readConfig(-1, 1)).toBe(0);
    // Nothing changed by the refused writes.
    expect(dev.readConfig(NetConfig.mac, 4)).toBe(0x33221102);
    expect(dev.features.has(NetFeature.SPEED_DUPLEX)).toBe(true);
    // Without a speed: unknown speed and duplex.
    const plain = new NetDevice({ backend: new RecordingBackend() });
    expect(plain.readConfig(NetConfig.speed, 4)).toBe(0xffff_ffff);
    expect(plain.readConfig(NetConfig.duplex, 1)).toBe(0xff);
    expect(plain.readConfig(NetConfig.mac, 2)).toBe(0x5452);
    expect(plain.readConfig(NetConfig.mtu, 2)).toBe(1500);
    expect(plain.readConfig(NetConfig.maxVirtqueuePairs, 2)).toBe(1);
  });

  it('rejects every invalid option', () => {
    const backend = new RecordingBackend();
    expectError(() => new NetDevice({ backend, queuePairs: 0 }), 'INVALID_ARGUMENT');
    expectError(() => new NetDevice({ backend, queuePairs: 0x8001 }), 'INVALID_ARGUMENT');
    expectError(() => new NetDevice({ backend, queuePairs: 1.5 }), 'INVALID_ARGUMENT');
    expectError(() => new NetDevice({ backend, queueSize: 100 }), 'INVALID_ARGUMENT');
    expectError(() => new NetDevice({ backend, queueSize: 65536 }), 'INVALID_ARGUMENT');
    expectError(() => new NetDevice({ backend, mtu: 67 }), 'INVALID_ARGUMENT');
    expectError(() => new NetDevice({ backend, mtu: 65536 }), 'INVALID_ARGUMENT');
    expectError(() => new NetDevice({ backend, queuePairs: 2, ctrlVq: false }), 'INVALID_ARGUMENT');
    expectError(() => new NetDevice({ backend, rxBacklog: -1 }), 'INVALID_ARGUMENT');
    expectError(() => new NetDevice({ backend, speed: -1 }), 'INVALID_ARGUMENT');
    expectError(() => new NetDevice({ backend, mac: '02:00:00:00:00' }), 'INVALID_ARGUMENT');
    expectError(() => new NetDevice({ backend, mac: new Uint8Array(5) }), 'INVALID_ARGUMENT');
    expect(new NetDevice({ backend, mtu: 68 }).maxFrame).toBe(68 + 18);
    expect(new NetDevice({ backend, mtu: 65535 }).maxFrame).toBe(65535);
  });

  it('refuses MQ without CTRL_VQ at FEATURES_OK', () => {
    const dev = new NetDevice({ backend: new RecordingBackend(), queuePairs: 2 });
    expect(dev.validateFeatures(new Features([NetFeature.MQ]))).toBe(false);
    expect(dev.validateFeatures(new Features([NetFeature.MQ, NetFeature.CTRL_VQ]))).toBe(true);
    expect(dev.validateFeatures(new Features([]))).toBe(true);
  });
});

describe('NetDevice transmit', () => {
  it('strips the 12-byte header, framing not assumed, and counts frames and bytes', () => {
    const { backend, dev, ctx } = setup();
    const f = frame(60);
    transmit(ctx, dev, 1, f);
    transmit(ctx, dev, 1, frame(100, 3), new Uint8Array(NET_HDR_SIZE), true);
    expect(backend.sent).toEqual([f, frame(100, 3)]);
    expect(ctx.harvest(1).map((u) => u.len)).toEqual([0, 0]);
    expect(dev.counters.txFrames).toBe(2);
    expect(dev.counters.txBytes).toBe(160);
    expect(dev.counters.txFramesPerPair).toEqual([2]);
    expect(ctx.failures).toEqual([]);
  });

  it('uses the 10-byte header of a legacy device without MRG_RXBUF', () => {
    const backend = new RecordingBackend();
    const dev = new NetDevice({ backend, queueSize: 16, mrgRxbuf: false });
    const ctx = activateWithFakeContext(dev, { features: dev.features.clone() });
    transmit(ctx, dev, 1, frame(64), new Uint8Array(NET_HDR_SIZE_LEGACY));
    expect(backend.sent).toEqual([frame(64)]);
  });

  it('drops offload requests, short headers, runts and oversized frames, counted', () => {
    const { backend, dev, ctx } = setup({ mtu: 100 });
    const csum = new Uint8Array(NET_HDR_SIZE);
    csum[NetHdr.flags] = NetHdrFlag.NEEDS_CSUM;
    transmit(ctx, dev, 1, frame(60), csum);
    const gso = new Uint8Array(NET_HDR_SIZE);
    gso[NetHdr.gsoType] = NetGso.TCPV4;
    transmit(ctx, dev, 1, frame(60), gso);
    // A chain shorter than the header.
    transmit(ctx, dev, 1, new Uint8Array(0), new Uint8Array(8));
    // Runt: 13 bytes of frame.
    transmit(ctx, dev, 1, frame(ETH_HLEN - 1));
    expect(dev.counters.txDropMalformed).toBe(4);
    // mtu + 18 passes, one more does not.
    transmit(ctx, dev, 1, frame(118));
    transmit(ctx, dev, 1, frame(119));
    expect(dev.counters.txDropTooBig).toBe(1);
    expect(backend.sent.map((f) => f.length)).toEqual([118]);
    expect(ctx.harvest(1).length).toBe(6);
    expect(dev.counters.guestErrors).toBe(5);
  });

  it('reports a backend that throws and goes on', () => {
    const backend = new RecordingBackend();
    backend.send = () => {
      throw new Error('boom');
    };
    const logs: string[] = [];
    const dev = new NetDevice({ backend, queueSize: 16, log: (m) => logs.push(m) });
    const ctx = activateWithFakeContext(dev, { features: negotiated(dev) });
    transmit(ctx, dev, 1, frame(60));
    expect(dev.counters.backendErrors).toBe(1);
    expect(logs.some((l) => l.includes('boom'))).toBe(true);
    expect(ctx.harvest(1).length).toBe(1);
  });
});

describe('NetDevice receive', () => {
  it('writes header and frame into one buffer, num_buffers 1, and notifies', () => {
    const { backend, dev, ctx } = setup();
    const [buf] = postRx(ctx, 0, 2048, 1);
    const f = frame(200);
    backend.handler?.(f);
    const [u] = ctx.harvest(0);
    expect(u).toEqual({ token: buf, len: NET_HDR_SIZE + 200 });
    const hdr = ctx.bytes(buf, NET_HDR_SIZE);
    const expectedHdr = new Uint8Array(NET_HDR_SIZE);
    expectedHdr[NetHdr.numBuffers] = 1;
    expect(hdr).toEqual(expectedHdr);
    expect(ctx.bytes(buf + NET_HDR_SIZE, 200)).toEqual(f);
    // Never written past the frame.
    expect(ctx.mem.read8(buf + NET_HDR_SIZE + 200)).toBe(0xee);
    expect(ctx.interrupts).toEqual([0]);
    expect(dev.counters.rxFrames).toBe(1);
    expect(dev.counters.rxBytes).toBe(200);
  });

  it('spans several buffers with MRG_RXBUF and sets num_buffers', () => {
    const { dev, ctx } = setup();
    const bufs = postRx(ctx, 0, 100, 8);
    const f = frame(300, 9);
    expect(dev.receiveFrame(f)).toBe('delivered');
    const used = ctx.harvest(0);
    // 12 + 300 = 312 bytes over 100-byte buffers: 4 buffers, the last with 12 bytes.
    expect(used).toEqual([
      { token: bufs[0], len: 100 },
      { token: bufs[1], len: 100 },
      { token: bufs[2], len: 100 },
      { token: bufs[3], len: 12 },
    ]);
    expect(ctx.mem.read16(bufs[0] + NetHdr.numBuffers)).toBe(4);
    const got = new Uint8Array(300);
    got.set(ctx.bytes(bufs[0] + NET_HDR_SIZE, 88), 0);
    got.set(ctx.bytes(bufs[1], 100), 88);
    got.set(ctx.bytes(bufs[2], 100), 188);
    got.set(ctx.bytes(bufs[3], 12), 288);
    expect(got).toEqual(f);
    expect(ctx.mem.read8(bufs[3] + 12)).toBe(0xee);
    // The next frame starts in the next buffer.
    dev.receiveFrame(frame(50));
    expect(ctx.harvest(0)).toEqual([{ token: bufs[4], len: 62 }]);
  });

  it('spans buffers made of several descriptors', () => {
    const { dev, ctx } = setup();
    const a = ctx.alloc(16, 0xee);
    const b = ctx.alloc(40, 0xee);
    ctx.drivers[0].add(
      [],
      [
        { addr: a, len: 16 },
        { addr: b, len: 40 },
      ],
      a,
    );
    const [c] = postRx(ctx, 0, 64, 1);
    const f = frame(90);
    dev.receiveFrame(f);
    expect(ctx.harvest(0)).toEqual([
      { token: a, len: 56 },
      { token: c, len: 46 },
    ]);
    const got = new Uint8Array(90);
    got.set(ctx.bytes(a + NET_HDR_SIZE, 4), 0);
    got.set(ctx.bytes(b, 40), 4);
    got.set(ctx.bytes(c, 46), 44);
    expect(got).toEqual(f);
  });

  it('without MRG_RXBUF uses one buffer per frame and drops a frame too big for it, keeping the buffer', () => {
    const { dev, ctx } = setup({}, [NetFeature.MRG_RXBUF]);
    const [small] = postRx(ctx, 0, 100, 1);
    expect(dev.receiveFrame(frame(200))).toBe('dropped');
    expect(dev.counters.rxDropBufferTooSmall).toBe(1);
    expect(ctx.harvest(0)).toEqual([]);
    expect(dev.receiveFrame(frame(80))).toBe('delivered');
    expect(ctx.harvest(0)).toEqual([{ token: small, len: 92 }]);
    // 5.1.6.4: num_buffers is 1 without MRG_RXBUF.
    expect(ctx.mem.read16(small + NetHdr.numBuffers)).toBe(1);
  });

  it('queues frames when buffers run out, delivers them in order on the rx kick, then drops past the backlog', () => {
    const { dev, ctx } = setup({ rxBacklog: 3 });
    postRx(ctx, 0, 2048, 1);
    expect(dev.receiveFrame(frame(60, 0))).toBe('delivered');
    expect(ctx.harvest(0).length).toBe(1);
    for (let i = 1; i <= 3; i++) expect(dev.receiveFrame(frame(60, i))).toBe('queued');
    expect(dev.receiveFrame(frame(60, 4))).toBe('dropped');
    expect(dev.rxWaiting).toBe(3);
    expect(dev.counters.rxBacklogged).toBe(3);
    expect(dev.counters.rxDropNoBuffer).toBe(1);
    // The driver adds two buffers: the device asked for a kick, and delivers two waiting frames.
    const bufs = postRx(ctx, 0, 2048, 2);
    expect(ctx.kick(dev, 0)).toBe(true);
    expect(ctx.harvest(0).map((u) => u.token)).toEqual(bufs);
    expect(ctx.bytes(bufs[0] + NET_HDR_SIZE, 60)).toEqual(frame(60, 1));
    expect(ctx.bytes(bufs[1] + NET_HDR_SIZE, 60)).toEqual(frame(60, 2));
    expect(dev.rxWaiting).toBe(1);
    // A new frame goes behind the one waiting.
    expect(dev.receiveFrame(frame(60, 5))).toBe('queued');
    const more = postRx(ctx, 0, 2048, 4);
    ctx.kick(dev, 0);
    expect(ctx.harvest(0).map((u) => u.token)).toEqual(more.slice(0, 2));
    expect(ctx.bytes(more[0] + NET_HDR_SIZE, 60)).toEqual(frame(60, 3));
    expect(ctx.bytes(more[1] + NET_HDR_SIZE, 60)).toEqual(frame(60, 5));
    expect(dev.rxWaiting).toBe(0);
    expect(dev.counters.rxFrames).toBe(5);
    // Nothing waits: the device turned the rx kick off again.
    postRx(ctx, 0, 2048, 1);
    expect(ctx.kick(dev, 0)).toBe(false);
    // Accounting: every frame offered is delivered, or dropped and counted.
    expect(dev.counters.rxFrames + dev.counters.rxDropNoBuffer).toBe(6);
  });

  it('with MRG_RXBUF never splits a frame over buffers it does not have yet', () => {
    const { dev, ctx } = setup();
    const first = postRx(ctx, 0, 100, 2);
    expect(dev.receiveFrame(frame(300))).toBe('queued');
    expect(ctx.harvest(0)).toEqual([]);
    const rest = postRx(ctx, 0, 100, 2);
    ctx.kick(dev, 0);
    expect(ctx.harvest(0).map((u) => u.token)).toEqual([...first, ...rest]);
    expect(ctx.mem.read16(first[0] + NetHdr.numBuffers)).toBe(4);
  });

  it('drops a frame no ring full of buffers could hold instead of stalling', () => {
    const { dev, ctx } = setup({}, [], 4);
    postRx(ctx, 0, 50, 4);
    expect(dev.receiveFrame(frame(300))).toBe('dropped');
    expect(dev.counters.rxDropBufferTooSmall).toBe(1);
    expect(dev.receiveFrame(frame(100))).toBe('delivered');
    expect(ctx.harvest(0).length).toBe(3);
  });

  it('returns receive buffers with a readable part or shorter than the header with length 0', () => {
    const { dev, ctx } = setup();
    const bad = ctx.alloc(8);
    ctx.drivers[0].add([], [{ addr: bad, len: 8 }], bad);
    const ro = ctx.alloc(64);
    ctx.drivers[0].add([{ addr: ro, len: 64 }], [], ro);
    const [good] = postRx(ctx, 0, 2048, 1);
    dev.receiveFrame(frame(60));
    expect(ctx.harvest(0)).toEqual([
      { token: bad, len: 0 },
      { token: ro, len: 0 },
      { token: good, len: 72 },
    ]);
    expect(dev.counters.guestErrors).toBe(2);
  });

  it('drops oversized and runt frames from the backend', () => {
    const { dev, ctx } = setup({ mtu: 1500 });
    postRx(ctx, 0, 2048, 4);
    expect(dev.receiveFrame(frame(1518))).toBe('delivered');
    expect(dev.receiveFrame(frame(1519))).toBe('dropped');
    expect(dev.receiveFrame(frame(65536))).toBe('dropped');
    expect(dev.receiveFrame(frame(13))).toBe('dropped');
    expect(dev.counters.rxDropTooBig).toBe(3);
    expect(ctx.harvest(0).length).toBe(1);
  });

  it('drops frames before activation and after reset', () => {
    const backend = new RecordingBackend();
    const dev = new NetDevice({ backend, queueSize: 16 });
    expect(dev.receiveFrame(frame(60))).toBe('dropped');
    expect(dev.counters.rxDropNotReady).toBe(1);
    const ctx = activateWithFakeContext(dev, { features: negotiated(dev) });
    expect(dev.receiveFrame(frame(60))).toBe('queued');
    dev.reset();
    expect(dev.counters.rxDropNotReady).toBe(2);
    expect(dev.isActivated).toBe(false);
    expect(ctx.harvest(0)).toEqual([]);
    dev.notify(1);
    expect(dev.counters.guestErrors).toBe(1);
  });

  it('counts a corrupt receive ring through queueFailed', () => {
    const { dev, ctx } = setup();
    postRx(ctx, 0, 2048, 1);
    // Corrupt avail.idx: far ahead of the queue size.
    ctx.mem.write16(ctx.drivers[0].rings.availRing + 2, 1000);
    expect(dev.receiveFrame(frame(60))).toBe('queued');
    expect(ctx.failures.map((f) => f.index)).toEqual([0]);
  });
});

describe('NetDevice link state', () => {
  it('changes status with a configuration change, drops both ways while down, recovers when up', () => {
    const { backend, dev, ctx, configChanges } = setup();
    postRx(ctx, 0, 2048, 4);
    expect(dev.receiveFrame(frame(60))).toBe('delivered');
    dev.setLink(false);
    expect(configChanges.length).toBe(1);
    expect(dev.readConfig(NetConfig.status, 2)).toBe(0);
    expect(dev.receiveFrame(frame(60))).toBe('dropped');
    transmit(ctx, dev, 1, frame(60));
    expect(backend.sent.length).toBe(0);
    expect(dev.counters.rxDropLinkDown).toBe(1);
    expect(dev.counters.txDropLinkDown).toBe(1);
    // The chain is still returned.
    expect(ctx.harvest(1).length).toBe(1);
    dev.setLink(false);
    expect(configChanges.length).toBe(1);
    dev.setLink(true);
    expect(configChanges.length).toBe(2);
    expect(dev.readConfig(NetConfig.status, 2)).toBe(NetStatus.LINK_UP);
    expect(dev.receiveFrame(frame(60))).toBe('delivered');
    transmit(ctx, dev, 1, frame(60));
    expect(backend.sent.length).toBe(1);
    expect(dev.counters.configChanges).toBe(2);
  });

  it('drops the frames waiting for buffers when the link goes down', () => {
    const { dev } = setup();
    dev.receiveFrame(frame(60));
    dev.receiveFrame(frame(60));
    expect(dev.rxWaiting).toBe(2);
    dev.setLink(false);
    expect(dev.rxWaiting).toBe(0);
    expect(dev.counters.rxDropLinkDown).toBe(2);
  });

  it('without STATUS changes no configuration', () => {
    const backend = new RecordingBackend();
    const dev = new NetDevice({ backend, status: false });
    const calls: number[] = [];
    dev.attach({ configChanged: () => calls.push(1) });
    dev.setLink(false);
    expect(calls).toEqual([]);
    expect(dev.linkUp).toBe(false);
    expect(dev.readConfig(NetConfig.status, 2)).toBe(0);
  });
});

describe('NetDevice control queue and multiqueue', () => {
  it('puts the control queue at 2N with MQ and at 2 without', () => {
    const withMq = setup({ queuePairs: 3 });
    expect(withMq.dev.controlQueueIndex).toBe(6);
    const noMq = setup({ queuePairs: 3 }, [NetFeature.MQ]);
    expect(noMq.dev.controlQueueIndex).toBe(2);
    expect(control(noMq.ctx, noMq.dev, 2, [NetCtrlClass.MQ, NetCtrlMq.VQ_PAIRS_SET, 2, 0]).ack).toBe(
      NetCtrlAck.ERR,
    );
    noMq.dev.notify(4);
    expect(noMq.dev.counters.guestErrors).toBe(1);
    expect(noMq.dev.counters.ctrlErrors).toBe(1);
  });

  it('sets the pairs in use, rejects 0, more than the maximum and short commands', () => {
    const { dev, ctx } = setup({ queuePairs: 4 });
    const q = dev.controlQueueIndex;
    expect(control(ctx, dev, q, [NetCtrlClass.MQ, NetCtrlMq.VQ_PAIRS_SET, 3, 0])).toEqual({
      ack: NetCtrlAck.OK,
      len: 1,
    });
    expect(dev.queuePairsInUse).toBe(3);
    expect(control(ctx, dev, q, [NetCtrlClass.MQ, NetCtrlMq.VQ_PAIRS_SET, 0, 0]).ack).toBe(NetCtrlAck.ERR);
    expect(control(ctx, dev, q, [NetCtrlClass.MQ, NetCtrlMq.VQ_PAIRS_SET, 5, 0]).ack).toBe(NetCtrlAck.ERR);
    expect(control(ctx, dev, q, [NetCtrlClass.MQ, NetCtrlMq.VQ_PAIRS_SET, 4, 1]).ack).toBe(NetCtrlAck.ERR);
    expect(control(ctx, dev, q, [NetCtrlClass.MQ, NetCtrlMq.VQ_PAIRS_SET, 2]).ack).toBe(NetCtrlAck.ERR);
    expect(control(ctx, dev, q, [NetCtrlClass.MQ]).ack).toBe(NetCtrlAck.ERR);
    expect(dev.queuePairsInUse).toBe(3);
    expect(control(ctx, dev, q, [NetCtrlClass.MQ, NetCtrlMq.VQ_PAIRS_SET, 4, 0]).ack).toBe(NetCtrlAck.OK);
    expect(dev.queuePairsInUse).toBe(4);
    expect(dev.counters.ctrlCommands).toBe(7);
    expect(dev.counters.ctrlErrors).toBe(5);
  });

  it('answers ERR to unknown classes and commands, and writes nothing without an ack byte', () => {
    const { dev, ctx } = setup({ queuePairs: 2 });
    const q = dev.controlQueueIndex;
    expect(control(ctx, dev, q, [NetCtrlClass.RX, 0, 1]).ack).toBe(NetCtrlAck.ERR);
    expect(control(ctx, dev, q, [NetCtrlClass.MAC, 1, 0, 0, 0, 0, 0, 0]).ack).toBe(NetCtrlAck.ERR);
    expect(control(ctx, dev, q, [NetCtrlClass.MQ, NetCtrlMq.RSS_CONFIG, 0, 0]).ack).toBe(NetCtrlAck.ERR);
    expect(control(ctx, dev, q, [200, 0]).ack).toBe(NetCtrlAck.ERR);
    expect(control(ctx, dev, q, [NetCtrlClass.MQ, NetCtrlMq.VQ_PAIRS_SET, 2, 0], 0)).toEqual({
      ack: 0x55,
      len: 0,
    });
    expect(dev.queuePairsInUse).toBe(1);
    expect(dev.counters.ctrlErrors).toBe(5);
  });

  it('steers received flows over the pairs in use, following the pair that transmitted the flow', () => {
    const { dev, ctx } = setup({ queuePairs: 4 }, [], 64);
    for (let p = 0; p < 4; p++) postRx(ctx, 2 * p, 2048, 64);
    const udp = (port: number): Uint8Array => {
      const f = new Uint8Array(60);
      f[12] = 0x08;
      f[14] = 0x45;
      f[23] = 17;
      f.set([10, 0, 0, 1], 26);
      f.set([10, 0, 0, 2], 30);
      f[34] = port >> 8;
      f[35] = port & 0xff;
      f[37] = 80;
      return f;
    };
    // One pair in use: everything on rx0.
    for (let i = 0; i < 8; i++) dev.receiveFrame(udp(1000 + i));
    expect(dev.counters.rxFramesPerPair).toEqual([8, 0, 0, 0]);
    control(ctx, dev, dev.controlQueueIndex, [NetCtrlClass.MQ, NetCtrlMq.VQ_PAIRS_SET, 4, 0]);
    for (let i = 0; i < 40; i++) dev.receiveFrame(udp(2000 + i));
    const spread = dev.counters.rxFramesPerPair.map((n, p) => n - (p === 0 ? 8 : 0));
    expect(spread.reduce((a, b) => a + b)).toBe(40);
    expect(spread.filter((n) => n > 0).length).toBe(4);
    // A flow sent on tx2 comes back on rx2 (reply: addresses and ports swapped).
    const out = udp(3000);
    transmit(ctx, dev, 5, out);
    const reply = out.slice();
    reply.set(out.subarray(30, 34), 26);
    reply.set(out.subarray(26, 30), 30);
    reply.set(out.subarray(36, 38), 34);
    reply.set(out.subarray(34, 36), 36);
    const before = dev.counters.rxFramesPerPair[2];
    dev.receiveFrame(reply);
    expect(dev.counters.rxFramesPerPair[2]).toBe(before + 1);
    // Back to 1 pair: frames waiting on pairs going out of use are dropped, new ones go to rx0.
    control(ctx, dev, dev.controlQueueIndex, [NetCtrlClass.MQ, NetCtrlMq.VQ_PAIRS_SET, 1, 0]);
    const rx0 = dev.counters.rxFramesPerPair[0];
    dev.receiveFrame(udp(4000));
    expect(dev.counters.rxFramesPerPair[0]).toBe(rx0 + 1);
  });

  it('resets to one pair, and a queue reset forgets that queue', () => {
    const { dev, ctx } = setup({ queuePairs: 2 });
    control(ctx, dev, dev.controlQueueIndex, [NetCtrlClass.MQ, NetCtrlMq.VQ_PAIRS_SET, 2, 0]);
    dev.receiveFrame(frame(60));
    dev.resetQueue(0);
    dev.resetQueue(2);
    dev.reset();
    expect(dev.queuePairsInUse).toBe(1);
    expect(dev.controlQueueIndex).toBe(-1);
    expect(dev.counters.rxDropNotReady).toBe(1);
  });
});

describe('NetDevice over an in-process link', () => {
  it('carries frames from one device to the other only when the link is pumped', () => {
    const link = createNetLink();
    const a = new NetDevice({ backend: link.a, queueSize: 16 });
    const b = new NetDevice({ backend: link.b, queueSize: 16, mac: '52:54:00:00:00:02' });
    const ca = activateWithFakeContext(a, { features: negotiated(a) });
    const cb = activateWithFakeContext(b, { features: negotiated(b) });
    postRx(cb, 0, 2048, 2);
    transmit(ca, a, 1, frame(80));
    expect(b.counters.rxFrames).toBe(0);
    expect(link.pump()).toBe(1);
    expect(b.counters.rxFrames).toBe(1);
    expect(cb.harvest(0).length).toBe(1);
  });
});
