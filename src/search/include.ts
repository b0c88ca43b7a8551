// _include and _revinclude (https://hl7.org/fhir/R4/search.html#include): [source]:[param][:target],
// `*` for every reference parameter of the source, :iterate to follow the included resources too.
// Fan-out is capped; a cut result is reported so the Bundle is marked incomplete.
import { FhirError } from '../fhir/errors.js';
import { isResourceType } from '../fhir/definitions.js';
import { phiParamIndexed, type PhiIndexMode } from './phi-seam.js';
import { paramsOf } from './registry.js';

export interface IncludeSpec {
  rev: boolean;
  sourceType: string;
  /** Reference parameter codes of sourceType followed (all of them for `*`). */
  params: string[];
  targetType?: string;
  iterate: boolean;
}

/** Most resources added by includes to one page. */
export const MAX_INCLUDED = 1000;
/** Rounds of :iterate after the first round, unless the caller sets it (SEARCH_INCLUDE_ITERATE_DEPTH). */
export const DEFAULT_ITERATE_DEPTH = 3;

/** Parses the _include/_revinclude values of a request; bad ones are ignored and reported (400 when strict). */
export function parseIncludes(types: string | readonly string[], raw: { rev: boolean; value: string }[], opts: { strict: boolean; phi: PhiIndexMode }): { list: IncludeSpec[]; ignored: { name: string; reason: string }[] } {
  const searched = typeof types === 'string' ? [types] : types;
  const type = searched[0];
  const list: IncludeSpec[] = [];
  const ignored: { name: string; reason: string }[] = [];
  for (const r of raw) {
    const name = r.rev ? '_revinclude' : '_include';
    const iterate = r.value.endsWith(':iterate');
    const v = iterate ? r.value.slice(0, -':iterate'.length) : r.value;
    const fail = (reason: string) => {
      if (opts.strict) throw new FhirError('invalid-search', `${name}: ${reason}`);
      ignored.push({ name: `${name}=${v.slice(0, 64)}`, reason });
    };
    if (v === '*') {
      // _include=* : every reference parameter of the searched type.
      if (r.rev) fail('_revinclude=* is not supported');
      else for (const t of searched) list.push({ rev: false, sourceType: t, params: referenceParams(t), iterate });
      continue;
    }
    const [source, param, target, extra] = v.split(':');
    if (extra !== undefined || !source || !param || !isResourceType(source)) {
      fail('the value must be [type]:[parameter] or [type]:[parameter]:[target type]');
      continue;
    }
    if (!r.rev && !iterate && !searched.includes(source)) {
      fail(`the source type must be ${searched.length === 1 ? type : 'a searched type'} (or use :iterate)`);
      continue;
    }
    const params = param === '*' ? referenceParams(source) : [param];
    const spec = param === '*' ? undefined : paramsOf(source).supported.get(param);
    if (param !== '*' && (!spec || spec.kind !== 'reference' || !phiParamIndexed(source, param, opts.phi))) {
      fail(`"${param.slice(0, 64)}" is not a reference parameter of ${source}`);
      continue;
    }
    if (target !== undefined && !isResourceType(target)) {
      fail('the target is not a resource type');
      continue;
    }
    list.push({ rev: r.rev, sourceType: source, params, ...(target ? { targetType: target } : {}), iterate });
  }
  return { list, ignored };
}

function referenceParams(type: string): string[] {
  return [...paramsOf(type).supported.values()].filter((p) => p.kind === 'reference').map((p) => p.code);
}

export interface ResourceRef {
  type: string;
  id: string;
}

/** What the include algorithm needs from storage. */
export interface IncludeSource<R> {
  /** Targets of `params` from the given sources (optionally of one target type), at most `limit`. */
  forward(sourceType: string, ids: string[], params: string[], targetType: string | undefined, limit: number): Promise<ResourceRef[]>;
  /** Resources of `sourceType` whose `params` refer to the given targets, at most `limit`. */
  reverse(sourceType: string, params: string[], targetType: string, ids: string[], limit: number): Promise<ResourceRef[]>;
  read(type: string, ids: string[]): Promise<R[]>;
}

/**
 * Resolves the includes of a page of matches; `truncated` when the fan-out cap cut the result,
 * `depthCut` when :iterate stopped at its round limit while the next round would have added more.
 */
export async function resolveIncludes<R extends { resourceType: string; id: string }>(
  source: IncludeSource<R>,
  matches: ResourceRef[],
  specs: IncludeSpec[],
  opts: { iterateDepth?: number } = {},
): Promise<{ resources: R[]; truncated: boolean; depthCut: boolean }> {
  const depth = opts.iterateDepth ?? DEFAULT_ITERATE_DEPTH;
  const seen = new Set(matches.map((m) => `${m.type}/${m.id}`));
  const out: R[] = [];
  let frontier = matches;
  let truncated = false;
  let depthCut = false;
  // One round past the limit only looks: the Bundle is marked incomplete only when something was
  // really left out. Its lookups may return every ref already seen, so one more than those suffices.
  for (let round = 0; round <= depth + 1 && frontier.length && !truncated; round++) {
    const probe = round > depth;
    const active = specs.filter((s) => round === 0 || s.iterate);
    if (!active.length) break;
    const found: ResourceRef[] = [];
    const byType = new Map<string, string[]>();
    for (const f of frontier) byType.set(f.type, [...(byType.get(f.type) ?? []), f.id]);
    for (const s of active) {
      const room = probe ? seen.size + 1 : MAX_INCLUDED - out.length - found.length + 1;
      if (room <= 1) break;
      if (!s.rev) {
        const ids = byType.get(s.sourceType);
        if (ids?.length && s.params.length) found.push(...(await source.forward(s.sourceType, ids, s.params, s.targetType, room)));
      } else {
        for (const [t, ids] of byType) {
          if (s.targetType && s.targetType !== t) continue;
          found.push(...(await source.reverse(s.sourceType, s.params, t, ids, room)));
        }
      }
    }
    if (probe) {
      depthCut = found.some((f) => !seen.has(`${f.type}/${f.id}`));
      break;
    }
    const fresh: ResourceRef[] = [];
    for (const f of found) {
      const key = `${f.type}/${f.id}`;
      if (seen.has(key)) continue;
      if (out.length + fresh.length >= MAX_INCLUDED) {
        truncated = true;
        break;
      }
      seen.add(key);
      fresh.push(f);
    }
    const readByType = new Map<string, string[]>();
    for (const f of fresh) readByType.set(f.type, [...(readByType.get(f.type) ?? []), f.id]);
    for (const [t, ids] of readByType) out.push(...(await source.read(t, ids)));
    frontier = fresh;
  }
  return { resources: out, truncated, depthCut };
}
