import { spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { createInterface } from 'node:readline';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { NetDevice, NetDriver } from '../device/index.js';
import { Machine } from '../platform/index.js';
import { VirtioError } from '../spec/index.js';
import { UDP_MAX_PAYLOAD, UdpNetBackend } from './udpNet.js';

const opened: UdpNetBackend[] = [];

async function open(): Promise<UdpNetBackend> {
  const b = await UdpNetBackend.open();
  opened.push(b);
  return b;
}

async function connectedPair(): Promise<[UdpNetBackend, UdpNetBackend]> {
  const a = await open();
  const b = await open();
  a.connect(b.localPort);
  b.connect(a.localPort);
  return [a, b];
}

afterEach(() => {
  for (const b of opened.splice(0)) b.close();
});

async function until(done: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!done()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 1));
  }
}

describe('UdpNetBackend', () => {
  it('carries one frame per datagram between two sockets on loopback', async () => {
    const [a, b] = await connectedPair();
    expect(a.localPort).toBeGreaterThan(0);
    const got: Uint8Array[] = [];
    b.onReceive((f) => got.push(f.slice()));
    const f = Uint8Array.from({ length: 1514 }, (_, i) => i & 0xff);
    a.send(f);
    f[0] = 0xaa;
    a.send(Uint8Array.of(1, 2, 3));
    await until(() => got.length === 2);
    expect(got[0]).toEqual(Uint8Array.from({ length: 1514 }, (_, i) => i & 0xff));
    expect(got[1]).toEqual(Uint8Array.of(1, 2, 3));
    expect(a.counters.sent).toBe(2);
    expect(b.counters.received).toBe(2);
  });

  it('drops datagrams from other sources, counts frames it cannot send, and closes once', async () => {
    const [a, b] = await connectedPair();
    const got: Uint8Array[] = [];
    b.onReceive((f) => got.push(f.slice()));
    const stranger = createSocket('udp4');
    await new Promise<void>((r) => stranger.bind(0, '127.0.0.1', () => r()));
    stranger.send(Buffer.from([9, 9]), b.localPort, '127.0.0.1');
    a.send(Uint8Array.of(1));
    await until(() => got.length === 1 && b.counters.dropped === 1);
    stranger.close();
    const lonely = await open();
    lonely.send(Uint8Array.of(1));
    a.send(new Uint8Array(UDP_MAX_PAYLOAD + 1));
    expect(lonely.counters.notSent).toBe(1);
    expect(a.counters.notSent).toBe(1);
    a.close();
    a.close();
    a.send(Uint8Array.of(1));
    expect(a.counters.notSent).toBe(2);
  });

  it('rejects bad ports and reports a port in use', async () => {
    await expect(UdpNetBackend.open({ localPort: 70000 })).rejects.toThrow(VirtioError);
    await expect(UdpNetBackend.open({ remotePort: 0 })).rejects.toThrow(VirtioError);
    const a = await open();
    expect(() => a.connect(0)).toThrow(VirtioError);
    await expect(UdpNetBackend.open({ localPort: a.localPort })).rejects.toMatchObject({
      code: 'BACKEND_IO',
    });
  });
});

