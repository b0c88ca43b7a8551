// An in-memory FHIR R4 search (https://hl7.org/fhir/R4/search.html) for the differential test: the
// official SearchParameter definitions read straight from the HL7 package, their expressions evaluated
// with fhirpath.js on the R4 model, and the matching of memory-match.ts. It shares no code with
// src/search on purpose: it is the second implementation Vesta's answers are compared with.
import { readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import fhirpath from 'fhirpath';
import r4 from 'fhirpath/fhir-context/r4/index.js';
import type { Resource } from 'fhir/r4.js';
import {
  dateEntries, dateMatches, numberEntries, numberMatches, quantityEntries, quantityMatches, referenceEntries, referenceMatches,
  splitEscaped, stringEntries, stringMatches, tokenEntries, tokenMatches, unescape, uriEntries, uriMatches, type Typed,
} from './memory-match.js';

export interface SpDef {
  url: string;
  code: string;
  type: string;
  expression?: string;
  target: string[];
  component: { definition: string; expression: string }[];
}

/** A query this evaluator does not model (the generator does not produce these). */
export class UnsupportedQuery extends Error {}

const model = r4 as unknown as { type2Parent: Record<string, string> };

function isResourceType(t: string): boolean {
  for (let p = model.type2Parent[t]; p; p = model.type2Parent[p]) if (p === 'Resource') return true;
  return false;
}

export const RESOURCE_TYPES: readonly string[] = Object.keys(model.type2Parent).filter(isResourceType).sort();

export function examplesDir(): string {
  return dirname(createRequire(import.meta.url).resolve('hl7.fhir.r4.examples/package.json'));
}

let definitions: Map<string, Map<string, SpDef>> | undefined;

/**
 * The official search parameters per resource type, from the package's SearchParameter resources
 * (experimental ones there are extension and example definitions, not part of R4 core).
 */
export function officialParams(): Map<string, Map<string, SpDef>> {
  if (definitions) return definitions;
  definitions = new Map(RESOURCE_TYPES.map((t) => [t, new Map()]));
  const dir = examplesDir();
  for (const f of readdirSync(dir).filter((n) => n.startsWith('SearchParameter-')).sort()) {
    const sp = JSON.parse(readFileSync(join(dir, f), 'utf8')) as Record<string, any>;
    if (sp.resourceType !== 'SearchParameter' || sp.experimental === true) continue;
    const bases: string[] = sp.base ?? [];
    const types = bases.includes('Resource') ? RESOURCE_TYPES : bases.includes('DomainResource') ? RESOURCE_TYPES.filter((t) => model.type2Parent[t] === 'DomainResource') : bases;
    const def: SpDef = { url: sp.url, code: sp.code, type: sp.type, expression: sp.expression, target: sp.target ?? [], component: sp.component ?? [] };
    for (const t of types) definitions.get(t)?.set(sp.code, def);
  }
  return definitions;
}

export function paramDef(type: string, code: string): SpDef | undefined {
  return officialParams().get(type)?.get(code);
}

/** Splits a FHIRPath expression at top-level `|` (each branch is evaluated on its own; results are concatenated). */
function branches(expr: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let inQuote = false;
  let cur = '';
  for (const ch of expr) {
    if (ch === "'") inQuote = !inQuote;
    if (!inQuote && ch === '(') depth++;
    if (!inQuote && ch === ')') depth--;
    if (!inQuote && depth === 0 && ch === '|') {
      out.push(cur.trim());
      cur = '';
    } else cur += ch;
  }
  out.push(cur.trim());
  return out;
}

/**
 * R4 expressions apply `as` to collections (`Observation.component.value as Quantity`); FHIRPath's
 * `as` wants a singleton, so `x as T` and `x.as(T)` are read as the type filter `x.ofType(T)`. `as`
 * selects a choice variant: its results must be of type T exactly, not a specialisation of it (the
 * definitions' own XPath says so: source-uri is `(ConceptMap.source as uri)` and f:sourceUri, while
 * FHIRPath would also let a canonical through as a kind of uri). Returns the type, when the branch
 * ends with `as`.
 */
function typeFilters(branch: string): { expression: string; exact?: string } {
  const exact = /(?:\.as\(([A-Za-z]+)\)|\s+as\s+([A-Za-z]+))\)?$/.exec(branch);
  const expression = branch
    .replace(/\.as\(([A-Za-z]+)\)/g, '.ofType($1)')
    .replace(/\(([^()]+?) as ([A-Za-z]+)\)/g, '($1.ofType($2))')
    .replace(/^([^()]+?) as ([A-Za-z]+)$/, '$1.ofType($2)');
  return exact ? { expression, exact: exact[1] ?? exact[2] } : { expression };
}

