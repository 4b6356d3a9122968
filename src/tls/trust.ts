/**
 * What `sluice ca` prints: where the CA certificate is, the certificate itself, and how to make
 * clients trust it. Never the key.
 */
import type { GatewayCa } from './ca.js';

/** A path as a shell word: as is when it is plain, single-quoted otherwise. */
function shellWord(text: string): string {
  return /^[\w@%+=:,./-]+$/.test(text) ? text : `'${text.replaceAll("'", `'\\''`)}'`;
}

export function trustInstructions(ca: GatewayCa): string {
  const path = shellWord(ca.certPath);
  return `CA certificate: ${ca.certPath}${ca.created ? ' (created now)' : ''}

${ca.certPem.trimEnd()}

Clients that send HTTPS through Sluice (HTTPS_PROXY) must trust this CA:

  Node.js          NODE_EXTRA_CA_CERTS=${path}   (added to Node's own roots)
  curl             curl --cacert ${path} ...   or   CURL_CA_BUNDLE=${path}
  Python requests  REQUESTS_CA_BUNDLE replaces certifi's bundle, so give it both:
                     cat "$(python3 -m certifi)" ${path} > bundle.pem
                     REQUESTS_CA_BUNDLE=$PWD/bundle.pem
  Go               SSL_CERT_FILE=${path} replaces the system roots on Linux; or use the system store
  System store     Debian/Ubuntu: sudo cp ${path} /usr/local/share/ca-certificates/sluice.crt && sudo update-ca-certificates
                   RHEL/Fedora:   sudo cp ${path} /etc/pki/ca-trust/source/anchors/sluice.crt && sudo update-ca-trust
                   macOS:         sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain ${path}

curl's --cacert and CURL_CA_BUNDLE, and Go's SSL_CERT_FILE, trust this CA alone: hosts tunnelled
without interception (intercept: false) then need a combined bundle like the Python one.`;
}
