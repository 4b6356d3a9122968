/** Host names as DNS allows them (RFC 1123): what a CONNECT may name and a certificate may carry. */

/** Dot-separated labels of letters, digits and inner hyphens, each at most 63 long, 253 in all; lower case. */
const DNS_NAME = /^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/;

export function isHostName(name: string): boolean {
  return DNS_NAME.test(name);
}