interface FpNode {
  data: unknown;
  path?: string;
}

/**
 * `resolve()` yields a stand-in resource of the type the reference names (its literal reference, else
 * Reference.type), so `where(resolve() is Patient)` tests the reference's type without fetching it.
 */
const resolveAsType = {
  resolve: {
    fn(this: unknown, coll: FpNode[]) {
      const out: unknown[] = [];
      for (const n of coll) {
        const ref = n?.data as Record<string, unknown> | undefined;
        if (!ref || typeof ref !== 'object') continue;
        const m = typeof ref.reference === 'string' ? /(?:^|\/)([A-Z][A-Za-z]+)\/[A-Za-z0-9\-.]{1,64}(?:\/_history\/[A-Za-z0-9\-.]{1,64})?$/.exec(ref.reference) : null;
        const type = m && isResourceType(m[1]) ? m[1] : typeof ref.reference !== 'string' && typeof ref.type === 'string' ? ref.type : undefined;
        if (type) out.push(new (n.constructor as new (...a: unknown[]) => unknown)(this, { resourceType: type }, null, null, null, null));
      }
      return out;
    },
    arity: { 0: [] },
    internalStructures: true,
  },
};

type Compiled = (data: unknown, env?: Record<string, unknown>) => FpNode[];
const compiled = new Map<string, Compiled[]>();

function compile(expression: string, base?: string): Compiled[] {
  const key = `${base ?? ''}\u0000${expression}`;
  let fns = compiled.get(key);
  if (!fns) {
    fns = branches(expression).map((b): Compiled => {
      const { expression: e, exact } = typeFilters(b);
      const f = fhirpath.compile((base ? { base, expression: e } : e) as never, r4, { resolveInternalTypes: false, userInvocationTable: resolveAsType } as never) as unknown as Compiled;
      if (!exact) return f;
      return (data, env) => {
        const nodes = f(data, env);
        const types = fhirpath.types(nodes);
        return nodes.filter((_, i) => types[i] === `FHIR.${exact}`);
      };
    });
    compiled.set(key, fns);
  }
  return fns;
}

function typedOf(nodes: FpNode[]): Typed[] {
  const types = fhirpath.types(nodes);
  const values = fhirpath.resolveInternalTypes(nodes) as unknown[];
  return values.map((value, i) => ({ type: types[i].replace(/^(FHIR|System)\./, '').replace(/^String$/, 'string').replace(/^Boolean$/, 'boolean'), value }));
}

/** Evaluates an expression (optionally relative to an element path) and types each result. */
export function evaluate(expression: string, data: unknown, resource: unknown, base?: string): Typed[] {
  return typedOf(compile(expression, base).flatMap((f) => f(data, { resource })));
}

const CONTROL = new Set(['_count', '_total', '_sort', '_summary', '_elements', '_include', '_revinclude', '_format', '_pretty', '_page', '_include:iterate', '_revinclude:iterate']);

export class MemorySearch {
  private readonly byType = new Map<string, Map<string, Resource>>();
  private readonly cache = new Map<string, Map<string, unknown>>();
  /** Expressions that threw on a resource: `type.code` -> count (reported by the test). */
  readonly failures = new Map<string, number>();

  /**
   * `order` gives each resource (`Type/id`) a key that is stable across runs (server-assigned ids are
   * not), so that seeded generation picks the same resources every time.
   */
  constructor(resources: Resource[], readonly baseUrl: string, private readonly order = new Map<string, string>()) {
    for (const r of resources) {
      let m = this.byType.get(r.resourceType);
      if (!m) this.byType.set(r.resourceType, (m = new Map()));
      m.set(r.id!, r);
    }
  }

  resources(type: string): Resource[] {
    return [...(this.byType.get(type)?.values() ?? [])];
  }

  types(): string[] {
    return [...this.byType.keys()].sort();
  }

  orderKey(r: Resource): string {
    return this.order.get(`${r.resourceType}/${r.id}`) ?? `~${r.id}`;
  }

  get(type: string, id: string): Resource | undefined {
    return this.byType.get(type)?.get(id);
  }

