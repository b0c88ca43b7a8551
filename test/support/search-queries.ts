// Query generation for the search differential test (https://hl7.org/fhir/R4/search.html): from the
// values the loaded resources hold, seeded and deterministic for a given corpus order, queries over
// every parameter type with modifiers and prefixes, positives and negatives, OR and AND combinations,
// chains and _has. Only the matching is left to the two implementations being compared.
import type { Resource } from 'fhir/r4.js';
import type { referenceEntries } from './memory-match.js';
import { MemorySearch, officialParams, type SpDef } from './memory-search.js';
import { candidates, compositeCandidates, pools, Rng, shiftDay, shuffle, type Candidate } from './search-candidates.js';

export interface GenQuery {
  type: string;
  pairs: [string, string][];
  /** What the query exercises, for the summary (e.g. `token:not`, `date:ge`, `chain`). */
  group: string;
}

/** Parameters and query forms not generated, with the reason (printed in the summary). */
export const NOT_GENERATED: Readonly<Record<string, string>> = {
  phonetic: 'the phonetic algorithm is left to the server (search.html#string); no second implementation to compare with',
  'Bundle.composition': 'the expression yields a resource (Bundle.entry[0].resource): only meaningful for chaining into the document',
  'Bundle.message': 'the expression yields a resource (Bundle.entry[0].resource): only meaningful for chaining into the message',
  ':in, :not-in': 'the in-memory implementation expands no value sets (test/integration/search-value-sets.test.ts covers them)',
  ':above/:below on references': 'Vesta does not serve these modifiers (it answers 400), so there is no answer to compare',
  '_id:not and _id=|id': 'Vesta serves _id as the logical id only (search.html#id): it answers 400 to modifiers on _id; only plain ids are generated',
};

/** Resource types that get more queries per parameter. */
const CORE = new Set(['Patient', 'Observation', 'Encounter', 'Condition', 'MedicationRequest', 'Procedure', 'Immunization', 'DiagnosticReport', 'Claim', 'ExplanationOfBenefit', 'Practitioner', 'Organization']);

/** Least number of queries per group (e.g. `number:sa`, `token:of-type`) when the corpus has the values. */
const MIN_GROUP = 10;

// ------------------------------------------------------------------------------------------- generator

function stableResources(ms: MemorySearch, type: string): Resource[] {
  return ms.resources(type).sort((a, b) => ms.orderKey(a).localeCompare(ms.orderKey(b)));
}

function paramsOf(type: string): SpDef[] {
  return [...(officialParams().get(type)?.values() ?? [])]
    .filter((d) => d.type !== 'special' && d.expression && !NOT_GENERATED[d.code] && !NOT_GENERATED[`${type}.${d.code}`])
    .sort((a, b) => a.code.localeCompare(b.code));
}

function query(type: string, group: string, ...pairs: [string, string][]): GenQuery {
  return { type, group, pairs };
}

const paramName = (code: string, c: Candidate) => (c.modifier ? `${code}:${c.modifier}` : code);

/**
 * The queries of the differential test: per type and parameter, values drawn from the corpus with
 * modifiers and prefixes, :missing, OR and AND combinations, chains and _has. At least `min` queries.
 */
export function generateQueries(ms: MemorySearch, seed: number, min = 2000): GenQuery[] {
  const rng = new Rng(seed);
  const out: GenQuery[] = [];
  const plain = new Map<string, { def: SpDef; cands: Candidate[] }[]>();
  /** Candidates not chosen at first, for topping up thin groups. */
  const spare: { type: string; def: SpDef; c: Candidate }[] = [];
  for (const type of ms.types()) {
    const resources = stableResources(ms, type);
    const list: { def: SpDef; cands: Candidate[] }[] = [];
    for (const def of paramsOf(type)) {
      const p = def.type === 'composite' ? undefined : pools(ms, type, def, resources);
      const cands = p ? candidates(rng, def, p, ms.baseUrl) : compositeCandidates(rng, ms, type, def, resources);
      if (!cands.length) continue;
      list.push({ def, cands });
      const core = CORE.has(type);
      const common = def.code.startsWith('_');
      const budget = core ? (common ? 2 : 3) : common ? (rng.chance(0.2) ? 1 : 0) : 1;
      const order = shuffle(rng, cands);
      for (const c of order.slice(0, budget)) out.push(query(type, c.group, [paramName(def.code, c), c.value]));
      spare.push(...order.slice(budget).map((c) => ({ type, def, c })));
      // Prefixes and unit forms are drawn at random: more draws for the parameters that take them.
      if (p && ['number', 'quantity', 'date'].includes(def.type)) {
        for (let i = 0; i < (def.type === 'date' ? 1 : 4); i++) spare.push(...candidates(rng, def, p, ms.baseUrl).map((c) => ({ type, def, c })));
      }
      // :missing on every parameter the type's resources hold values for: which resources have a value
      // at all is the widest check of extraction.
      if (def.code !== '_id') out.push(query(type, `${def.type}:missing`, [`${def.code}:missing`, core || rng.chance(0.8) ? 'false' : 'true']));
      // OR: several values of one parameter.
      const plainCands = cands.filter((c) => !c.modifier || c.modifier === 'exact' || c.modifier === 'contains' || c.modifier === 'text');
      if (plainCands.length >= 2 && (core ? !common : rng.chance(0.1))) {
        const mod = plainCands[0].modifier;
        const same = plainCands.filter((c) => c.modifier === mod);
        if (same.length >= 2) out.push(query(type, 'or', [paramName(def.code, same[0]), same.slice(0, 2 + rng.int(2)).map((c) => c.value).join(',')]));
      }
    }
    plain.set(type, list);
    // AND: two parameters of the type, or one parameter twice (a date window).
    const ands = CORE.has(type) ? 8 : rng.chance(0.5) ? 1 : 0;
    for (let i = 0; i < ands && list.length >= 2; i++) {
      const a = rng.pick(list);
      const b = rng.pick(list);
      const ca = rng.pick(a.cands);
      const cb = rng.pick(b.cands);
      out.push(query(type, 'and', [paramName(a.def.code, ca), ca.value], [paramName(b.def.code, cb), cb.value]));
    }
    const dates = list.filter((x) => x.def.type === 'date');
    if (dates.length && CORE.has(type)) {
      for (let i = 0; i < 3; i++) {
        const d = rng.pick(dates);
        const texts = pools(ms, type, d.def, resources).dates;
        if (!texts.length) continue;
        const x = rng.pick(texts).slice(0, 10);
        out.push(query(type, 'and:date-window', [d.def.code, `ge${shiftDay(x, -30 - rng.int(300))}`], [d.def.code, `le${shiftDay(x, rng.int(300))}`]));
      }
    }
  }
  // Every kind of value (group) at least MIN_GROUP times where the corpus allows it.
  const count = new Map<string, number>();
  for (const q of out) count.set(q.group, (count.get(q.group) ?? 0) + 1);
  for (const x of shuffle(rng, spare)) {
    const n = count.get(x.c.group) ?? 0;
    if (n >= MIN_GROUP) continue;
    count.set(x.c.group, n + 1);
    out.push(query(x.type, x.c.group, [paramName(x.def.code, x.c), x.c.value]));
  }
  out.push(...chains(rng, ms, plain));
  if (out.length < min) throw new Error(`only ${out.length} queries generated (at least ${min} wanted)`);
  return out;
}

