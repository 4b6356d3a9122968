/**
 * Egress safety: the gateway holds credentials and sits inside the network, so a target that
 * resolves to a loopback, private, link-local or otherwise non-public address (the cloud metadata
 * service at 169.254.169.254 above all) is refused unless its upstream says `allowPrivate: true`.
 *
 * The check runs on the addresses a connection is about to use, in the `lookup` that net.connect
 * and tls.connect call (undici passes its `connect` options through to them): whatever DNS says at
 * that moment is what is checked, so a name that resolved to a public address at start-up and to
 * 127.0.0.1 later (DNS rebinding) is refused then. IP-literal targets never reach a lookup; the
 * config loader refuses those (and localhost) with `literalRange`.
 */
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { BlockList, isIP, type LookupFunction } from 'node:net';

/** Named ranges, most specific first: the first that holds an address names it. */
const RANGES: [name: string, subnets: [network: string, prefix: number][]][] = [
  ['link-local (cloud metadata)', [['169.254.169.254', 32]]],
  ['CGNAT (cloud metadata)', [['100.100.100.200', 32]]], // Alibaba Cloud
  ['private (cloud metadata)', [['fd00:ec2::254', 128]]], // AWS over IPv6
  ['cloud metadata', [['168.63.129.16', 32]]], // Azure's WireServer, in a public range
  ['broadcast', [['255.255.255.255', 32]]],
  ['"this network"', [['0.0.0.0', 8]]],
  ['unspecified', [['::', 128]]],
  ['loopback', [['127.0.0.0', 8], ['::1', 128]]],
  ['private', [['10.0.0.0', 8], ['172.16.0.0', 12], ['192.168.0.0', 16], ['fc00::', 7]]],
  ['CGNAT', [['100.64.0.0', 10]]],
  ['link-local', [['169.254.0.0', 16], ['fe80::', 10]]],
  ['site-local', [['fec0::', 10]]],
  ['IETF protocol assignments', [['192.0.0.0', 24]]],
  ['documentation', [['192.0.2.0', 24], ['198.51.100.0', 24], ['203.0.113.0', 24], ['2001:db8::', 32], ['3fff::', 20]]],
  ['benchmarking', [['198.18.0.0', 15], ['2001:2::', 48]]],
  ['multicast', [['224.0.0.0', 4], ['ff00::', 8]]],
  ['reserved', [['240.0.0.0', 4]]],
  ['discard-only', [['100::', 64]]],
  ['NAT64 local use', [['64:ff9b:1::', 48]]],
  ['IPv4-compatible (deprecated)', [['::', 96]]],
];

const LISTS: [name: string, list: BlockList][] = RANGES.map(([name, subnets]) => {
  const list = new BlockList();
  for (const [network, prefix] of subnets) list.addSubnet(network, prefix, isIP(network) === 6 ? 'ipv6' : 'ipv4');
  return [name, list];
});

/**
 * IPv6 forms that carry an IPv4 address in their last 32 bits (6to4 in bits 16-47): each is
 * judged by the IPv4 address it stands for, so ::ffff:127.0.0.1 is loopback and 64:ff9b::a9fe:a9fe
 * is the metadata service, while 64:ff9b::808:808 (a public address through NAT64) is public.
 */
const EMBEDDING: [form: string, matches: (g: number[]) => boolean, at: number][] = [
  ['IPv4-mapped', (g) => g.slice(0, 5).every((x) => x === 0) && g[5] === 0xffff, 6],
  ['IPv4-translated', (g) => g.slice(0, 4).every((x) => x === 0) && g[4] === 0xffff && g[5] === 0, 6],
  ['NAT64', (g) => g[0] === 0x64 && g[1] === 0xff9b && g.slice(2, 6).every((x) => x === 0), 6],
  ['6to4', (g) => g[0] === 0x2002, 1],
];

/**
 * The name of the refused range `address` is in ("loopback", "private", "link-local (cloud
 * metadata)", "IPv4-mapped loopback", ...), or undefined for a public address (and for text that
 * is no IP address).
 */
