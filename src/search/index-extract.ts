// Index extraction (https://hl7.org/fhir/R4/search.html): resource -> index rows, evaluated at write
// time from the official SearchParameter FHIRPath expressions of the resource's type. Composite
// parameters (search.html#composite) evaluate their components on each element the base selects and
// tie the component rows together with a group number.
import type { Resource } from 'fhir/r4.js';
import { elementIndex } from '../fhir/definitions.js';
import { compileExpression, nodePath, splitUnion, type Evaluator } from './expressions.js';
import { emptyRows, type IndexRows } from './index-rows.js';
import { evaluatorOf, paramsOf, type ParamSpec, type ValueKind } from './registry.js';
import { extractDate } from './types/date.js';
import { extractNumber, extractQuantity } from './types/number.js';
import { extractReference } from './types/reference.js';
import { extractString } from './types/string.js';
import { extractToken } from './types/token.js';
import { extractUri } from './types/uri.js';
import { extractPosition } from './types/position.js';
import { extractText } from './types/text.js';
import { drainPaced, drainSync } from '../fhir/pacer.js';

export type { IndexRows, TokenRow, StringRow, ReferenceRow, DateRow, NumberRow, QuantityRow, UriRow } from './index-rows.js';

/**
 * The token parameters the CapabilityStatement listed before every parameter was indexed.
 * @deprecated use supportedSearchParams (registry.ts); kept so capabilities.ts is unchanged until it switches.
 */
export const INDEXED_TOKEN_PARAMS = ['identifier'] as const;

/** @deprecated see INDEXED_TOKEN_PARAMS. */
export function isIndexedTokenParam(type: string, code: string): boolean {
  return (INDEXED_TOKEN_PARAMS as readonly string[]).includes(code) && paramsOf(type).supported.get(code)?.kind === 'token';
}

function addValue(kind: ValueKind, param: string, value: unknown, grp: number | null, out: Required<IndexRows>): void {
  switch (kind) {
    case 'string':
      return extractString(param, value, grp, out.string);
    case 'token':
      return extractToken(param, value, grp, out.token);
    case 'reference':
      return extractReference(param, value, grp, out);
    case 'date':
      return extractDate(param, value, grp, out.date);
    case 'number':
      return extractNumber(param, value, grp, out.number);
    case 'quantity':
      return extractQuantity(param, value, grp, out.quantity);
    case 'uri':
      return extractUri(param, value, grp, out.uri);
    case 'position':
      return extractPosition(param, value, grp, out.position);
    case 'text':
      return; // extracted from the whole resource (extractIndexRows), not per value
  }
}

const textVariantCache = new Map<ParamSpec, Evaluator | null>();

/**
 * The `string` variants a date parameter's expression reaches through a choice element
 * (CarePlan.activity.detail.scheduledString, Immunization.occurrenceString, Procedure.performedString):
 * free text, not a date (search.html#date lists date, dateTime, instant, Period and Timing), even when
 * it reads like one. Undefined when the expression reaches none.
 */
function textVariantsOf(spec: ParamSpec, type: string): Evaluator | undefined {
  let ev = textVariantCache.get(spec);
  if (ev === undefined) {
    const elements = elementIndex()[type] ?? {};
    const branches = splitUnion(spec.def.expression ?? '').filter((b) => {
      const m = /^([A-Z][A-Za-z]+)\.([A-Za-z.]+)$/.exec(b);
      return m !== null && m[1] === type && (elements[`${m[2]}[x]`] ?? []).includes('string');
    });
    ev = branches.length ? compileExpression(branches.map((b) => `${b}.ofType(string)`).join(' | '), undefined, type) : null;
    textVariantCache.set(spec, ev);
  }
  return ev ?? undefined;
}

/** The values of a plain parameter, without the free-text variants of a date parameter. */
function plainValues(spec: ParamSpec, resource: Resource, values: unknown[], env: Record<string, unknown>): unknown[] {
  const text = spec.kind === 'date' ? textVariantsOf(spec, resource.resourceType) : undefined;
  if (!text) return values;
  const drop = text(resource, env).filter((v) => typeof v === 'string');
  if (!drop.length) return values;
  return values.filter((v) => {
    const i = typeof v === 'string' ? drop.indexOf(v) : -1;
    if (i >= 0) drop.splice(i, 1);
    return i < 0;
  });
}

/** Counts expressions that threw on a resource (its other parameters are still indexed). */
export const extractionFailures = { count: 0 };

/** Computes the index rows of one resource version. */
export function extractIndexRows(resource: Resource): IndexRows {
  return drainSync(extractSteps(resource));
}

/**
 * extractIndexRows for a request: the same work, yielding to the event loop between parameters and
 * every few hundred values (fhir/pacer.ts), so a resource with 50,000 names does not stall the server.
 */
export function extractIndexRowsPaced(resource: Resource): Promise<IndexRows> {
  return drainPaced(extractSteps(resource));
}

/** Values added between two yield points of the paced extraction. */
const STEP_VALUES = 256;

/** The extraction as steps: each `yield` is a point where the paced form may give the loop back. */
function* extractSteps(resource: Resource): Generator<void, IndexRows, void> {
  const out = emptyRows();
  const env = { resource };
  const params = paramsOf(resource.resourceType);
  if (params.fullText.text || params.fullText.content) out.text = extractText(resource as unknown as Record<string, unknown>, params.fullText);
  for (const spec of params.indexed) {
    yield;
    let values: unknown[];
    try {
      values = evaluatorOf(spec)(resource, env);
    } catch {
      // A resource the expression cannot evaluate (malformed data the validator let through) must not
      // fail the write; the parameter simply has no values for it.
      extractionFailures.count += 1;
      continue;
    }
    if (!spec.components) {
      let n = 0;
      for (const v of plainValues(spec, resource, values, env)) {
        addValue(spec.kind as ValueKind, spec.code, v, null, out);
        if (++n % STEP_VALUES === 0) yield;
      }
      continue;
    }
    let grp = 0;
    let n = 0;
    for (const node of values) {
      if (grp > 32000) break; // grp is a smallint; no real resource has this many composite values
      if (++n % STEP_VALUES === 0) yield;
      const base = nodePath(node);
      if (!node || typeof node !== 'object' || !base) continue;
      const parts: unknown[][] = [];
      try {
        for (const c of spec.components) parts.push(compileExpression(c.expression, base)(node, env));
      } catch {
        extractionFailures.count += 1;
        continue;
      }
      // A composite value exists only when every component has one.
      if (parts.some((p) => p.length === 0)) continue;
      spec.components.forEach((c, i) => {
        for (const v of parts[i]) addValue(c.kind, `${spec.code}$${i}`, v, grp, out);
      });
      grp += 1;
    }
  }
  return yield* dedupe(out);
}

/** Repeated values (the same given name in two HumanNames) would only add identical rows. */
function* dedupe(rows: Required<IndexRows>): Generator<void, Required<IndexRows>, void> {
  for (const k of Object.keys(rows) as (keyof IndexRows)[]) {
    const list = rows[k] as object[];
    if (list.length < 2) continue;
    yield;
    const seen = new Set<string>();
    const kept: object[] = [];
    for (let i = 0; i < list.length; i++) {
      const key = JSON.stringify(list[i]);
      if (!seen.has(key)) {
        seen.add(key);
        kept.push(list[i]);
      }
      if (i % (STEP_VALUES * 4) === 0) yield;
    }
    (rows as Record<string, object[]>)[k] = kept;
  }
  return rows;
}
