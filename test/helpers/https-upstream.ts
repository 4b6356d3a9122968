/**
 * A real HTTPS server on 127.0.0.1 standing in for an upstream API, with a test CA of its own
 * (made with `openssl` in a fresh temp folder, so nothing else trusts it). The leaf certificate
 * is valid for 127.0.0.1 and the host names of TEST_HOSTS (or the names given), so a client can
 * ask for https://api.twilio.com through the gateway while only 127.0.0.1 is ever contacted.
 */
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, writeFileSync } from 'node:fs';
import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { tempDir } from './gateway.js';

const run = promisify(execFile);

/** The names the leaf is valid for by default (besides IP 127.0.0.1). */
export const TEST_HOSTS = ['localhost', 'api.twilio.com', 'api.baselinker.com', 'sdpondemand.manageengine.com', 'api.example.com'];

export interface HttpsUpstream {
  /** https://127.0.0.1:PORT */
  url: string;
  port: number;
  /** The test CA's certificate (PEM file): what `ca:` or a client's `--cacert` names to trust this server. */
  caPath: string;
  caPem: string;
  server: Server;
  close(): Promise<void>;
}

export interface HttpsUpstreamOptions {
  /** DNS names the leaf certificate is valid for (default TEST_HOSTS); IP 127.0.0.1 is always in it. */
  names?: string[];
}

/** The default handler: a JSON echo of the method, URL and headers. */
function echo(req: IncomingMessage, res: ServerResponse): void {
  req.resume();
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers }));
}

export async function startHttpsUpstream(handler: RequestListener = echo, options: HttpsUpstreamOptions = {}): Promise<HttpsUpstream> {
  const dir = tempDir();
  const pki = await makeTestPki(dir, options.names ?? TEST_HOSTS);
  const server = createServer({ key: pki.key, cert: pki.cert }, handler);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  return {
    url: `https://127.0.0.1:${port}`,
    port,
    caPath: pki.caPath,
    caPem: pki.caPem,
    server,
    async close() {
      server.closeAllConnections();
      server.close();
    },
  };
}

/** A CA (P-256, two days) and a leaf it signed for `names` and 127.0.0.1, as files in `dir`. */
async function makeTestPki(dir: string, names: string[]): Promise<{ caPath: string; caPem: string; key: string; cert: string }> {
  const openssl = (...args: string[]) =>
    run('openssl', args, { cwd: dir }).catch((err: NodeJS.ErrnoException) => {
      throw new Error(err.code === 'ENOENT' ? 'the tests need openssl on PATH (apt-get install openssl)' : String(err));
    });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await openssl('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=Sluice test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  await openssl('req', '-new', ...ec, '-keyout', 'leaf.key', '-out', 'leaf.csr', '-subj', `/CN=${names[0] ?? '127.0.0.1'}`);
  const altNames = [...names.map((n) => `DNS:${n}`), 'IP:127.0.0.1'].join(',');
  writeFileSync(
    join(dir, 'leaf.ext'),
    `basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=${altNames}\n`,
  );
  await openssl('x509', '-req', '-in', 'leaf.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2',
    '-extfile', 'leaf.ext', '-out', 'leaf.pem');
  const read = (file: string) => readFileSync(join(dir, file), 'utf8');
  return { caPath: join(dir, 'ca.pem'), caPem: read('ca.pem'), key: read('leaf.key'), cert: read('leaf.pem') };
}
