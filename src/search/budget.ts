// Budgets of one search or history request (issue 14; search.html leaves limits to the server),
// checked on the raw parameters before parsing and before any SQL, so one small request cannot hold
// the database. Each refusal names the budget and its limit, never a parameter value.
import type { Config } from '../config/config.js';
import { FhirError } from '../fhir/errors.js';
import { CONTROL, INCLUDES, splitOr } from './parse.js';

export type SearchBudgets = Config['searchBudgets'];

function exceeded(what: string, limit: number, variable: string): FhirError {
  return new FhirError('too-costly', `search budget exceeded: ${what}; the limit is ${limit} (${variable})`);
}

/** Size, NUL and parameter-count checks shared by search and history. */
function checkCommon(pairs: readonly [string, string][], b: SearchBudgets, kind: string): void {
  // Decoded bytes of names and values plus one separator each: what the server has to hold and parse.
  let size = 0;
  for (const [k, v] of pairs) size += Buffer.byteLength(k) + Buffer.byteLength(v) + 2;
  if (size > b.maxQueryBytes) {
    throw new FhirError('too-large', `${kind} budget exceeded: the parameters take ${size} bytes; the limit is ${b.maxQueryBytes} (SEARCH_MAX_QUERY_SIZE)`);
  }
  // PostgreSQL refuses NUL in text; caught here it is a 400 instead of a database error.
  if (pairs.some(([k, v]) => k.includes('\u0000') || v.includes('\u0000'))) {
    throw new FhirError('invalid-search', `a ${kind} parameter name or value holds a NUL character (U+0000)`);
  }
  if (pairs.length > b.maxParameters) throw exceeded(`${pairs.length} parameters`, b.maxParameters, 'SEARCH_MAX_PARAMETERS');
}

/** Counts `_has:` prefixes and chain hops the way parse.ts follows them. */
function depths(name: string): { has: number; chain: number } {
  let has = 0;
  let rest = name;
  for (let m = /^_has:[^:]*:[^:]*:(.*)$/.exec(rest); m; m = /^_has:[^:]*:[^:]*:(.*)$/.exec(rest)) {
    has++;
    rest = m[1];
  }
  return { has, chain: rest.split('.').length - 1 };
}

/** Throws a 400 (413 for size) when a search request is over one of its budgets. */
export function checkSearchBudget(pairs: readonly [string, string][], b: SearchBudgets): void {
  checkCommon(pairs, b, 'search');
  let includes = 0;
  const repeats = new Map<string, number>();
  for (const [name, value] of pairs) {
    if (INCLUDES.has(name)) {
      if (++includes > b.maxIncludes) throw exceeded(`more than ${b.maxIncludes} _include and _revinclude parameters`, b.maxIncludes, 'SEARCH_MAX_INCLUDES');
      continue;
    }
    if (name === '_sort') {
      const keys = value.split(',').length;
      if (keys > b.maxSortKeys) throw exceeded(`_sort has ${keys} keys`, b.maxSortKeys, 'SEARCH_MAX_SORT_KEYS');
      continue;
    }
    if (CONTROL.has(name) || name === '_type') continue;
    // Repetitions AND together; they count per parameter code, whatever the modifier or chain.
    const code = name.split(/[:.]/)[0];
    const n = (repeats.get(code) ?? 0) + 1;
    repeats.set(code, n);
    const shown = code.slice(0, 64);
    if (n > b.maxRepeats) throw exceeded(`parameter "${shown}" is repeated more than ${b.maxRepeats} times`, b.maxRepeats, 'SEARCH_MAX_REPEATS');
    const values = splitOr(value).length;
    if (values > b.maxValues) throw exceeded(`parameter "${shown}" has ${values} comma-separated values`, b.maxValues, 'SEARCH_MAX_VALUES');
    const d = depths(name);
    if (d.has > b.maxHasDepth) throw exceeded(`_has is nested ${d.has} deep`, b.maxHasDepth, 'SEARCH_MAX_HAS_DEPTH');
    if (d.chain > b.maxChainDepth) throw exceeded(`parameter "${shown}" is chained ${d.chain} deep`, b.maxChainDepth, 'SEARCH_MAX_CHAIN_DEPTH');
  }
}

/** History takes only result parameters: size, NUL and parameter count apply. */
export function checkHistoryBudget(pairs: readonly [string, string][], b: SearchBudgets): void {
  checkCommon(pairs, b, 'history');
}
