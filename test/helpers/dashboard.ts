/**
 * Reads deploy/grafana/sluice.json the way Grafana would: every panel's PromQL (rows' nested panels
 * included) and the template variables, and turns a query into plain PromQL for Prometheus's API by
 * substituting the variables as Grafana does for an "All" selection.
 */
import { readFileSync } from 'node:fs';

export const DASHBOARD_PATH = 'deploy/grafana/sluice.json';

interface Target {
  refId: string;
  expr?: string;
  datasource?: { type?: string; uid?: string };
}

export interface Panel {
  id: number;
  type: string;
  title: string;
  datasource?: { type?: string; uid?: string };
  gridPos: { h: number; w: number; x: number; y: number };
  targets?: Target[];
  panels?: Panel[];
}

export interface TemplateVariable {
  name: string;
  type: string;
  query: string | { query: string };
  includeAll?: boolean;
  multi?: boolean;
  allValue?: string;
}

export interface Dashboard {
  uid: string;
  title: string;
  schemaVersion: number;
  panels: Panel[];
  templating: { list: TemplateVariable[] };
}

export interface PanelQuery {
  panel: string;
  refId: string;
  expr: string;
}

export function loadDashboard(path = DASHBOARD_PATH): Dashboard {
  return JSON.parse(readFileSync(path, 'utf8')) as Dashboard;
}

/** Every panel, rows' nested panels included. */
export function allPanels(dashboard: Dashboard): Panel[] {
  return dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
}

export function panelQueries(dashboard: Dashboard): PanelQuery[] {
  return allPanels(dashboard).flatMap((panel) =>
    (panel.targets ?? []).flatMap((t) => (t.expr === undefined ? [] : [{ panel: panel.title, refId: t.refId, expr: t.expr }])),
  );
}

/** The label_values(...) query of a query variable. */
export function variableQuery(variable: TemplateVariable): string {
  return typeof variable.query === 'string' ? variable.query : variable.query.query;
}

/**
 * The PromQL Prometheus receives when every selector is on "All" (Grafana puts the allValue,
 * ".*", in the regex matchers) and `$__rate_interval` is `rateInterval`.
 */
export function concreteQuery(expr: string, rateInterval: string, values: Record<string, string> = {}): string {
  return expr
    .replaceAll('$__rate_interval', rateInterval)
    .replace(/\$\{?(\w+)\}?/g, (_m, name: string) => values[name] ?? '.*');
}

/** The `metric{matchers}` selectors of a query, with each matcher as written. */
export function selectors(expr: string): { metric: string; matchers: string[] }[] {
  return [...expr.matchAll(/\b(sluice_[a-z0-9_]+)\s*(?:\{([^}]*)\})?/g)].map((m) => ({
    metric: m[1]!,
    matchers: (m[2] ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean),
  }));
}
