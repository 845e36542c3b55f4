/**
 * Worker entry of {@link QemuNetPeer}: binds a {@link UdpNetBackend} on 127.0.0.1 port 0 that
 * sends to (and accepts only from) QEMU's port, runs a {@link HostPeer} over it, publishes the
 * counters in the shared block after every frame, and runs the main thread's commands. Posts
 * `{ type: 'ready', port }` once bound, or `{ type: 'error', message }`.
 *
 * @packageDocumentation
 */

import { parentPort, workerData } from 'node:worker_threads';
import { UdpNetBackend } from '../../backend/index.js';
import { HostPeer, type NetBackend, type NetReceiveHandler } from '../../device/index.js';
import {
  NetPeerCell,
  type NetPeerCommand,
  type NetPeerStartMessage,
  type NetPeerWorkerData,
} from './netPeer.js';

/** Counts frames and bytes both ways, and publishes after each. */
class CountingBackend implements NetBackend {
  rxBytes = 0;
  txBytes = 0;
  constructor(
    private readonly inner: NetBackend,
    private readonly publish: () => void,
  ) {}
  send(frame: Uint8Array): void {
    this.txBytes += frame.length;
    this.inner.send(frame);
    this.publish();
  }
  onReceive(handler: NetReceiveHandler): void {
    this.inner.onReceive((frame) => {
      this.rxBytes += frame.length;
      handler(frame);
      this.publish();
    });
  }
  close(): void {
    this.inner.close();
  }
}

async function main(port: NonNullable<typeof parentPort>): Promise<void> {
  const data = workerData as NetPeerWorkerData;
  const cells = new Int32Array(data.cells);
  const udp = await UdpNetBackend.open({ remotePort: data.remotePort, localAddress: '127.0.0.1' });
  let peer: HostPeer | null = null;
  let counting: CountingBackend | null = null;
  const publish = (): void => {
    if (peer === null || counting === null) return;
    const c = peer.counters;
    Atomics.store(cells, NetPeerCell.frames, c.frames);
    Atomics.store(cells, NetPeerCell.arpReplies, c.arpReplies);
    Atomics.store(cells, NetPeerCell.echoReplies, c.echoReplies);
    Atomics.store(cells, NetPeerCell.rrTransactions, c.rrTransactions);
    Atomics.store(cells, NetPeerCell.sent, c.sent);
    Atomics.store(cells, NetPeerCell.ignored, c.ignored);
    Atomics.store(cells, NetPeerCell.rxBytes, counting.rxBytes);
    Atomics.store(cells, NetPeerCell.txBytes, counting.txBytes);
    Atomics.store(cells, NetPeerCell.udpReceived, udp.counters.received);
    Atomics.store(cells, NetPeerCell.udpDropped, udp.counters.dropped);
    Atomics.store(cells, NetPeerCell.udpSent, udp.counters.sent);
    Atomics.store(cells, NetPeerCell.udpSendErrors, udp.counters.sendErrors);
  };
  counting = new CountingBackend(udp, publish);
  peer = new HostPeer({ backend: counting, ip: data.ip, mac: data.mac, rrResponseSize: data.rrResponseSize });
  const p = peer;
  // Datagrams from another source are dropped before the handler: publish those too, now and then.
  setInterval(publish, 20).unref();
  port.on('message', (cmd: NetPeerCommand) => {
    let result = -1;
    try {
      if (cmd.op === 'bulk') result = p.bulkSend(cmd.dstIp, cmd.dstPort, cmd.count, cmd.size);
    } catch {
      result = -1;
    }
    publish();
    Atomics.store(cells, NetPeerCell.commandResult, result);
    Atomics.add(cells, NetPeerCell.commandsDone, 1);
    Atomics.notify(cells, NetPeerCell.commandsDone);
  });
  publish();
  const ready: NetPeerStartMessage = { type: 'ready', port: udp.localPort };
  port.postMessage(ready);
}

if (parentPort !== null) {
  const port = parentPort;
  main(port).catch((e: unknown) => {
    const msg: NetPeerStartMessage = { type: 'error', message: e instanceof Error ? e.message : String(e) };
    Atomics.store(new Int32Array((workerData as NetPeerWorkerData).cells), NetPeerCell.failed, 1);
    port.postMessage(msg);
  });
}
