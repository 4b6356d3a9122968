/**
 * A fake upstream on 127.0.0.1 whose answers the test scripts (200 with `{"ok":true}` until it
 * does), for tests of what the gateway learns from answers: pauses, reported limits, breakers,
 * pool tokens. It records the path and the pool token (X-BLToken, or `tokenHeader`) of every request.
 */
import { once } from 'node:events';
import { createServer, type IncomingMessage, type OutgoingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll } from 'vitest';
import { startGateway, type TestGateway } from './gateway.js';

export type Reply = { status: number; headers?: OutgoingHttpHeaders; body?: string | Buffer };

export interface ScriptedUpstream {
  /** http://127.0.0.1:PORT */
  url: string;
  /** Every request so far, in order. */
  seen: { path: string; token: string | undefined }[];
  /** The answer to each request; the test sets it. */
  answer: (req: IncomingMessage) => Reply;
}

export interface ScriptedFixture {
  /** Listening from the file's first test on (its url is set then). */
  up: ScriptedUpstream;
  /** The gateways the running test started. */
  gateways: readonly TestGateway[];
  /** startGateway, with the gateway closed after the test. */
  start(yaml: string, options?: Parameters<typeof startGateway>[1]): Promise<TestGateway>;
  /** An entry of a config's `upstreams:` sending /<name>... here; `extra`: more of its lines (four spaces in, each ending in a newline). */
  upstreamYaml(name: string, extra?: string): string;
}

const OK: Reply = { status: 200 };

/**
 * For the file it is called in (at its top level): one scripted upstream for all its tests, and a
 * start() whose gateways are closed after each test, when the upstream is reset too.
 */
export function scriptedUpstream(tokenHeader = 'x-bltoken'): ScriptedFixture {
  const server = createServer((req, res) => {
    const token = req.headers[tokenHeader.toLowerCase()];
    up.seen.push({ path: req.url ?? '', token: Array.isArray(token) ? token[0] : token });
    req.resume();
    const reply = up.answer(req);
    const body = reply.body ?? '{"ok":true}';
    res.writeHead(reply.status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...reply.headers });
    res.end(body);
  });
  const up: ScriptedUpstream = { url: '', seen: [], answer: () => OK };
  const gateways: TestGateway[] = [];
  beforeAll(async () => {
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    up.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    server.close();
    await once(server, 'close');
  });
  afterEach(async () => {
    await Promise.all(gateways.splice(0).map((g) => g.close()));
    up.seen.length = 0;
    up.answer = () => OK;
  });
  return {
    up,
    gateways,
    async start(yaml, options) {
      const gw = await startGateway(yaml, options);
      gateways.push(gw);
      return gw;
    },
    upstreamYaml: (name, extra = '') => `  ${name}:\n    match: { prefix: /${name} }\n    target: ${up.url}\n    allowPrivate: true\n${extra}`,
  };
}

/** Answers `reply` to the first request, 200 after. */
export function firstOnly(reply: Reply): () => Reply {
  let sent = false;
  return () => {
    if (sent) return OK;
    sent = true;
    return reply;
  };
}