describe('two machines over the UDP backend', () => {
  /** A machine with a NIC on `backend`. */
  function machine(backend: UdpNetBackend, mac: string) {
    const m = new Machine({ ramSize: 32 << 20 });
    const dev = new NetDevice({ backend, mac, queueSize: 256, rxBacklog: 256 });
    m.addDevice(dev, { name: 'net0' });
    const drv = NetDriver.probe(m.probe('net0') as never);
    return { m, dev, drv };
  }

  const DATA = 1;
  const ACK = 2;

  function frame(dst: Uint8Array, src: Uint8Array, kind: number, value: number, len: number): Uint8Array {
    const f = new Uint8Array(len);
    f.set(dst, 0);
    f.set(src, 6);
    f[12] = 0x88;
    f[13] = 0xb5;
    f[14] = kind;
    new DataView(f.buffer).setUint32(15, value);
    for (let i = 19; i < len; i++) f[i] = (value * 7 + i) & 0xff;
    return f;
  }

  it('exchanges 100k sequenced frames with nothing duplicated and every frame accounted for', async () => {
    const [ua, ub] = await connectedPair();
    const a = machine(ua, '52:54:00:00:01:0a');
    const b = machine(ub, '52:54:00:00:01:0b');
    const N = 100_000;
    const WINDOW = 128;
    const seen = new Uint8Array(N);
    let delivered = 0;
    let duplicates = 0;
    let corrupt = 0;
    let sent = 0;
    let acked = 0;
    // Frames given up on after a stall (they may still arrive; the final accounting is exact).
    let givenUp = 0;
    let lastProgress = Date.now();
    let lastAckSent = -1;
    while (true) {
      // A: harvest acks, then fill the window.
      for (const f of a.drv.receive()) {
        if (f[14] === ACK) {
          const n = new DataView(f.buffer).getUint32(15);
          if (n > acked) {
            acked = n;
            lastProgress = Date.now();
          }
        }
      }
      while (sent < N && sent - acked - givenUp < WINDOW) {
        const len = 60 + (sent % 200);
        if (!a.drv.send(frame(b.drv.mac, a.drv.mac, DATA, sent, len))) break;
        sent++;
      }
      // B: take the data, check it, acknowledge how many distinct frames arrived.
      for (const f of b.drv.receive()) {
        const seq = new DataView(f.buffer).getUint32(15);
        if (f[14] !== DATA || seq >= N) {
          corrupt++;
          continue;
        }
        const expected = frame(b.drv.mac, a.drv.mac, DATA, seq, 60 + (seq % 200));
        if (f.length !== expected.length || Buffer.compare(Buffer.from(f), Buffer.from(expected)) !== 0)
          corrupt++;
        if (seen[seq] !== 0) duplicates++;
        else {
          seen[seq] = 1;
          delivered++;
        }
      }
      if (delivered !== lastAckSent) {
        b.drv.send(frame(a.drv.mac, b.drv.mac, ACK, delivered, 60));
        lastAckSent = delivered;
      }
      if (acked + givenUp >= N) break;
      if (Date.now() - lastProgress > 300) {
        // Nothing acknowledged for a while: what is in flight is lost (counted below).
        givenUp = sent - acked;
        lastProgress = Date.now();
        if (sent >= N) break;
      }
      await yieldToLoop();
    }
    // Let stragglers land, then account for every frame A's guest sent.
    await new Promise((r) => setTimeout(r, 50));
    await yieldToLoop();
    for (let got = b.drv.receive(); got.length > 0; got = b.drv.receive()) {
      for (const f of got) {
        const seq = new DataView(f.buffer).getUint32(15);
        if (seen[seq] !== 0) duplicates++;
        else {
          seen[seq] = 1;
          delivered++;
        }
      }
    }
    expect(sent).toBe(N);
    expect(duplicates).toBe(0);
    expect(corrupt).toBe(0);
    // Each layer counts what it drops; the UDP path is the only one that can lose silently, and
    // its loss is what the sending socket handed over minus what the receiving socket got.
    const da = a.dev.counters;
    const db = b.dev.counters;
    const txDevDrops = da.txDropLinkDown + da.txDropMalformed + da.txDropTooBig;
    const udpLost = ua.counters.sent - ua.counters.sendErrors - ub.counters.received;
    const rxDevDrops =
      db.rxDropNoBuffer + db.rxDropTooBig + db.rxDropBufferTooSmall + db.rxDropLinkDown + db.rxDropNotReady;
    expect(a.drv.stats.txFrames).toBe(N);
    expect(da.txFrames + txDevDrops).toBe(N);
    expect(ua.counters.sent + ua.counters.notSent).toBe(da.txFrames);
    expect(udpLost).toBeGreaterThanOrEqual(0);
    expect(db.rxFrames + rxDevDrops).toBe(ub.counters.received);
    expect(b.drv.stats.rxFrames).toBe(db.rxFrames);
    expect(delivered + txDevDrops + ua.counters.notSent + ua.counters.sendErrors + udpLost + rxDevDrops).toBe(
      N,
    );
    // On loopback with a window well inside the socket buffers nothing is lost in practice.
    expect(delivered).toBeGreaterThan(N * 0.99);
  }, 60_000);

  /**
   * The peer machine of the separate-process test, run by `node` from the compiled tree (as the
   * worker-based VMM tests do): it echoes every frame back with the addresses swapped until a
   * frame of kind 0xff arrives, then prints its counters.
   */
  function childScript(): string {
    // Only the modules needed, so the child does not depend on unrelated parts of the tree.
    const dist = (p: string): string => JSON.stringify(new URL(`../../dist/${p}.js`, import.meta.url).href);
    return `
      import { Machine } from ${dist('platform/machine')};
      import { NetDevice, NetDriver } from ${dist('device/net/index')};
      import { UdpNetBackend } from ${dist('backend/udpNet')};
      const backend = await UdpNetBackend.open({ remotePort: Number(process.argv[1]) });
      process.stdout.write(JSON.stringify({ port: backend.localPort }) + '\\n');
      const m = new Machine({ ramSize: 32 << 20 });
      const dev = new NetDevice({ backend, mac: '52:54:00:00:02:0b', queueSize: 256 });
      m.addDevice(dev, { name: 'net0' });
      const drv = NetDriver.probe(m.probe('net0'));
      let stop = false;
      while (!stop) {
        for (const f of drv.receive()) {
          if (f[14] === 0xff) { stop = true; break; }
          const r = f.slice();
          r.set(f.subarray(6, 12), 0);
          r.set(f.subarray(0, 6), 6);
          r[14] = ${ACK};
          while (!drv.send(r)) drv.poll();
        }
        await new Promise((r) => setImmediate(r));
      }
      process.stdout.write(JSON.stringify({ device: dev.counters, udp: backend.counters }) + '\\n');
      backend.close();
    `;
  }

  it('shares a segment with a machine in another process', async () => {
    const ua = await open();
    const a = machine(ua, '52:54:00:00:02:0a');
    const child = spawn(
      process.execPath,
      ['--input-type=module', '-e', childScript(), String(ua.localPort)],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    try {
      const hello = JSON.parse((await lines.next()).value as string) as { port: number };
      ua.connect(hello.port);
      const peerMac = Uint8Array.of(0x52, 0x54, 0, 0, 2, 0x0b);
      const N = 10_000;
      const seen = new Uint8Array(N);
      let echoed = 0;
      let duplicates = 0;
      let sent = 0;
      let lastProgress = Date.now();
      while (echoed < N && Date.now() - lastProgress < 2000) {
        for (const f of a.drv.receive()) {
          const seq = new DataView(f.buffer).getUint32(15);
          if (f[14] !== ACK || seq >= N) continue;
          if (seen[seq] !== 0) duplicates++;
          else {
            seen[seq] = 1;
            echoed++;
            lastProgress = Date.now();
          }
        }
        while (sent < N && sent - echoed < 64) {
          if (!a.drv.send(frame(peerMac, a.drv.mac, DATA, sent, 60 + (sent % 500)))) break;
          sent++;
        }
        await yieldToLoop();
      }
      a.drv.send(frame(peerMac, a.drv.mac, 0xff, 0, 60));
      const report = JSON.parse((await lines.next()).value as string) as {
        device: { rxFrames: number; txFrames: number; rxDropNoBuffer: number };
        udp: { received: number };
      };
      expect(await exited).toBe(0);
      expect(duplicates).toBe(0);
      expect(sent).toBe(N);
      // Every data frame the child's device took in was echoed; the stop frame is the extra one.
      expect(report.device.rxFrames).toBe(report.udp.received);
      expect(report.device.txFrames).toBe(report.device.rxFrames - 1);
      expect(echoed).toBeLessThanOrEqual(report.device.txFrames);
      expect(echoed).toBeGreaterThan(N * 0.99);
    } finally {
      child.kill();
    }
  }, 30_000);
});
