// Benchmark settings from the environment, read one way by every driver.

/** An integer setting: `value` when it is one and at least `min`, else `fallback`. */
export function int(value, fallback, min = 1) {
  const n = Number(value);
  return value !== undefined && value !== '' && Number.isInteger(n) && n >= min ? n : fallback;
}

/**
 * What the two overhead drivers (bench.mjs, https.mjs) share: run length, rounds, warm-up, the
 * concurrencies, the cores for the load and for the servers, and the one tenant they send as.
 */
export function overheadSettings(env) {
  return {
    SECONDS: int(env.BENCH_SECONDS, 5),
    ROUNDS: int(env.BENCH_ROUNDS, 3),
    WARMUP: int(env.BENCH_WARMUP, 2, 0),
    CONNS: (env.BENCH_CONNECTIONS ?? '1,50')
      .split(',')
      .map((s) => int(s.trim(), 0))
      .filter((n) => n > 0),
    LOAD_CPU: env.BENCH_LOAD_CPU ?? '0',
    SERVER_CPU: env.BENCH_SERVER_CPU ?? '1',
    TENANT: 'bench',
    KEY: 'bench-key-3f9c2a71d0e4',
  };
}
