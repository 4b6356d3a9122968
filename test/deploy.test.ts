/**
 * deploy/: the compose file validated by Compose itself, and the files it mounts checked against
 * each other (the gateway's config loads, Prometheus's config passes promtool, Grafana's
 * provisioning finds the dashboard where the compose file puts it). That the dashboard's queries
 * return data is test/prometheus.test.ts.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { loadConfigFile } from '../src/config/load.js';
import { allPanels, loadDashboard, panelQueries, variableQuery } from './helpers/dashboard.js';
import { tempDir } from './helpers/gateway.js';

const DEPLOY = resolve('deploy');
const COMPOSE_FILE = resolve(DEPLOY, 'docker-compose.yml');

interface ComposeService {
  build?: { context: string; dockerfile: string };
  image?: string;
  environment?: Record<string, string>;
  volumes?: string[];
  ports?: string[];
  command?: string[];
}

interface ComposeFile {
  services: Record<string, ComposeService>;
}

/**
 * The Compose this machine has: the v2 plugin (`docker compose`) when installed, else Debian's
 * docker-compose (v1.29, which validates against the same Compose Specification schema).
 */
function composeCommand(): string[] | undefined {
  const candidates = [['docker', 'compose'], ['docker-compose']];
  return candidates.find(([cmd, ...args]) => spawnSync(cmd!, [...args, 'version'], { stdio: 'ignore' }).status === 0);
}

