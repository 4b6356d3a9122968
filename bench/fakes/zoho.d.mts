import type { FakeApiStats } from './http.mjs';

/** How the endpoint answers: a token, or one of the failures a real one has. */
export type EndpointMode = 'token' | 'server_error' | 'invalid_grant' | 'zoho_invalid_code' | 'zoho_throttled' | 'http_429';

export interface TokenEndpointOptions {
  /** expires_in of the tokens it issues, seconds (default 3600, Zoho's). */
  lifetimeS?: number;
  /** Each answer waits this long (default 0). */
  delayMs?: number;
  /** When given, only this client and refresh token get tokens (else Zoho's invalid_client). */
  client?: { clientId: string; clientSecret: string; refreshToken: string };
  /** Zoho's refresh limits: at most `max` tokens in any `perS`, at least `everyS` apart. None by default. */
  refreshLimit?: { max: number; perS: number; everyS?: number };
  /** Arrival jitter forgiven by the refresh limits (default 50 ms). */
  toleranceMs?: number;
  /** The clock, epoch ms (default Date.now). */
  now?: () => number;
}

export interface TokenCall {
  at: number;
  /** The form it received, with secrets as sent (tests check them). */
  form: Record<string, string>;
  authorization: string | undefined;
  /** 'token' when it issued one, 'throttled' past refreshLimit, 'invalid_client', or the failure mode. */
  outcome: EndpointMode | 'throttled' | 'invalid_client' | 'pending';
}

export interface FakeTokenEndpoint {
  /** The token URL: http://127.0.0.1:PORT/oauth/v2/token. */
  url: string;
  calls: TokenCall[];
  /** Every access token issued, oldest first. */
  issued: string[];
  mode: EndpointMode;
  /** expires_in of the tokens it issues, seconds. */
  lifetimeS: number;
  /** Each answer waits this long. */
  delayMs: number;
  /** When an issued token expires (epoch ms), undefined for one it did not issue. */
  expiresAt(token: string): number | undefined;
  /** Answers wait until released (each call to hold() returns its release). */
  hold(): () => void;
  close(): Promise<void>;
}

export interface ServiceDeskOptions {
  /** The scheme before the token in Authorization (default Zoho-oauthtoken, routes.yaml's format). */
  scheme?: string;
  /** Default 'current'. */
  accept?: ServiceDeskAccept;
  /** Its own limits: at most `count` requests in any `windowMs`, else 429 with Retry-After. */
  rates?: { count: number; windowMs: number }[];
  toleranceMs?: number;
  now?: () => number;
}

/** current: only the last token issued; unexpired: any issued token not yet expired; none: 401 to all. */
export type ServiceDeskAccept = 'current' | 'unexpired' | 'none';

export interface ServiceDeskArrival {
  at: number;
  method: string;
  path: string;
  authorization: string | undefined;
  /** Its token was accepted (it may still have been refused for a limit). */
  accepted: boolean;
  status: number;
}

export interface FakeServiceDesk {
  url: string;
  arrivals: ServiceDeskArrival[];
  accept: ServiceDeskAccept;
  stats: FakeApiStats;
  close(): Promise<void>;
}

export function startTokenEndpoint(options?: TokenEndpointOptions): Promise<FakeTokenEndpoint>;
export function startServiceDesk(endpoint: FakeTokenEndpoint, options?: ServiceDeskOptions): Promise<FakeServiceDesk>;