export function privateRange(address: string): string | undefined {
  const family = isIP(address);
  if (family === 4) return LISTS.find(([, list]) => list.check(address, 'ipv4'))?.[0];
  if (family !== 6) return undefined;
  const plain = address.replace(/%.*$/, ''); // fe80::1%eth0: the zone is no part of the address
  const groups = ipv6Groups(plain);
  for (const [form, matches, at] of EMBEDDING) {
    if (!matches(groups)) continue;
    const range = privateRange([groups[at]! >> 8, groups[at]! & 0xff, groups[at + 1]! >> 8, groups[at + 1]! & 0xff].join('.'));
    return range === undefined ? undefined : `${form} ${range}`;
  }
  return LISTS.find(([, list]) => list.check(plain, 'ipv6'))?.[0];
}

/**
 * The refused range of a host as written in a URL, known without DNS: an IP literal (IPv6 in
 * brackets or not) or localhost, which is loopback by definition (RFC 6761). Undefined for other
 * names: those are checked on the addresses they resolve to, at each connection.
 */
export function literalRange(host: string): string | undefined {
  if (/(^|\.)localhost\.?$/i.test(host)) return 'loopback';
  return privateRange(host.replace(/^\[(.*)\]$/, '$1'));
}

/** The eight 16-bit groups of a valid IPv6 address (dotted IPv4 tail allowed). */
function ipv6Groups(address: string): number[] {
  const dotted = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(address);
  const text = dotted
    ? `${address.slice(0, dotted.index)}${((+dotted[1]! << 8) | +dotted[2]!).toString(16)}:${((+dotted[3]! << 8) | +dotted[4]!).toString(16)}`
    : address;
  const [head = '', tail] = text.split('::');
  const parse = (part: string) => (part === '' ? [] : part.split(':').map((h) => parseInt(h, 16)));
  const front = parse(head);
  const back = tail === undefined ? [] : parse(tail);
  return [...front, ...new Array<number>(8 - front.length - back.length).fill(0), ...back];
}

/** A connection the gateway refused to open: its target resolved to a refused address. */
export class EgressRefusedError extends Error {
  readonly code = 'ESLUICE_EGRESS';
  constructor(
    readonly host: string,
    readonly address: string,
    readonly range: string,
  ) {
    super(`${host} resolves to ${address} (${range}); the gateway refuses private destinations unless the upstream sets allowPrivate: true`);
    this.name = 'EgressRefusedError';
  }
}

/** The refusal for connecting to `host` at `address`, or undefined when the address is public. */
export function egressRefusal(host: string, address: string): EgressRefusedError | undefined {
  const range = privateRange(address);
  return range === undefined ? undefined : new EgressRefusedError(host, address, range);
}

/** `err`, or the error it wraps (undici may), when it is an egress refusal. */
export function asEgressRefusal(err: unknown): EgressRefusedError | undefined {
  for (let e = err, depth = 0; e instanceof Error && depth < 3; e = e.cause, depth++) {
    if ((e as { code?: unknown }).code === 'ESLUICE_EGRESS') return e as EgressRefusedError;
  }
  return undefined;
}

/**
 * A `lookup` for net.connect, tls.connect and undici's `connect` options. It resolves every
 * address of the host (whatever `options.all` asks for) and fails with an EgressRefusedError when
 * any of them is in a refused range: a name that answers one public and one private address could
 * otherwise be steered to the private one. With `allowPrivate` it is plain dns.lookup.
 */
export function guardedLookup(allowPrivate: boolean): LookupFunction {
  if (allowPrivate) return dnsLookup as LookupFunction;
  return (hostname, options, callback) => {
    dnsLookup(hostname, { ...options, all: true }, (err: NodeJS.ErrnoException | null, addresses: LookupAddress[]) => {
      if (err) return callback(err, '');
      for (const { address } of addresses) {
        const refusal = egressRefusal(hostname, address);
        if (refusal) return callback(refusal, '');
      }
      if (options.all) return callback(null, addresses);
      const first = addresses[0];
      if (!first) return callback(Object.assign(new Error(`no address for ${hostname}`), { code: 'ENOTFOUND' }), '');
      callback(null, first.address, first.family);
    });
  };
}
