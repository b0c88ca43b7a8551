// Removes the policy's elements from a resource (and its contained resources and Bundle entry
// resources) as JSON Pointer/value pairs, and puts them back exactly (RFC 6901 pointers).
import type { PhiPolicy } from './phi-policy.js';

export type Extracted = [pointer: string, value: unknown][];

const esc = (s: string) => s.replace(/~/g, '~0').replace(/\//g, '~1');
const unesc = (s: string) => s.replace(/~1/g, '/').replace(/~0/g, '~');

function walk(node: unknown, segs: string[], pointer: string, out: Extracted): void {
  if (node === null || typeof node !== 'object') return;
  if (Array.isArray(node)) {
    node.forEach((item, i) => walk(item, segs, `${pointer}/${i}`, out));
    return;
  }
  const obj = node as Record<string, unknown>;
  const [head, ...rest] = segs;
  if (!rest.length) {
    // The element and its primitive-extension sibling (_birthDate) carry the same data.
    for (const key of [head, `_${head}`]) {
      if (key in obj) {
        out.push([`${pointer}/${esc(key)}`, obj[key]]);
        delete obj[key];
      }
    }
    return;
  }
  if (head in obj) walk(obj[head], rest, `${pointer}/${esc(head)}`, out);
}

/** Strips protected elements in place; returns what was removed. */
export function extractProtected(resource: Record<string, unknown>, policy: PhiPolicy, pointer = ''): Extracted {
  const out: Extracted = [];
  const type = resource.resourceType;
  if (typeof type !== 'string') return out;
  // Nested resources first, with their own type's policy.
  if (Array.isArray(resource.contained)) {
    resource.contained.forEach((c, i) => {
      if (c && typeof c === 'object') out.push(...extractProtected(c as Record<string, unknown>, policy, `${pointer}/contained/${i}`));
    });
  }
  if (type === 'Bundle' && Array.isArray(resource.entry)) {
    resource.entry.forEach((e, i) => {
      const r = (e as { resource?: unknown })?.resource;
      if (r && typeof r === 'object') out.push(...extractProtected(r as Record<string, unknown>, policy, `${pointer}/entry/${i}/resource`));
    });
  }
  for (const path of policy.pathsFor(type)) walk(resource, path.split('.'), pointer, out);
  return out;
}

/** Puts extracted values back at their pointers (creating nothing else). */
export function restoreProtected(resource: Record<string, unknown>, extracted: Extracted): void {
  for (const [pointer, value] of extracted) {
    const segs = pointer.split('/').slice(1).map(unesc);
    let node: unknown = resource;
    for (let i = 0; i < segs.length - 1; i++) {
      const s = segs[i];
      if (node === null || typeof node !== 'object') throw new Error('sealed PHI does not fit the stored resource');
      node = Array.isArray(node) ? node[Number(s)] : (node as Record<string, unknown>)[s];
    }
    if (node === null || typeof node !== 'object' || Array.isArray(node)) throw new Error('sealed PHI does not fit the stored resource');
    const last = segs[segs.length - 1];
    if (last === '__proto__' || last === 'constructor' || last === 'prototype') throw new Error('forbidden member in sealed PHI');
    (node as Record<string, unknown>)[last] = value;
  }
}
