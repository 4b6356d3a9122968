// A fake BaseLinker API (POST /connector.php) on 127.0.0.1 that enforces BaseLinker's limit the way
// BaseLinker answers it:
//
//   - credentials: `X-BLToken` must be one of `tokens`, else 401 with BaseLinker's ERROR_BAD_TOKEN
//     body (BaseLinker itself says so in a 200; the fake uses 401 so that a request that did not get
//     the gateway's credentials cannot pass for a success anywhere);
//   - `perMinute` requests (100) per token in any 60 s: the request over it blocks the token for
//     `blockMs` (rounded up to a whole second), and it and every request with that token until then
//     get a 200 with {"status":"ERROR","error_code":"ERROR_BLOCKED_TOKEN","error_message":"Query
//     limit exceeded, token blocked until YYYY-MM-DD HH:MM:SS"}, the time in Warsaw's wall clock
//     without an offset, as BaseLinker writes it.
//
// Other requests get {"status":"SUCCESS", ...} for the `method` form field. Every arrival is
// recorded (`arrivals`, with the token's index in `tokens`), and counted in `stats`.
import { createServer } from 'node:http';
import { close, listen, readBody, sendJson } from './http.mjs';
import { SlidingWindow } from './limits.mjs';

const WARSAW = new Intl.DateTimeFormat('en-GB', {
  timeZone: 'Europe/Warsaw',
  hourCycle: 'h23',
  year: 'numeric',
  month: '2-digit',
  day: '2-digit',
  hour: '2-digit',
  minute: '2-digit',
  second: '2-digit',
});

/** `YYYY-MM-DD HH:MM:SS` of an epoch ms on Warsaw's wall clock (CET/CEST). */
export function warsawTime(epochMs) {
  const part = Object.fromEntries(WARSAW.formatToParts(new Date(epochMs)).map((p) => [p.type, p.value]));
  return `${part.year}-${part.month}-${part.day} ${part.hour}:${part.minute}:${part.second}`;
}

/** @param {import('./baselinker.d.mts').BaseLinkerOptions} options */
export async function startBaseLinker(options) {
  const { tokens, perMinute = 100, blockMs = 60_000, toleranceMs = 50, now = Date.now } = options;
  const windows = tokens.map(() => new SlidingWindow({ count: perMinute, windowMs: 60_000, toleranceMs }));
  const blockedUntil = tokens.map(() => 0);
  /** @type {import('./baselinker.d.mts').FakeBaseLinker} */
  const baselinker = {
    url: '',
    arrivals: [],
    stats: { accepted: 0, unauthorized: 0, limited: 0 },
    blocks: 0,
    close: () => close(server),
  };

  const server = createServer(async (req, res) => {
    const at = now();
    const token = req.headers['x-bltoken'];
    const index = typeof token === 'string' ? tokens.indexOf(token) : -1;
    const arrival = { at, token: typeof token === 'string' ? token : undefined, tokenIndex: index, status: 0, blocked: false };
    baselinker.arrivals.push(arrival);
    const form = new URLSearchParams(await readBody(req));
    const answer = (status, body) => {
      arrival.status = status;
      sendJson(res, status, body);
    };
    if (index < 0) {
      baselinker.stats.unauthorized++;
      return answer(401, { status: 'ERROR', error_code: 'ERROR_BAD_TOKEN', error_message: 'Invalid user token' });
    }
    if (at >= blockedUntil[index] && !windows[index].take(at)) {
      blockedUntil[index] = Math.ceil((at + blockMs) / 1000) * 1000;
      baselinker.blocks++;
    }
    if (at < blockedUntil[index]) {
      arrival.blocked = true;
      baselinker.stats.limited++;
      return answer(200, {
        status: 'ERROR',
        error_code: 'ERROR_BLOCKED_TOKEN',
        error_message: `Query limit exceeded, token blocked until ${warsawTime(blockedUntil[index])}`,
      });
    }
    baselinker.stats.accepted++;
    answer(200, { status: 'SUCCESS', method: form.get('method') ?? '', orders: [] });
  });
  baselinker.url = await listen(server);
  return baselinker;
}
