// Required bindings (https://hl7.org/fhir/R4/terminologies.html#required): a coded value SHALL be
// one of the codes of the value set. Checked where the package lets the generator expand the value
// set; the few it cannot (UCUM, BCP-13 mime types, ISO 4217, one LOINC answer list) are not checked.
import { bindingTable } from './artifacts.js';

const sets = new Map<string, Map<string, Set<string>> | null>();

function expansion(url: string): Map<string, Set<string>> | null {
  let hit = sets.get(url);
  if (hit !== undefined) return hit;
  const raw = bindingTable().valueSets[url];
  hit = raw ? new Map(Object.entries(raw).map(([sys, codes]) => [sys, new Set(codes)])) : null;
  sets.set(url, hit);
  return hit;
}

/** The required value set bound to an element path, if the package can expand it. */
export function requiredValueSet(elementPath: string): string | undefined {
  const url = bindingTable().elements[elementPath];
  return url && expansion(url) ? url : undefined;
}

/** A bare code (code, string, uri elements): in any system of the value set. */
export function codeInValueSet(url: string, code: string): boolean {
  const e = expansion(url);
  if (!e) return true;
  for (const codes of e.values()) if (codes.has(code)) return true;
  return false;
}

/** A Coding (or Quantity): system and code both match; without a system, the code alone. */
export function codingInValueSet(url: string, system: unknown, code: unknown): boolean {
  if (typeof code !== 'string') return true;
  if (typeof system !== 'string') return codeInValueSet(url, code);
  return expansion(url)?.get(system)?.has(code) ?? false;
}
