/**
 * `${NAME}` and `${NAME:-default}` substitution for routes.yaml.
 *
 * Substituting straight into the text would break YAML (`tokens: [${A}, ${B}]` is a flow mapping
 * to the parser, and a value with `#` or `: ` in it changes the document's shape). So references
 * are first swapped for inert placeholders, the text is parsed, and the placeholders are resolved
 * inside the parsed scalars: line numbers stay exact and a value can hold any character.
 * `$${` writes a literal `${`.
 */
import { isMap, isScalar, isSeq, type Document, type Node } from 'yaml';
import { keyText, type ConfigPath } from './paths.js';

const REFERENCE = /\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;
const PLACEHOLDER = /__sluice_env_(\d+)__/g;
const WHOLE_PLACEHOLDER = /^__sluice_env_(\d+)__$/;

interface Reference {
  name: string;
  /** The environment's value, the default, or undefined when neither is there. */
  value: string | undefined;
}

export interface Placeheld {
  text: string;
  references: Reference[];
}

/** Replace every `${...}` with a placeholder, recording what it stands for. */
export function placehold(text: string, env: NodeJS.ProcessEnv): Placeheld {
  const references: Reference[] = [];
  const out = text.replace(REFERENCE, (match, name: string | undefined, fallback: string | undefined) => {
    if (name === undefined) return match === '$${' ? '${' : match;
    const fromEnv = env[name];
    const value = fromEnv !== undefined && fromEnv !== '' ? fromEnv : fallback;
    references.push({ name, value });
    return `__sluice_env_${references.length - 1}__`;
  });
  return { text: out, references };
}

/** A value whose environment variables were not set, keyed by its path in the document. */
export interface MissingVariables {
  path: ConfigPath;
  names: string[];
}

/**
 * Resolve the placeholders in the document's scalars, in place. An unquoted value that is a
 * reference and nothing else takes the type its text has (`port: ${PORT:-8080}` is a number).
 */
export function resolvePlaceholders(doc: Document, held: Placeheld): MissingVariables[] {
  const missing: MissingVariables[] = [];
  const walk = (node: Node | null | undefined, path: ConfigPath): void => {
    if (isMap(node)) {
      for (const pair of node.items) {
        walk(pair.value as Node | null, [...path, keyText(pair.key)]);
      }
    } else if (isSeq(node)) {
      node.items.forEach((item, i) => walk(item as Node | null, [...path, i]));
    } else if (isScalar(node) && typeof node.value === 'string' && node.value.includes('__sluice_env_')) {
      const names: string[] = [];
      const text = node.value;
      const resolved = text.replace(PLACEHOLDER, (_m, index: string) => {
        const ref = held.references[Number(index)]!;
        if (ref.value === undefined) names.push(ref.name);
        return ref.value ?? '';
      });
      if (names.length > 0) missing.push({ path, names });
      node.value = node.type === 'PLAIN' && WHOLE_PLACEHOLDER.test(text) ? typed(resolved) : resolved;
    }
  };
  walk(doc.contents, []);
  return missing;
}

function typed(text: string): string | number | boolean {
  // Only when the number reads back the same: "0123" or a 20-digit token stays text.
  if (/^-?\d+(\.\d+)?$/.test(text) && String(Number(text)) === text) return Number(text);
  if (text === 'true' || text === 'false') return text === 'true';
  return text;
}