  /** The typed values of a parameter's expression on a resource (composites: their base elements). */
  values(r: Resource, def: SpDef): Typed[] {
    if (!def.expression) return [];
    try {
      return evaluate(def.expression, r, r);
    } catch {
      const k = `${r.resourceType}.${def.code}`;
      this.failures.set(k, (this.failures.get(k) ?? 0) + 1);
      return [];
    }
  }

  /** Parameter entries for one resource, by parameter type, cached. */
  entries<T>(r: Resource, def: SpDef): T[] {
    const key = `${r.resourceType}\u0000${def.code}`;
    let m = this.cache.get(key);
    if (!m) this.cache.set(key, (m = new Map()));
    if (!m.has(r.id!)) m.set(r.id!, this.compute(r, def));
    return m.get(r.id!) as T[];
  }

  private compute(r: Resource, def: SpDef): unknown[] {
    return def.type === 'composite' ? this.composite(r, def) : this.typedEntries(def, this.values(r, def));
  }

  /**
   * search.html#composite: the typed component values of each element the base expression selects,
   * for the elements where every component has a value.
   */
  compositeValues(r: Resource, def: SpDef): Typed[][][] {
    const comps = def.component.map((c) => {
      const cd = [...officialParams().get(r.resourceType)!.values()].find((d) => d.url === c.definition);
      if (!cd) throw new UnsupportedQuery(`composite ${def.code}: component ${c.definition} is not a parameter of ${r.resourceType}`);
      return { def: cd, expression: c.expression };
    });
    const tuples: Typed[][][] = [];
    try {
      for (const node of compile(def.expression!).flatMap((f) => f(r, { resource: r }))) {
        const base = node.path ?? r.resourceType;
        const parts = comps.map((c) => evaluate(c.expression, node.data, r, base));
        if (parts.every((p, i) => this.typedEntries(comps[i].def, p).length > 0)) tuples.push(parts);
      }
    } catch (e) {
      if (e instanceof UnsupportedQuery) throw e;
      const k = `${r.resourceType}.${def.code}`;
      this.failures.set(k, (this.failures.get(k) ?? 0) + 1);
      return [];
    }
    return tuples;
  }

  private composite(r: Resource, def: SpDef): unknown[] {
    const comps = def.component.map((c) => [...officialParams().get(r.resourceType)!.values()].find((d) => d.url === c.definition)!);
    return this.compositeValues(r, def).map((parts) => parts.map((p, i) => ({ def: comps[i], entries: this.typedEntries(comps[i], p) })));
  }

  private typedEntries(def: SpDef, vals: Typed[]): unknown[] {
    switch (def.type) {
      case 'string':
        return vals.flatMap(stringEntries);
      case 'token':
        return vals.flatMap(tokenEntries);
      case 'reference':
        // A resource (Bundle.entry[0].resource) is not a reference: those parameters only serve chaining.
        return vals.filter((v) => !(v.value && typeof v.value === 'object' && 'resourceType' in v.value)).map((v) => referenceEntries(v, this.baseUrl, isResourceType));
      case 'date':
        return vals.flatMap(dateEntries);
      case 'number':
        return vals.flatMap(numberEntries);
      case 'quantity':
        return vals.flatMap(quantityEntries);
      case 'uri':
        return vals.flatMap(uriEntries);
      default:
        throw new UnsupportedQuery(`component type ${def.type} is not modelled`);
    }
  }

  /** Whether a resource has a value for the parameter (:missing=false). */
  private has(r: Resource, def: SpDef): boolean {
    const e = this.entries<unknown>(r, def);
    if (def.type === 'reference') return (e as ReturnType<typeof referenceEntries>[]).some((v) => v.refs.length > 0 || v.identifiers.length > 0);
    return e.length > 0;
  }

  /** One OR-value of a plain parameter on a resource's entries. */
  private valueMatches(def: SpDef, entries: unknown[], raw: string, modifier: string | undefined, now: number): boolean {
    switch (def.type) {
      case 'string':
        return stringMatches(entries as string[], raw, modifier);
      case 'token':
        return tokenMatches(entries as Parameters<typeof tokenMatches>[0], raw, modifier);
      case 'reference': {
        const refs = entries as ReturnType<typeof referenceEntries>[];
        if (modifier === 'identifier') return tokenMatches(refs.flatMap((v) => v.identifiers), raw, undefined);
        return refs.some((v) => referenceMatches(v, raw, modifier, this.baseUrl));
      }
      case 'date':
        return dateMatches(entries as Parameters<typeof dateMatches>[0], raw, now);
      case 'number':
        return numberMatches(entries as Parameters<typeof numberMatches>[0], raw);
      case 'quantity':
        return quantityMatches(entries as Parameters<typeof quantityMatches>[0], raw);
      case 'uri':
        return uriMatches(entries as string[], raw, modifier);
      default:
        throw new UnsupportedQuery(`parameters of type ${def.type} are not modelled`);
    }
  }

