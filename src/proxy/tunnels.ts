/**
 * Every CONNECT tunnel this instance holds, intercepted or blind. A tunnel holds two sockets and,
 * intercepted, TLS state for as long as the client keeps it, so the count is bounded
 * (listen.maxTunnels) and a blind tunnel also counts against its upstream's `connections`: idle
 * tunnels cannot take the process's memory or the upstream's connection budget. A blind tunnel is
 * also checked against each reloaded config, since no request in it ever is.
 */
import type { Duplex } from 'node:stream';
import { GatewayError } from '../errors.js';
import type { Policy, UpstreamProfile } from '../policy.js';

export interface TunnelCounts {
  intercepted: number;
  blind: number;
}

export interface TunnelsStatus {
  open: number;
  max: number;
  upstreams: Record<string, TunnelCounts>;
}

const RETRY_AFTER_MS = 1_000;

export class Tunnels {
  /** Each open tunnel, with what says whether a new config still allows it (blind tunnels only). */
  private readonly open = new Map<Duplex, ((policy: Policy) => boolean) | undefined>();
  private readonly byUpstream = new Map<string, TunnelCounts>();

  constructor(private readonly max: number) {}

  /**
   * Holds a place for the tunnel on `socket` until the socket closes; throws too_many_tunnels past
   * listen.maxTunnels, and tunnel_limited for a blind tunnel past its upstream's connections.
   */
  admit(socket: Duplex, upstream: UpstreamProfile, stillAllowed?: (policy: Policy) => boolean): void {
    if (this.open.size >= this.max) {
      throw new GatewayError('too_many_tunnels', `this instance holds ${this.max} tunnels already (listen.maxTunnels)`, {
        retryAfterMs: RETRY_AFTER_MS,
      });
    }
    const counts = this.byUpstream.get(upstream.name) ?? { intercepted: 0, blind: 0 };
    const kind = upstream.intercept ? 'intercepted' : 'blind';
    if (kind === 'blind' && counts.blind >= upstream.connections) {
      throw new GatewayError('tunnel_limited', `upstream "${upstream.name}" has ${counts.blind} tunnels open, its connections limit`, {
        upstream: upstream.name,
        retryAfterMs: RETRY_AFTER_MS,
      });
    }
    counts[kind]++;
    this.byUpstream.set(upstream.name, counts);
    this.open.set(socket, stillAllowed);
    socket.once('close', () => {
      this.open.delete(socket);
      counts[kind]--;
      if (counts.intercepted === 0 && counts.blind === 0) this.byUpstream.delete(upstream.name);
    });
  }

  /** After a reload: cuts the tunnels the new config no longer allows; returns how many. */
  revalidate(policy: Policy): number {
    let cut = 0;
    for (const [socket, stillAllowed] of this.open) {
      if (stillAllowed && !stillAllowed(policy)) {
        socket.destroy();
        cut++;
      }
    }
    return cut;
  }

  /** At the end of a drain: whatever tunnel is still open is cut. */
  destroyAll(): void {
    for (const socket of this.open.keys()) socket.destroy();
  }

  status(): TunnelsStatus {
    return { open: this.open.size, max: this.max, upstreams: Object.fromEntries(this.byUpstream) };
  }
}
