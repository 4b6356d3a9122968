/** How long the gateway may take to say it listens before startGateway kills it and gives up. */
export const START_TIMEOUT_MS: number;

export interface StartGatewayOptions {
  /** The built CLI (dist/cli.js): run as `node cli start --config configPath --no-watch`. */
  cli: string;
  configPath: string;
  /** The child's whole environment besides PATH (the secrets routes.yaml names). */
  env: Record<string, string>;
  /** Where the gateway's JSON log goes. */
  logPath: string;
  /** Default START_TIMEOUT_MS. */
  startTimeoutMs?: number;
  /** Aborted before the gateway listens: it is killed, and startGateway rejects. */
  signal?: AbortSignal;
}

export interface DemoGateway {
  proxyUrl: string;
  adminUrl: string;
  /** SIGTERM (the gateway drains), SIGKILL after `timeoutMs` (10 s); resolves with its exit code or signal. */
  stop(timeoutMs?: number): Promise<number | string | null>;
}

/**
 * Starts the gateway in a process group of its own and resolves once it listens. Rejects, having
 * waited for the child's end, when it exits first, has not listened within startTimeoutMs, or
 * `signal` aborts.
 */
export function startGateway(options: StartGatewayOptions): Promise<DemoGateway>;