  private finalMatches(r: Resource, def: SpDef, modifier: string | undefined, values: string[], now: number): boolean {
    if (modifier === 'missing') return (values[0] === 'true') !== this.has(r, def);
    if (def.type === 'composite') {
      const tuples = this.entries<{ def: SpDef; entries: unknown[] }[]>(r, def);
      return values.some((v) => {
        const parts = splitEscaped(v, '$');
        if (parts.length !== def.component.length) throw new UnsupportedQuery(`composite ${def.code} takes ${def.component.length} parts`);
        return tuples.some((t) => t.every((c, i) => this.valueMatches(c.def, c.entries, parts[i], undefined, now)));
      });
    }
    const entries = this.entries<unknown>(r, def);
    // search.html#modifiers: :not matches resources with no value matching any of the codes, including none at all.
    if (modifier === 'not') return !values.some((v) => tokenMatches(entries as Parameters<typeof tokenMatches>[0], v, undefined));
    return values.some((v) => this.valueMatches(def, entries, v, modifier, now));
  }

  /** The local resources a reference parameter of `r` points to (search.html#chaining). */
  private targets(r: Resource, def: SpDef, typeModifier: string | undefined): Resource[] {
    const out: Resource[] = [];
    for (const v of this.entries<ReturnType<typeof referenceEntries>>(r, def)) {
      for (const ref of v.refs) {
        if (ref.kind !== 'local') continue;
        if (typeModifier ? ref.type !== typeModifier : def.target.length > 0 && !def.target.includes(ref.type)) continue;
        const t = this.get(ref.type, ref.id);
        if (t) out.push(t);
      }
    }
    return out;
  }

  private param(type: string, code: string): SpDef {
    const def = paramDef(type, code);
    if (!def) throw new UnsupportedQuery(`${type} has no parameter ${code}`);
    if (def.type === 'special' || !def.expression) throw new UnsupportedQuery(`${type}.${code} is not modelled`);
    return def;
  }

  /** Whether `r` (of `type`) matches parameter `name` with OR-values `values`. */
  matches(r: Resource, type: string, name: string, values: string[], now: number): boolean {
    const has = /^_has:([A-Za-z]+):([^:]+):(.+)$/.exec(name);
    if (name.startsWith('_has:')) {
      if (!has) throw new UnsupportedQuery(`bad _has: ${name}`);
      const [, srcType, refCode, rest] = has;
      const def = this.param(srcType, refCode);
      return this.resources(srcType).some((s) => this.targets(s, def, type).some((t) => t.id === r.id) && this.matches(s, srcType, rest, values, now));
    }
    const dot = name.indexOf('.');
    if (dot > 0) {
      const [code, typeModifier] = name.slice(0, dot).split(':');
      const def = this.param(type, code);
      const rest = name.slice(dot + 1);
      const next = rest.split(/[.:]/)[0];
      return this.targets(r, def, typeModifier).some((t) => paramDef(t.resourceType, next) !== undefined && this.matches(t, t.resourceType, rest, values, now));
    }
    const colon = name.indexOf(':');
    const code = colon < 0 ? name : name.slice(0, colon);
    const modifier = colon < 0 ? undefined : name.slice(colon + 1);
    return this.finalMatches(r, this.param(type, code), modifier, values, now);
  }

  /** The ids of `type` matching the query pairs (comma = OR within a parameter, repetition = AND). */
  search(type: string, pairs: [string, string][], now = Date.now()): string[] {
    const clauses = pairs.filter(([k]) => !CONTROL.has(k)).map(([k, v]) => ({ name: k, values: splitEscaped(v, ',') }));
    return this.resources(type)
      .filter((r) => clauses.every((c) => this.matches(r, type, c.name, c.values, now)))
      .map((r) => r.id!)
      .sort();
  }
}

export { unescape };
