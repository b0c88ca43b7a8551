// ValueSet expansion from the official package (https://hl7.org/fhir/R4/valueset.html#expansion): the
// value sets whose content the package holds in full (compose.include by system + concept, whole code
// systems that are complete in the package, valueSet imports, is-a / descendent-of / is-not-a filters,
// exclude). Used by validation-artifacts.ts (required bindings) and for the search modifiers :in and
// :not-in (value-sets.json). Everything else is recorded with the reason it cannot be expanded.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

interface Json { [k: string]: any }

/** Codes per code system. */
export type Expansion = Map<string, Set<string>>;

/** Expands ValueSets from the package's ValueSet and CodeSystem resources. */
export class Expander {
  private readonly valueSets = new Map<string, Json>();
  private readonly codeSystems = new Map<string, Json>();
  private readonly memo = new Map<string, Expansion | string>();

  constructor(pkgDir: string) {
    for (const f of readdirSync(pkgDir).sort()) {
      if (!f.endsWith('.json') || !(f.startsWith('ValueSet-') || f.startsWith('CodeSystem-'))) continue;
      const r = JSON.parse(readFileSync(join(pkgDir, f), 'utf8')) as Json;
      if (r.resourceType === 'ValueSet' && !this.valueSets.has(r.url)) this.valueSets.set(r.url, r);
      if (r.resourceType === 'CodeSystem' && !this.codeSystems.has(r.url)) this.codeSystems.set(r.url, r);
    }
  }

  valueSetUrls(): string[] {
    return [...this.valueSets.keys()];
  }

  /** The business version of a value set of the package, if it has one. */
  versionOf(url: string): string | undefined {
    const v = this.valueSets.get(url)?.version;
    return typeof v === 'string' ? v : undefined;
  }

  hasCodeSystem(url: string): boolean {
    return this.codeSystems.has(url);
  }

  /** The codes per system, or the reason the value set cannot be expanded from the package. */
  expand(url: string, stack: string[] = []): Expansion | string {
    const hit = this.memo.get(url);
    if (hit) return hit;
    if (stack.includes(url)) return `value set ${url} includes itself`;
    const vs = this.valueSets.get(url);
    let result: Expansion | string;
    if (!vs) result = `value set ${url} is not in the package`;
    else if (!vs.compose) result = `value set ${url} has no compose`;
    else {
      result = new Map();
      for (const inc of vs.compose.include ?? []) {
        const part = this.include(inc, [...stack, url]);
        if (typeof part === 'string') {
          result = part;
          break;
        }
        merge(result, part);
      }
      if (typeof result !== 'string') {
        for (const exc of vs.compose.exclude ?? []) {
          const part = this.include(exc, [...stack, url]);
          if (typeof part === 'string') {
            result = `exclude: ${part}`;
            break;
          }
          for (const [sys, codes] of part) for (const c of codes) result.get(sys)?.delete(c);
        }
      }
    }
    this.memo.set(url, result);
    return result;
  }

  private include(inc: Json, stack: string[]): Expansion | string {
    let fromSystem: Expansion | undefined;
    if (inc.system) {
      const system = String(inc.system);
      if (inc.concept) {
        fromSystem = new Map([[system, new Set((inc.concept as Json[]).map((c) => String(c.code)))]]);
      } else {
        const cs = this.codeSystems.get(system);
        if (!cs) return `code system ${system} is not in the package`;
        if (cs.content !== 'complete') return `code system ${system} is ${cs.content} in the package`;
        const all = flatten(cs.concept ?? []);
        let codes: Set<string>;
        if (!inc.filter?.length) codes = new Set(all.map((c) => c.code));
        else {
          codes = new Set(all.map((c) => c.code));
          for (const f of inc.filter as Json[]) {
            const sel = this.filter(cs, all, f);
            if (typeof sel === 'string') return sel;
            codes = new Set([...codes].filter((c) => sel.has(c)));
          }
        }
        fromSystem = new Map([[system, codes]]);
      }
    }
    let fromSets: Expansion | undefined;
    for (const u of (inc.valueSet ?? []) as string[]) {
      const e = this.expand(String(u).split('|')[0], stack);
      if (typeof e === 'string') return e;
      if (!fromSets) fromSets = new Map();
      merge(fromSets, e);
    }
    if (fromSystem && fromSets) {
      const out: Expansion = new Map();
      for (const [sys, codes] of fromSystem) out.set(sys, new Set([...codes].filter((c) => fromSets!.get(sys)?.has(c))));
      return out;
    }
    return fromSystem ?? fromSets ?? `an include names neither a system nor a value set`;
  }

