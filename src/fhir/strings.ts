// String checks for FHIR content (https://hl7.org/fhir/R4/datatypes.html#string): PostgreSQL text and
// jsonb refuse U+0000 and unpaired UTF-16 surrogates, so they are refused at the edge with a path,
// never carried to the database (where they would surface as a 500).

// Without the `u` flag a regex sees UTF-16 code units, which is what lets it spot a lone half.
const BAD = /\u0000|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
const PLAIN_NAME = /^[A-Za-z_$][A-Za-z0-9_$-]{0,63}$/;

/** What is wrong with a string (undefined when it may be stored), without echoing its content. */
export function badCharacter(s: string): string | undefined {
  const m = BAD.exec(s);
  if (!m) return undefined;
  return m[0] === '\u0000' ? 'a NUL character (U+0000)' : 'an unpaired UTF-16 surrogate';
}

/** A member name safe to quote in a message or path; attacker-chosen names are not echoed. */
export function nameForPath(key: string): string {
  return PLAIN_NAME.test(key) ? key : '[?]';
}

/** Appends one step (member name or array index) to a FHIRPath-like location. */
export function step(path: string, key: string | number): string {
  return typeof key === 'number' ? `${path}[${key}]` : `${path}.${nameForPath(key)}`;
}

/**
 * Finds the first string (member names included) holding a NUL or a lone surrogate in a parsed JSON
 * value, breadth of any size and depth handled without recursion; returns its path and the problem.
 */
export function findBadString(value: unknown, root: string): { path: string; problem: string } | undefined {
  const stack: [unknown, string][] = [[value, root]];
  while (stack.length) {
    const [v, path] = stack.pop()!;
    if (typeof v === 'string') {
      const problem = badCharacter(v);
      if (problem) return { path, problem };
      continue;
    }
    if (v === null || typeof v !== 'object') continue;
    if (Array.isArray(v)) {
      for (let i = v.length - 1; i >= 0; i--) if (typeof v[i] === 'string' || (v[i] !== null && typeof v[i] === 'object')) stack.push([v[i], step(path, i)]);
      continue;
    }
    const keys = Object.keys(v);
    for (let i = keys.length - 1; i >= 0; i--) {
      const k = keys[i];
      const problem = badCharacter(k);
      if (problem) return { path: `${path} (a member name)`, problem };
      const x = (v as Record<string, unknown>)[k];
      if (typeof x === 'string' || (x !== null && typeof x === 'object')) stack.push([x, step(path, k)]);
    }
  }
  return undefined;
}
