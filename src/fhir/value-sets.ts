// Value set expansions of the R4 package (https://hl7.org/fhir/R4/valueset.html#expansion), generated
// into fhir-definitions/generated/value-sets.json: the package itself is a development dependency only.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { findPackageRoot } from './package-root.js';

interface ValueSetTable {
  expansions: Record<string, { version?: string; codes: Record<string, string[]> }>;
  notExpandable: Record<string, string>;
  /** Resource element path (e.g. Observation.status) of type `code` -> the code systems its required binding draws from. */
  implicitSystems: Record<string, string[]>;
}

let table: ValueSetTable | undefined;

function load(): ValueSetTable {
  table ??= (JSON.parse(readFileSync(join(findPackageRoot(), 'fhir-definitions', 'generated', 'value-sets.json'), 'utf8')) as { data: ValueSetTable }).data;
  return table;
}

/** A value set's codes per system; or why it cannot be used (unknown, another version, not expandable from the package). */
export type ValueSetLookup = { codes: Readonly<Record<string, readonly string[]>> } | { unavailable: string };

/**
 * Looks a value set up by canonical URL, optionally `url|version`. Reasons never repeat the URL when
 * it is not one of the package's (a client value), and name it when it is.
 */
export function lookupValueSet(canonical: string): ValueSetLookup {
  const bar = canonical.indexOf('|');
  const url = bar < 0 ? canonical : canonical.slice(0, bar);
  const version = bar < 0 ? undefined : canonical.slice(bar + 1);
  const t = load();
  const e = Object.hasOwn(t.expansions, url) ? t.expansions[url] : undefined;
  if (e) {
    if (version !== undefined && version !== '' && version !== e.version) return { unavailable: `value set ${url} is known in version ${e.version ?? '(none)'} only` };
    return { codes: e.codes };
  }
  if (Object.hasOwn(t.notExpandable, url)) return { unavailable: `value set ${url} cannot be expanded by this server: ${t.notExpandable[url]}` };
  return { unavailable: 'the value set is not known to this server (served: canonical URLs of the value sets of the FHIR R4 package that it can expand)' };
}

/** The code systems implied for a `code` element (search.html#token) by its required binding; empty when none. */
export function implicitCodeSystems(elementPath: string): readonly string[] {
  const t = load();
  return Object.hasOwn(t.implicitSystems, elementPath) ? t.implicitSystems[elementPath] : [];
}
