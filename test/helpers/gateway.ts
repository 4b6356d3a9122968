/** Starts a gateway in-process on ephemeral ports, with its config in a temp file and its log captured. */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Gateway } from '../../src/main.js';

export interface TestGateway {
  gateway: Gateway;
  /** http://127.0.0.1:PORT of the proxy listener. */
  proxyUrl: string;
  /** Port of the proxy listener. */
  port: number;
  adminUrl: string;
  configPath: string;
  /** Every log line, parsed. */
  logs: Record<string, unknown>[];
  /** Every log line as written (to search for leaked secrets). */
  rawLogs: string[];
  close(): Promise<void>;
}

/** A fresh folder inside the run's temp folder (made and removed by helpers/build.ts). */
export function tempDir(): string {
  return mkdtempSync(join(process.env.SLUICE_TEST_TMP ?? tmpdir(), 'sluice-test-'));
}

export function writeConfig(yaml: string, dir = tempDir()): string {
  const path = join(dir, 'routes.yaml');
  writeFileSync(path, yaml);
  return path;
}

export async function startGateway(
  yaml: string,
  /** syncEveryMs: GatewayOptions.syncEveryMs (how often cool-downs are read from the store). */
  options: { env?: NodeJS.ProcessEnv; watch?: boolean; syncEveryMs?: number } = {},
): Promise<TestGateway> {
  const configPath = writeConfig(yaml);
  const rawLogs: string[] = [];
  const logs: Record<string, unknown>[] = [];
  const gateway = await Gateway.start({
    configPath,
    env: options.env ?? {},
    watch: options.watch ?? false,
    ...(options.syncEveryMs === undefined ? {} : { syncEveryMs: options.syncEveryMs }),
    logDestination: {
      write(line: string) {
        rawLogs.push(line);
        logs.push(JSON.parse(line) as Record<string, unknown>);
      },
    },
  });
  return {
    gateway,
    proxyUrl: `http://127.0.0.1:${gateway.proxyAddress.port}`,
    port: gateway.proxyAddress.port,
    adminUrl: `http://127.0.0.1:${gateway.adminAddress.port}`,
    configPath,
    logs,
    rawLogs,
    close: () => gateway.shutdown(),
  };
}

/** Basic credentials for Proxy-Authorization. */
export function proxyAuth(tenant: string, key: string): string {
  return `Basic ${Buffer.from(`${tenant}:${key}`).toString('base64')}`;
}

/** A config for tests: listeners on ephemeral loopback ports, two tenants, the given upstreams. */
export function testConfig(upstreams: string, extra = ''): string {
  return `listen:
  proxy: 127.0.0.1:0
  admin: 127.0.0.1:0
  drainTimeout: 5s
tenants:
  acme: { key: acme-secret-key-1 }
  globex: { key: globex-secret-key-2, weight: 2 }
${extra}
upstreams:
${upstreams}`;
}
