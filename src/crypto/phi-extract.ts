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

/**
 * The policy's elements of `node` at `segs`, as walk() finds them, without touching `node`: returns
 * `node` itself when nothing is removed below it, else a shallow copy (of each object and array on the
 * way down to a removed element) that shares everything else with it.
 */
function strip(node: unknown, segs: string[], pointer: string, out: Extracted): unknown {
  if (node === null || typeof node !== 'object') return node;
  if (Array.isArray(node)) {
    let copy: unknown[] | undefined;
    for (let i = 0; i < node.length; i++) {
      const r = strip(node[i], segs, `${pointer}/${i}`, out);
      if (r !== node[i]) (copy ??= node.slice())[i] = r;
    }
    return copy ?? node;
  }
  const obj = node as Record<string, unknown>;
  const [head, ...rest] = segs;
  if (!rest.length) {
    let copy: Record<string, unknown> | undefined;
    for (const key of [head, `_${head}`]) {
      if (key in obj) {
        out.push([`${pointer}/${esc(key)}`, obj[key]]);
        copy ??= { ...obj };
        delete copy[key];
      }
    }
    return copy ?? obj;
  }
  if (!(head in obj)) return obj;
  const r = strip(obj[head], rest, `${pointer}/${esc(head)}`, out);
  return r === obj[head] ? obj : { ...obj, [head]: r };
}

/**
 * extractProtected without changing `resource` and without copying it whole: the content returned
 * shares every part the policy leaves untouched with `resource` (neither may be changed afterwards
 * while the other is in use), and the extracted values are `resource`'s own. Same pointers, same order.
 */
export function withoutProtected(resource: Record<string, unknown>, policy: PhiPolicy, pointer = ''): { content: Record<string, unknown>; extracted: Extracted } {
  const out: Extracted = [];
  const type = resource.resourceType;
  if (typeof type !== 'string') return { content: resource, extracted: out };
  let content = resource;
  // Nested resources first, with their own type's policy (as extractProtected).
  if (Array.isArray(resource.contained)) {
    let list: unknown[] | undefined;
    resource.contained.forEach((c, i) => {
      if (!c || typeof c !== 'object') return;
      const r = withoutProtected(c as Record<string, unknown>, policy, `${pointer}/contained/${i}`);
      out.push(...r.extracted);
      if (r.content !== c) (list ??= [...(resource.contained as unknown[])])[i] = r.content;
    });
    if (list) content = { ...content, contained: list };
  }
  if (type === 'Bundle' && Array.isArray(resource.entry)) {
    let list: unknown[] | undefined;
    resource.entry.forEach((e, i) => {
      const r0 = (e as { resource?: unknown })?.resource;
      if (!r0 || typeof r0 !== 'object') return;
      const r = withoutProtected(r0 as Record<string, unknown>, policy, `${pointer}/entry/${i}/resource`);
      out.push(...r.extracted);
      if (r.content !== r0) (list ??= [...(resource.entry as unknown[])])[i] = { ...(e as Record<string, unknown>), resource: r.content };
    });
    if (list) content = { ...content, entry: list };
  }
  for (const path of policy.pathsFor(type)) content = strip(content, path.split('.'), pointer, out) as Record<string, unknown>;
  return { content, extracted: out };
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
