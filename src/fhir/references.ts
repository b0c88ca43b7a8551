// Reference rewriting for transaction Bundles (https://hl7.org/fhir/R4/bundle.html#references):
// every Reference.reference naming a Bundle entry's fullUrl becomes the id the server assigned,
// including references nested in extensions and contained resources, and narrative links.
// Both walks use an explicit stack and visit each JSON value once, so their cost is linear in the
// body and no nesting or array length can overflow the call stack.

/** Replaces references in place; returns how many were rewritten. */
export function rewriteReferences(root: unknown, map: ReadonlyMap<string, string>, undo?: [Record<string, unknown>, string, unknown][]): number {
  let n = 0;
  const stack: unknown[] = [root];
  while (stack.length) {
    const v = stack.pop();
    if (v === null || typeof v !== 'object') continue;
    if (Array.isArray(v)) {
      for (const x of v) if (x !== null && typeof x === 'object') stack.push(x);
      continue;
    }
    const o = v as Record<string, unknown>;
    for (const [k, x] of Object.entries(o)) {
      if (k === 'reference' && typeof x === 'string') {
        const hash = x.indexOf('#');
        const base = hash > 0 ? x.slice(0, hash) : x;
        const to = map.get(base);
        if (to !== undefined) {
          undo?.push([o, k, x]);
          o[k] = hash > 0 ? to + x.slice(hash) : to;
          n++;
        }
      } else if (k === 'div' && typeof x === 'string' && x.includes('urn:')) {
        undo?.push([o, k, x]);
        o[k] = x.replace(/(href|src)="([^"]+)"/g, (m, attr: string, url: string) => {
          const to = map.get(url);
          return to === undefined ? m : `${attr}="${to}"`;
        });
      } else if (x !== null && typeof x === 'object') stack.push(x);
    }
  }
  return n;
}

/** Collects the conditional references (Type?criteria) a resource holds. */
export function conditionalReferences(root: unknown): string[] {
  const out = new Set<string>();
  const stack: unknown[] = [root];
  while (stack.length) {
    const v = stack.pop();
    if (v === null || typeof v !== 'object') continue;
    if (Array.isArray(v)) {
      // item by item: spreading a 200,000-item array into push() overflows the call stack
      for (const x of v) if (x !== null && typeof x === 'object') stack.push(x);
      continue;
    }
    for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
      if (k === 'reference' && typeof x === 'string' && /^[A-Z][A-Za-z]+\?/.test(x)) out.add(x);
      else if (x !== null && typeof x === 'object') stack.push(x);
    }
  }
  return [...out];
}
