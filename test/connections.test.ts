/**
 * What a client connection may hold, and for how long: slow bodies, clients that stop reading,
 * uploads an upstream answers early, and Expect: 100-continue answered only after the checks.
 */
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGateway, type TestGateway } from './helpers/gateway.js';
import { configWithListen, rawExchange } from './helpers/raw.js';
import { startUpstream, type FakeUpstream } from './helpers/upstream.js';

const KEY = 'x-sluice-key: acme:acme-secret-key-1';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let upstream: FakeUpstream;
let gw: TestGateway;

beforeAll(async () => {
  upstream = await startUpstream();
  gw = await startGateway(
    configWithListen(
      { headersTimeout: '500ms', requestTimeout: '1s', idleTimeout: '1s' },
      `
  plain:
    match: { prefix: /plain }
    target: ${upstream.url}
    allowPrivate: true
`,
    ),
  );
});

afterAll(async () => {
  await gw.close();
  await upstream.close();
});

describe('client connections', () => {
  it('closes a connection whose body comes slower than requestTimeout, abandoning the upstream request', async () => {
    const pieces = [`POST /plain/upload HTTP/1.1\r\nHost: x\r\n${KEY}\r\nContent-Length: 1000\r\n\r\n`, ...Array(40).fill('x')];
    const exchange = await rawExchange(gw.port, pieces, { delayMs: 100, untilClose: true, timeoutMs: 6_000 });
    expect(exchange.timedOut).toBe(false);
    expect(exchange.closed).toBe(true);
    expect(exchange.elapsedMs).toBeLessThan(4_000);
    const res = await fetch(`${gw.proxyUrl}/plain/after`, { headers: { 'x-sluice-key': 'acme:acme-secret-key-1' } });
    expect(res.status).toBe(200);
  });

  it('cuts off a client that stops reading its response (idleTimeout), freeing the upstream', async () => {
    const socket = connect({ host: '127.0.0.1', port: gw.port });
    await new Promise((r) => socket.once('connect', r));
    socket.write(`GET /plain/bytes/${64 * 1024 * 1024} HTTP/1.1\r\nHost: x\r\n${KEY}\r\n\r\n`);
    socket.pause(); // read nothing
    await sleep(2_500);
    let received = 0;
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    socket.on('error', () => undefined);
    socket.on('data', (d: Buffer) => (received += d.length));
    socket.resume();
    await Promise.race([closed, sleep(3_000)]);
    expect(socket.destroyed).toBe(true);
    expect(received).toBeLessThan(64 * 1024 * 1024);
  });

  it('delivers an early upstream answer to a client still uploading, without resetting it', async () => {
    const head = `POST /plain/status/202 HTTP/1.1\r\nHost: x\r\n${KEY}\r\nContent-Length: ${8 * 1024 * 1024}\r\n\r\n`;
    const exchange = await rawExchange(gw.port, [head, Buffer.alloc(64 * 1024, 0x61)], { timeoutMs: 3_000 });
    expect(exchange.response?.status).toBe(202);
  });
});

describe('Expect: 100-continue', () => {
  const head = (key: string) => `POST /plain/upload HTTP/1.1\r\nHost: x\r\n${key}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n`;

  it('refuses a wrong key before inviting the body', async () => {
    const exchange = await rawExchange(gw.port, head('x-sluice-key: acme:wrong'));
    expect(exchange.raw.toString('latin1')).toMatch(/^HTTP\/1\.1 401 /);
  });

  it('invites the body once the request passed its checks, then forwards it', async () => {
    const socket = connect({ host: '127.0.0.1', port: gw.port });
    let text = '';
    socket.on('data', (d: Buffer) => (text += d.toString('latin1')));
    await new Promise((r) => socket.once('connect', r));
    socket.write(head(KEY));
    for (let i = 0; i < 50 && !text.includes('100 Continue'); i++) await sleep(20);
    expect(text).toMatch(/^HTTP\/1\.1 100 Continue\r\n\r\n$/);
    socket.write('hello');
    for (let i = 0; i < 50 && !text.includes('"length"'); i++) await sleep(20);
    socket.destroy();
    expect(text).toContain('HTTP/1.1 200 OK');
    expect(text).toContain('"length":5');
  });
});
