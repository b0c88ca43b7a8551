// _include:iterate's round limit (search.html#include; issue 14): the Bundle is marked incomplete only
// when the limit really left resources out, never for a chain that ends or a cycle.
import { describe, expect, test } from '@jest/globals';
import { resolveIncludes, type IncludeSource, type IncludeSpec, type ResourceRef } from '../../src/search/include.js';

/** Observations whose has-member links are given as a map id -> next ids. */
function source(links: Record<string, string[]>): IncludeSource<{ resourceType: string; id: string }> {
  return {
    forward: async (_type, ids, _params, _target, limit) => ids.flatMap((id) => (links[id] ?? []).map((n) => ({ type: 'Observation', id: n }))).slice(0, limit),
    reverse: async () => [],
    read: async (type, ids) => ids.map((id) => ({ resourceType: type, id })),
  };
}
const spec: IncludeSpec[] = [{ rev: false, sourceType: 'Observation', params: ['has-member'], iterate: true }];
const start: ResourceRef[] = [{ type: 'Observation', id: 'o0' }];
const chain = (n: number) => Object.fromEntries(Array.from({ length: n }, (_x, i) => [`o${i}`, [`o${i + 1}`]]));

describe('_include:iterate round limit', () => {
  test('a chain longer than the limit is cut and reported', async () => {
    const r = await resolveIncludes(source(chain(6)), start, spec, { iterateDepth: 2 });
    expect(r.resources.map((x) => x.id)).toEqual(['o1', 'o2', 'o3']);
    expect(r.depthCut).toBe(true);
  });

  test('a chain that ends exactly at the limit is complete', async () => {
    const r = await resolveIncludes(source(chain(3)), start, spec, { iterateDepth: 2 });
    expect(r.resources.map((x) => x.id)).toEqual(['o1', 'o2', 'o3']);
    expect(r.depthCut).toBe(false);
  });

  test('a cycle back to resources already in the Bundle is complete', async () => {
    const r = await resolveIncludes(source({ o0: ['o1'], o1: ['o2'], o2: ['o0', 'o1'] }), start, spec, { iterateDepth: 1 });
    expect(r.resources.map((x) => x.id)).toEqual(['o1', 'o2']);
    expect(r.depthCut).toBe(false);
  });

  test('depth 0 follows the first round only', async () => {
    const r = await resolveIncludes(source(chain(3)), start, spec, { iterateDepth: 0 });
    expect(r.resources.map((x) => x.id)).toEqual(['o1']);
    expect(r.depthCut).toBe(true);
  });
});
