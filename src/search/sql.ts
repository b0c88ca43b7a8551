// SQL fragments for search planning (https://hl7.org/fhir/R4/search.html): text with `?` placeholders
// and the values bound to them. Client values only ever travel as bindings, never inside the text.

export type Binding = string | number | boolean | null | Date;

export interface SqlFragment {
  sql: string;
  bindings: Binding[];
}

export function frag(sql: string, ...bindings: Binding[]): SqlFragment {
  return { sql, bindings };
}

function join(parts: SqlFragment[], op: 'and' | 'or', empty: string): SqlFragment {
  const live = parts.filter((p) => p.sql !== '');
  if (!live.length) return { sql: empty, bindings: [] };
  if (live.length === 1) return live[0];
  return { sql: live.map((p) => `(${p.sql})`).join(` ${op} `), bindings: live.flatMap((p) => p.bindings) };
}

export function and(parts: SqlFragment[]): SqlFragment {
  return join(parts, 'and', 'true');
}

export function or(parts: SqlFragment[]): SqlFragment {
  return join(parts, 'or', 'false');
}

/** Fresh table aliases, so nested sub-queries (chains, composites, _has) never shadow each other. */
export class Aliases {
  private n = 0;
  next(prefix: string): string {
    this.n += 1;
    return `${prefix}${this.n}`;
  }
}