/** Runs Compose on the deploy folder's file (or `file`) with none of the secrets set (their defaults apply). */
function compose(args: string[], file = COMPOSE_FILE): { status: number | null; stdout: string; stderr: string } {
  const command = composeCommand();
  if (!command) expect.fail('no Compose to validate with: apt-get install docker-compose (or the docker compose plugin), or run .ci/run');
  const [cmd, ...pre] = command;
  const result = spawnSync(cmd!, [...pre, '--project-directory', DEPLOY, '-f', file, ...args], {
    encoding: 'utf8',
    env: { PATH: process.env.PATH, HOME: process.env.HOME },
    timeout: 20_000,
  });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

const raw = parse(readFileSync(COMPOSE_FILE, 'utf8')) as ComposeFile;

describe('deploy/docker-compose.yml', () => {
  it('validates with `compose config`, and resolves to Sluice, Redis, Prometheus and Grafana', () => {
    const quiet = compose(['config', '--quiet']);
    expect(quiet.stderr).toBe('');
    expect(quiet.status).toBe(0);
    const rendered = compose(['config']);
    expect(rendered.status).toBe(0);
    const resolved = parse(rendered.stdout) as ComposeFile;
    expect(Object.keys(resolved.services).sort()).toEqual(['grafana', 'prometheus', 'redis', 'sluice']);
    // Built from the repository's Dockerfile.
    expect(resolved.services.sluice!.build!.context).toBe(resolve('.'));
    expect(existsSync(resolve(resolved.services.sluice!.build!.context, resolved.services.sluice!.build!.dockerfile))).toBe(true);
  });

  it('fails on a file with a key Compose does not know (the validator really validates)', () => {
    const text = readFileSync(COMPOSE_FILE, 'utf8').replace('    image: sluice:local\n', '    image: sluice:local\n    restarts: always\n');
    const file = join(tempDir(), 'docker-compose.yml');
    writeFileSync(file, text);
    const broken = compose(['config', '--quiet'], file);
    expect(broken.status).not.toBe(0);
    expect(broken.stderr).toContain('restarts');
  });

  it('takes every secret from the environment, with an empty default, and publishes on loopback only', () => {
    for (const [name, service] of Object.entries(raw.services)) {
      for (const [key, value] of Object.entries(service.environment ?? {})) {
        if (/KEY|TOKEN|SECRET|PASSWORD|SID/.test(key)) {
          // Grafana's admin password defaults to Grafana's own default, as documented.
          expect(value, `${name}.${key}`).toMatch(/^\$\{[A-Z0-9_]+:-(admin)?\}$/);
        }
      }
      for (const port of service.ports ?? []) expect(port, `${name} port`).toMatch(/^127\.0\.0\.1:/);
    }
  });

  it('mounts files that exist', () => {
    for (const [name, service] of Object.entries(raw.services)) {
      for (const volume of service.volumes ?? []) {
        const [source] = volume.split(':');
        if (source!.startsWith('.')) expect(existsSync(resolve(DEPLOY, source!)), `${name}: ${source}`).toBe(true);
      }
    }
  });
});

describe('the files the compose file mounts', () => {
  it('routes.yaml loads: Redis store at the redis service, admin listener open to the compose network', async () => {
    const loaded = await loadConfigFile(resolve(DEPLOY, 'routes.yaml'), {});
    expect(loaded.config.store).toMatchObject({ type: 'redis', url: 'redis://redis:6379/0' });
    expect(loaded.config.listen.admin).toEqual({ host: '0.0.0.0', port: 9090 });
    // The compose file's environment is what the config asks for, and a full one leaves nothing missing.
    const env = Object.fromEntries(Object.keys(raw.services.sluice!.environment!).map((k) => [k, `value-of-${k.toLowerCase()}`]));
    const full = await loadConfigFile(resolve(DEPLOY, 'routes.yaml'), env);
    expect(full.warnings).toEqual([]);
  });

  it('prometheus.yml passes promtool and scrapes the sluice service on its admin port', () => {
    const check = spawnSync('promtool', ['check', 'config', resolve(DEPLOY, 'prometheus.yml')], { encoding: 'utf8' });
    if (check.error) expect.fail(`promtool is missing (apt-get install prometheus, or run .ci/run): ${check.error.message}`);
    expect(check.stdout + check.stderr).toContain('SUCCESS');
    expect(check.status).toBe(0);
    const config = parse(readFileSync(resolve(DEPLOY, 'prometheus.yml'), 'utf8')) as {
      scrape_configs: { metrics_path: string; static_configs: { targets: string[] }[] }[];
    };
    expect(config.scrape_configs[0]).toMatchObject({ metrics_path: '/metrics', static_configs: [{ targets: ['sluice:9090'] }] });
    expect(raw.services.prometheus!.volumes).toContain('./prometheus.yml:/etc/prometheus/prometheus.yml:ro');
  });

  it("Grafana's provisioning points at the Prometheus service and at the folder the dashboard is mounted in", () => {
    const datasources = parse(readFileSync(resolve(DEPLOY, 'grafana/provisioning/datasources/prometheus.yml'), 'utf8')) as {
      datasources: { type: string; url: string; isDefault: boolean }[];
    };
    expect(datasources.datasources).toEqual([expect.objectContaining({ type: 'prometheus', url: 'http://prometheus:9090', isDefault: true })]);
    const providers = parse(readFileSync(resolve(DEPLOY, 'grafana/provisioning/dashboards/sluice.yml'), 'utf8')) as {
      providers: { type: string; options: { path: string } }[];
    };
    const folder = providers.providers[0]!.options.path;
    const mount = raw.services.grafana!.volumes!.find((v) => v.startsWith('./grafana/sluice.json:'));
    expect(mount).toBe(`./grafana/sluice.json:${folder}/sluice.json:ro`);
    expect(raw.services.grafana!.environment!.GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH).toBe(`${folder}/sluice.json`);
  });
});

describe('deploy/grafana/sluice.json', () => {
  const dashboard = loadDashboard();

  it('has a Prometheus data source variable and multi-select upstream and tenant selectors with All', () => {
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(36);
    const byName = new Map(dashboard.templating.list.map((v) => [v.name, v]));
    expect(byName.get('datasource')).toMatchObject({ type: 'datasource', query: 'prometheus' });
    for (const name of ['instance', 'upstream', 'tenant']) {
      expect(byName.get(name), name).toMatchObject({ type: 'query', multi: true, includeAll: true, allValue: '.*' });
      expect(variableQuery(byName.get(name)!)).toMatch(/^label_values\(sluice_\w+(\{[^}]*\})?, \w+\)$/);
    }
  });

  it('has the panels operators need, each on the selected data source, within the grid', () => {
    const panels = allPanels(dashboard).filter((p) => p.type !== 'row');
    const titles = panels.map((p) => p.title);
    for (const needed of [
      'Throughput per tenant',
      'Refusals by reason',
      'Utilisation of each limit',
      'Queue wait p95',
      'Queue depth',
      'Gateway overhead p99 against upstream latency p99',
      'Upstream responses by status class',
      'Circuit breakers',
      'Learned pauses',
      'Token expiry',
      'Refresh budget used',
      'Pool tokens out of rotation',
      'Store errors',
      'Store fallback',
      'Config reloads',
    ]) {
      expect(titles).toContain(needed);
    }
    expect(new Set(allPanels(dashboard).map((p) => p.id)).size).toBe(allPanels(dashboard).length);
    for (const panel of panels) {
      expect(panel.datasource, panel.title).toEqual({ type: 'prometheus', uid: '${datasource}' });
      expect(panel.gridPos.x + panel.gridPos.w, panel.title).toBeLessThanOrEqual(24);
      expect(panel.targets?.length, panel.title).toBeGreaterThan(0);
    }
  });

  it('filters every query by the instance selector', () => {
    const queries = panelQueries(dashboard);
    expect(queries.length).toBeGreaterThan(20);
    for (const q of queries) expect(q.expr, `${q.panel} ${q.refId}`).toContain('instance=~"$instance"');
  });
});
