/** Every key path of the routes.yaml schema, as the README writes them: `upstreams.<name>.limits[].rate`. */
import type { z } from 'zod';

interface Def {
  type: string;
  shape?: Record<string, z.ZodType>;
  innerType?: z.ZodType;
  in?: z.ZodType;
  options?: z.ZodType[];
  valueType?: z.ZodType;
  element?: z.ZodType;
}

const defOf = (schema: z.ZodType) => (schema as unknown as { _zod: { def: Def } })._zod.def;

export function schemaKeys(schema: z.ZodType, prefix = ''): string[] {
  const def = defOf(schema);
  switch (def.type) {
    case 'object':
      return Object.entries(def.shape!).flatMap(([key, value]) => {
        const path = prefix === '' ? key : `${prefix}.${key}`;
        return [path, ...schemaKeys(value, path)];
      });
    case 'optional':
    case 'default':
    case 'prefault':
    case 'nullable':
      return schemaKeys(def.innerType!, prefix);
    case 'pipe':
      return schemaKeys(def.in!, prefix);
    case 'union':
      return [...new Set(def.options!.flatMap((o) => schemaKeys(o, prefix)))];
    case 'record':
      return schemaKeys(def.valueType!, `${prefix}.<name>`);
    case 'array':
      return schemaKeys(def.element!, `${prefix}[]`);
    default:
      return [];
  }
}
