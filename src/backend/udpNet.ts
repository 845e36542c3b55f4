/**
 * A {@link NetBackend} over a UDP socket carrying one Ethernet frame per datagram, so two machines
 * in separate processes (or one machine and anything speaking the same convention) share an
 * Ethernet segment; the same idea as QEMU's `-netdev dgram,local.type=inet,remote.type=inet`.
 *
 * The socket is bound to `localAddress:localPort` (port 0: the kernel picks one, read it from
 * {@link UdpNetBackend.localPort}) and sends to `remoteAddress:remotePort`; datagrams from any
 * other source are dropped and counted. UDP may lose datagrams when a receive buffer overflows:
 * nothing here retransmits, as nothing on a real Ethernet segment does.
 *
 * @packageDocumentation
 */

import { createSocket, type Socket } from 'node:dgram';
import type { NetBackend, NetReceiveHandler } from '../device/index.js';
import { VirtioError } from '../spec/index.js';

/** Options of {@link UdpNetBackend.open}. */
export interface UdpNetBackendOptions {
  /** Local port; 0 (default) lets the kernel choose. */
  localPort?: number;
  /** Local address. Default 127.0.0.1. */
  localAddress?: string;
  /** Remote port; may be set later with {@link UdpNetBackend.connect}. */
  remotePort?: number;
  /** Remote address. Default 127.0.0.1. */
  remoteAddress?: string;
  /** SO_RCVBUF in bytes (the kernel caps it at net.core.rmem_max). Default 4 MiB. */
  recvBufferSize?: number;
  /** SO_SNDBUF in bytes. Default 4 MiB. */
  sendBufferSize?: number;
}

/** Counters of a {@link UdpNetBackend}. */
export interface UdpNetCounters {
  /** Datagrams handed to the socket. */
  sent: number;
  /** Datagrams the socket reported as failed (too large, no route, closed). */
  sendErrors: number;
  /** Frames not sent: no remote yet, or closed. */
  notSent: number;
  /** Datagrams received and handed to the handler. */
  received: number;
  /** Datagrams dropped: from another source, no handler, or after close. */
  dropped: number;
}

/** Largest UDP payload over IPv4 (65535 - 20 - 8). */
export const UDP_MAX_PAYLOAD = 65507;

function checkPort(name: string, port: number, min: number): number {
  if (!Number.isInteger(port) || port < min || port > 0xffff) {
    throw new VirtioError('INVALID_ARGUMENT', `udp ${name} port ${String(port)} not in ${min}..65535`);
  }
  return port;
}

/** A frame-per-datagram UDP backend. Open with {@link UdpNetBackend.open}. */
export class UdpNetBackend implements NetBackend {
  /** Counters. */
  readonly counters: UdpNetCounters = { sent: 0, sendErrors: 0, notSent: 0, received: 0, dropped: 0 };
  private handler: NetReceiveHandler | null = null;
  private remotePort: number;
  private remoteAddress: string;
  private closed = false;
  private readonly onSent = (err: Error | null): void => {
    if (err !== null) this.counters.sendErrors++;
  };

  private constructor(
    private readonly socket: Socket,
    /** The bound local port. */
    readonly localPort: number,
    remotePort: number,
    remoteAddress: string,
  ) {
    this.remotePort = remotePort;
    this.remoteAddress = remoteAddress;
    socket.on('message', (msg, rinfo) => {
      if (
        this.closed ||
        this.handler === null ||
        rinfo.port !== this.remotePort ||
        rinfo.address !== this.remoteAddress
      ) {
        this.counters.dropped++;
        return;
      }
      this.counters.received++;
      this.handler(new Uint8Array(msg.buffer, msg.byteOffset, msg.length));
    });
    socket.on('error', () => {
      this.counters.sendErrors++;
    });
  }

  /**
   * Binds the socket and returns the backend.
   * @throws VirtioError `INVALID_ARGUMENT` for a bad port; `BACKEND_IO` when binding fails
   */
  static async open(options: UdpNetBackendOptions = {}): Promise<UdpNetBackend> {
    const localPort = checkPort('local', options.localPort ?? 0, 0);
    const remotePort = options.remotePort === undefined ? 0 : checkPort('remote', options.remotePort, 1);
    const localAddress = options.localAddress ?? '127.0.0.1';
    const socket = createSocket({
      type: 'udp4',
      recvBufferSize: options.recvBufferSize ?? 4 << 20,
      sendBufferSize: options.sendBufferSize ?? 4 << 20,
    });
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once('error', reject);
        socket.bind(localPort, localAddress, () => {
          socket.off('error', reject);
          resolve();
        });
      });
    } catch (e) {
      socket.close();
      throw new VirtioError(
        'BACKEND_IO',
        `udp bind ${localAddress}:${localPort} failed: ${(e as Error).message}`,
      );
    }
    return new UdpNetBackend(socket, socket.address().port, remotePort, options.remoteAddress ?? '127.0.0.1');
  }

  /** Sets where frames go (and the only source accepted). */
  connect(remotePort: number, remoteAddress = '127.0.0.1'): void {
    this.remotePort = checkPort('remote', remotePort, 1);
    this.remoteAddress = remoteAddress;
  }

  /** Sends `frame` as one datagram (copied); counted as not sent without a remote or after close. */
  send(frame: Uint8Array): void {
    if (this.closed || this.remotePort === 0 || frame.length > UDP_MAX_PAYLOAD) {
      this.counters.notSent++;
      return;
    }
    this.counters.sent++;
    this.socket.send(Buffer.from(frame), this.remotePort, this.remoteAddress, this.onSent);
  }

  /** Sets the handler of arriving frames (the frame is a view valid during the call). */
  onReceive(handler: NetReceiveHandler): void {
    this.handler = handler;
  }

  /** Closes the socket. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.handler = null;
    this.socket.close();
  }
}