/** Chains (ref[:Type].param=) and reverse chains (_has:Type:ref:param=) over local references. */
function chains(rng: Rng, ms: MemorySearch, plain: Map<string, { def: SpDef; cands: Candidate[] }[]>): GenQuery[] {
  const out: GenQuery[] = [];
  const links: { from: string; def: SpDef; to: Resource; src: Resource }[] = [];
  for (const type of ms.types()) {
    for (const def of paramsOf(type).filter((d) => d.type === 'reference')) {
      for (const r of stableResources(ms, type)) {
        for (const v of ms.entries<ReturnType<typeof referenceEntries>>(r, def)) {
          for (const ref of v.refs) {
            const to = ref.kind === 'local' ? ms.get(ref.type, ref.id) : undefined;
            if (to && (!def.target.length || def.target.includes(to.resourceType))) links.push({ from: type, def, to, src: r });
          }
        }
      }
    }
  }
  if (!links.length) return out;
  /** A final value on `r`'s type: from `r` itself (likely a match) or from any resource of its type. */
  const finalValue = (r: Resource, kinds: string[]): { def: SpDef; c: Candidate } | undefined => {
    const f = (plain.get(r.resourceType) ?? []).filter((x) => kinds.includes(x.def.type));
    if (!f.length) return undefined;
    const p = rng.pick(f);
    if (rng.chance(0.6)) {
      const own = candidates(rng, p.def, pools(ms, r.resourceType, p.def, [r]), ms.baseUrl).filter((c) => !c.group.endsWith('negative'));
      if (own.length) return { def: p.def, c: rng.pick(own) };
    }
    return { def: p.def, c: rng.pick(p.cands) };
  };
  const name = (v: { def: SpDef; c: Candidate }) => paramName(v.def.code, v.c);
  const simple = ['string', 'token', 'date', 'reference'];
  for (let i = 0; i < 160; i++) {
    const l = rng.pick(links);
    const v = finalValue(l.to, simple);
    if (!v) continue;
    const ref = rng.chance(0.5) ? `${l.def.code}:${l.to.resourceType}` : l.def.code;
    out.push(query(l.from, 'chain', [`${ref}.${name(v)}`, v.c.value]));
  }
  // Two hops: e.g. Observation?encounter.subject:Patient.name=
  const bySource = new Map<Resource, typeof links>();
  for (const l of links) bySource.set(l.src, [...(bySource.get(l.src) ?? []), l]);
  for (let i = 0; i < 60; i++) {
    const l = rng.pick(links);
    const next = bySource.get(l.to);
    if (!next) continue;
    const m = rng.pick(next);
    const v = finalValue(m.to, simple);
    if (!v) continue;
    out.push(query(l.from, 'chain:2', [`${l.def.code}.${m.def.code}:${m.to.resourceType}.${name(v)}`, v.c.value]));
  }
  // Reverse chains: Patient?_has:Observation:patient:code=, and nested once.
  const byTarget = new Map<Resource, typeof links>();
  for (const l of links) byTarget.set(l.to, [...(byTarget.get(l.to) ?? []), l]);
  const hasKinds = ['string', 'token', 'date', 'quantity'];
  for (let i = 0; i < 110; i++) {
    const l = rng.pick(links);
    const v = finalValue(l.src, hasKinds);
    if (!v) continue;
    out.push(query(l.to.resourceType, '_has', [`_has:${l.from}:${l.def.code}:${name(v)}`, v.c.value]));
  }
  for (let i = 0; i < 30; i++) {
    const l = rng.pick(links);
    const inner = byTarget.get(l.src);
    if (!inner) continue;
    const m = rng.pick(inner);
    const v = finalValue(m.src, hasKinds);
    if (!v) continue;
    out.push(query(l.to.resourceType, '_has:2', [`_has:${l.from}:${l.def.code}:_has:${m.from}:${m.def.code}:${name(v)}`, v.c.value]));
  }
  return out;
}
