import { request } from 'undici';
import type { TestGateway } from './gateway.js';

/** An answer from the gateway, its body parsed when it is JSON ({} otherwise: the status says enough). */
export interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  /** The first Retry-After, if any. */
  retryAfter: string | undefined;
  text: string;
  body: Record<string, unknown>;
}

/** GET `path` on the gateway's proxy listener, as a base-URL request with `headers` (a tenant key). */
export async function getAnswer(gw: TestGateway, path: string, headers: Record<string, string>): Promise<Answer> {
  const res = await request(`${gw.proxyUrl}${path}`, { headers });
  const text = await res.body.text();
  let body: Record<string, unknown> = {};
  try {
    body = JSON.parse(text) as Record<string, unknown>;
  } catch {
    // not JSON
  }
  const retryAfter = res.headers['retry-after'];
  return { status: res.statusCode, headers: res.headers, retryAfter: Array.isArray(retryAfter) ? retryAfter[0] : retryAfter, text, body };
}
