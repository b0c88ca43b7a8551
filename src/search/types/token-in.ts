// Token :in and :not-in (https://hl7.org/fhir/R4/search.html#modifiers): the value is the canonical URL
// of a value set (optionally `url|version`); a token value matches :in when its system and code are in
// the set's expansion. Expansions come from the R4 package (fhir/value-sets.ts); a value set that is
// unknown or cannot be expanded is refused (400), never matched as empty. A `code` element is indexed
// without a system: the system its required binding implies stands in for it (search.html#token).
import { FhirError } from '../../fhir/errors.js';
import { implicitCodeSystems, lookupValueSet } from '../../fhir/value-sets.js';
import { expressionPaths } from '../blind.js';
import { unescapeValue } from '../escape.js';
import { eqKey } from '../keys.js';
import type { ParamSpec } from '../registry.js';
import { frag, or, type SqlFragment } from '../sql.js';

export type ValueSetModifier = 'in' | 'not-in';

export function isValueSetModifier(m: string | undefined): m is ValueSetModifier {
  return m === 'in' || m === 'not-in';
}

const implied = new Map<ParamSpec, ReadonlySet<string>>();

/** The code systems implied for the `code` elements a parameter's expression reaches. */
function impliedSystems(spec: ParamSpec): ReadonlySet<string> {
  let s = implied.get(spec);
  if (!s) {
    const type = spec.owner ?? '';
    const paths = spec.def.expression ? expressionPaths(type, spec.def.expression) : [];
    s = new Set(paths.flatMap((p) => (p ? implicitCodeSystems(`${type}.${p}`) : [])));
    implied.set(spec, s);
  }
  return s;
}

/** `code in (the bound JSON array's elements)`: one binding however many codes the set holds. */
function codeIn(a: string, codes: readonly string[]): SqlFragment {
  return frag(`${a}.code in (select json_array_elements_text(?::json))`, JSON.stringify(codes.map((c) => eqKey(c))));
}

/**
 * The index rows (alias `a`, columns resource_type, system and code) in the value set one OR value
 * names, for owners of the types of `specs` (one spec per type searched: the implied systems differ by
 * type). :not-in is the negation of the whole parameter (a NOT EXISTS over these rows), as :not is
 * (types/token.ts).
 */
export function tokenInCondition(a: string, raw: string, code: string, modifier: ValueSetModifier, specs: readonly ParamSpec[]): SqlFragment {
  const found = lookupValueSet(unescapeValue(raw).trim());
  if ('unavailable' in found) throw new FhirError('unsupported-search', `parameter ${code}:${modifier}: ${found.unavailable}`);
  const parts: SqlFragment[] = [];
  for (const [system, codes] of Object.entries(found.codes)) {
    if (!codes.length) continue;
    const c = codeIn(a, codes);
    parts.push(frag(`${a}.system = ? and ${c.sql}`, eqKey(system), ...c.bindings));
  }
  for (const spec of specs) {
    const implicit = impliedSystems(spec);
    const codes = new Set<string>();
    for (const [system, list] of Object.entries(found.codes)) if (implicit.has(system)) for (const c of list) codes.add(c);
    if (!codes.size) continue;
    const c = codeIn(a, [...codes].sort());
    // Several types searched: each type's codes stand for its own binding's system only.
    if (specs.length > 1) parts.push(frag(`${a}.resource_type = ? and ${a}.system is null and ${c.sql}`, spec.owner ?? '', ...c.bindings));
    else parts.push(frag(`${a}.system is null and ${c.sql}`, ...c.bindings));
  }
  return or(parts);
}