  private filter(cs: Json, all: FlatConcept[], f: Json): Set<string> | string {
    if (f.property === 'concept' && (f.op === 'is-a' || f.op === 'descendent-of' || f.op === 'is-not-a')) {
      const root = all.find((c) => c.code === f.value);
      if (!root) return `filter on unknown code in ${cs.url}`;
      const below = new Set<string>();
      const walk = (c: Json) => {
        for (const k of c.concept ?? []) {
          below.add(String(k.code));
          walk(k);
        }
      };
      walk(root.node);
      if (f.op === 'is-a') return new Set([root.code, ...below]);
      if (f.op === 'descendent-of') return below;
      return new Set(all.map((c) => c.code).filter((c) => c !== root.code && !below.has(c)));
    }
    return `filter ${f.property} ${f.op} is not supported by the generator`;
  }
}

interface FlatConcept { code: string; node: Json }

function flatten(concepts: Json[]): FlatConcept[] {
  const out: FlatConcept[] = [];
  const walk = (list: Json[]) => {
    for (const c of list) {
      out.push({ code: String(c.code), node: c });
      walk(c.concept ?? []);
    }
  };
  walk(concepts);
  return out;
}

function merge(into: Expansion, from: Expansion): void {
  for (const [sys, codes] of from) {
    if (!into.has(sys)) into.set(sys, new Set());
    for (const c of codes) into.get(sys)!.add(c);
  }
}

/** Codes per system, sorted (stable output). */
export function sortedExpansion(e: Expansion): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const [system, codes] of [...e.entries()].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))) out[system] = [...codes].sort();
  return out;
}

/**
 * The value-sets.json artifact: every ValueSet of the package, expanded (codes per system and the
 * value set's version) or with the reason it cannot be; and, per resource element of type `code` with
 * a required binding, the code systems its codes come from (search.html#token: the system of a `code`
 * is implied by its binding), so :in can match a `code` whose index row carries no system.
 */
export function buildValueSetArtifact(pkgDir: string, sds: Json[], header: string): { doc: Json; stats: Record<string, number> } {
  const expander = new Expander(pkgDir);
  const expansions: Record<string, Json> = {};
  const notExpandable: Record<string, string> = {};
  for (const url of expander.valueSetUrls().sort()) {
    const e = expander.expand(url);
    if (typeof e === 'string') notExpandable[url] = e;
    else expansions[url] = { ...(expander.versionOf(url) ? { version: expander.versionOf(url) } : {}), codes: sortedExpansion(e) };
  }
  const implicitSystems: Record<string, string[]> = {};
  const resources = sds.filter((sd) => sd.kind === 'resource' && sd.derivation === 'specialization' && !sd.abstract && sd.snapshot);
  for (const sd of resources) {
    for (const el of sd.snapshot.element as Json[]) {
      const types = ((el.type ?? []) as Json[]).map((t) => String(t.code));
      const b = el.binding;
      if (el.max === '0' || types.length !== 1 || types[0] !== 'code' || b?.strength !== 'required' || !b.valueSet) continue;
      const e = expansions[String(b.valueSet).split('|')[0]];
      if (e) implicitSystems[String(el.path)] = Object.keys(e.codes);
    }
  }
  const sortObj = <T>(o: Record<string, T>): Record<string, T> => Object.fromEntries(Object.entries(o).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)));
  return {
    doc: { $comment: header, data: { expansions, notExpandable, implicitSystems: sortObj(implicitSystems) } },
    stats: { valueSets: expander.valueSetUrls().length, expanded: Object.keys(expansions).length, notExpandable: Object.keys(notExpandable).length, implicitSystems: Object.keys(implicitSystems).length },
  };
}
