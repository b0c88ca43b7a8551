// FHIRPath invariants of the R4 definitions (https://hl7.org/fhir/R4/conformance-rules.html#constraints),
// evaluated with fhirpath.js on the R4 model. Each (constraint, context path) pair is compiled once
// and cached. ele-1, dom-3 and the narrative's htmlChecks() are evaluated natively (see walker.ts).
import fhirpath from 'fhirpath';
import r4model from 'fhirpath/fhir-context/r4/index.js';
import { invariantTable, type ConstraintDef } from './artifacts.js';
import { fhirRegExp } from './precheck.js';

export type Evaluator = (node: unknown, env: Record<string, unknown>) => unknown[];

export interface Invariant {
  id: string;
  key: string;
  severity: 'error' | 'warning';
  human: string;
  /** Evaluated natively: 'html' for htmlChecks() (txt-1, txt-2), 'dom-3' by the walker; undefined for FHIRPath. */
  native?: 'html' | 'dom-3';
  /** 'primitive': evaluated on the parent of the primitive value (see Site). */
  site: Site;
  /** A sufficient condition for the invariant to hold (see SHORTCUTS). */
  shortcut?: (n: Node, env: Env) => boolean;
  /** The expression as evaluated (after the corrections), for the precheck. */
  expression?: string;
  evaluate?: Evaluator;
}

/** ele-1 ("hasValue() or (children().count() > id.count())") holds for every element; the walker checks it on JSON directly. */
export const ELE_1 = 'ele-1';

type Env = { resource?: unknown; rootResource?: unknown };

/** The variables of the evaluation under way (evaluation is synchronous; user functions see no context). */
let current: Env = {};

const asNode = fhirpath.compile('%node', r4model, { resolveInternalTypes: false }) as unknown as (r: unknown, env: object) => unknown[];

/**
 * Functions replaced for the R4 invariants:
 * - matches(): the R4 patterns as fhirRegExp() compiles them (precheck.ts, which decides them too).
 * - resolve(): references resolve only inside the resource (contained `#id`); others are empty, as
 *   the spec's invariants expect when a target is not at hand (e.g. ctm-1's iif(empty(), true, ...)).
 */
const userInvocationTable = {
  matches: {
    fn: (inputs: unknown[], regex: unknown) => {
      if (inputs.length !== 1 || typeof inputs[0] !== 'string' || typeof regex !== 'string') return [];
      return [fhirRegExp(regex).test(inputs[0])];
    },
    arity: { 1: ['String'] },
  },
  resolve: {
    fn: (inputs: unknown[]) => {
      const root = current.rootResource as { contained?: { id?: string }[] } | undefined;
      const out: unknown[] = [];
      for (const i of inputs) {
        const ref = typeof i === 'string' ? i : (i as { reference?: unknown } | null)?.reference;
        if (typeof ref !== 'string' || !ref.startsWith('#')) continue;
        const hit = root?.contained?.find((c) => c?.id === ref.slice(1));
        // As a typed node, so that ofType(Practitioner) and the like see its resourceType.
        if (hit) out.push(...(asNode(hit, { node: hit }) as unknown[]));
      }
      return out;
    },
    arity: { 0: [] },
  },
};

// Typed loosely: fhirpath.js's option types do not describe user invocation tables with arity maps.
const OPTIONS = { traceFn: () => undefined, userInvocationTable, async: false } as unknown as Parameters<typeof fhirpath.compile>[2];

/** Evaluates a compiled invariant with %resource and %rootResource set. */
export function evaluate(inv: Invariant, node: unknown, env: Env): unknown[] {
  const saved = current;
  current = env;
  try {
    return inv.evaluate!(node, env as Record<string, unknown>);
  } finally {
    current = saved;
  }
}

/**
 * R4 invariants adjusted for a FHIRPath N1 engine (fhirpath.js), each as later FHIR versions fixed it:
 * - `x.as(T)` on a collection of several items is an error in N1 where R4-era engines filtered, as
 *   `ofType(T)` does (dom-3; R5 rewrote dom-3 with ofType).
 * - ref-1, bdl-8 and ras-2 evaluate to empty (so fail) when the element they test is absent; R5 guards
 *   them with `exists() implies`.
 * - que-7 `answer is Boolean`: a FHIR boolean is a Boolean to the R4 reference engine, not to fhirpath.js.
 */
const CORRECTIONS: Record<string, (e: string) => string> = {
  'ref-1': (e) => `reference.exists() implies (${e})`,
  'bdl-8': (e) => `fullUrl.exists() implies (${e})`,
  'ras-2': (e) => `probability.exists() implies (${e})`,
  'que-7': (e) => e.replace('answer is Boolean', 'answer is boolean'),
};

export function compatible(id: string, expression: string): string {
  const e = expression.replace(/\.as\(/g, '.ofType(');
  return CORRECTIONS[id] ? CORRECTIONS[id](e) : e;
}

type Node = Record<string, unknown>;
const has = (n: Node, k: string) => n[k] !== undefined && n[k] !== null;
const hasChoice = (n: Node, base: string) => Object.keys(n).some((k) => k.length > base.length && k.startsWith(base) && k.charCodeAt(base.length) < 91 && k.charCodeAt(base.length) > 64);

/**
 * Sufficient conditions, read off the expressions, under which an invariant holds, for frequent
 * invariants the precheck (precheck.ts) cannot decide: when one is true the FHIRPath evaluation is
 * skipped (it would return true); otherwise the expression is evaluated.
 * test/unit/validation-invariants.test.ts checks each against fhirpath.js over the official examples.
 */
export const SHORTCUTS: Record<string, (n: Node, env: Env) => boolean> = {
  // reference.exists() implies (reference.startsWith('#').not() or (reference.substring(1) in %rootResource.contained.id))
  'ref-1': (n, env) => {
    if (typeof n.reference !== 'string' || !n.reference.startsWith('#')) return true;
    const contained = (env.rootResource as Node | undefined)?.contained;
    const id = n.reference.slice(1);
    return Array.isArray(contained) && contained.some((c) => (c as Node | null)?.id === id);
  },
  // start.hasValue().not() or end.hasValue().not() or (start <= end): same precision and zone compare as strings
  'per-1': (n) => {
    const { start, end } = n;
    if (typeof start !== 'string' || typeof end !== 'string' || start.length !== end.length) return false;
    const zone = (x: string) => (x.length > 10 ? x.slice(19).replace(/^\.[0-9]+/, '') : '');
    const frac = (x: string) => /^\.[0-9]+/.exec(x.slice(19))?.[0] ?? '';
    return zone(start) === zone(end) && frac(start).length === frac(end).length && start <= end;
  },
  // fullUrl.exists() implies fullUrl.contains('/_history/').not()
  'bdl-8': (n) => typeof n.fullUrl !== 'string' || !n.fullUrl.includes('/_history/'),
  // descendants().linkId.isDistinct(): every linkId anywhere in the JSON (a superset of what the
  // model's descendants() reach) is a distinct string
  'que-2': (n) => linkIdsDistinct(n),
  // extension.exists() != value.exists()
  'ext-1': (n) => has(n, 'extension') !== hasChoice(n, 'value'),
  // entry.all(request.exists() = (%resource.type = 'batch' or … 'transaction' or … 'history'))
  'bdl-3': (n) => typeof n.type === 'string' && entries(n).every((e) => has(e, 'request') === ['batch', 'transaction', 'history'].includes(n.type as string)),
  // entry.all(response.exists() = (%resource.type = 'batch-response' or … 'transaction-response' or … 'history'))
  'bdl-4': (n) => typeof n.type === 'string' && entries(n).every((e) => has(e, 'response') === ['batch-response', 'transaction-response', 'history'].includes(n.type as string)),
  // (type = 'history') or entry.where(fullUrl.exists()).select(fullUrl&resource.meta.versionId).isDistinct()
  'bdl-7': (n) => {
    if (n.type === 'history') return true;
    const urls = entries(n).map((e) => e.fullUrl).filter((u) => u !== undefined && u !== null);
    return urls.every((u) => typeof u === 'string') && new Set(urls).size === urls.length;
  },
};

function linkIdsDistinct(root: Node): boolean {
  const seen = new Set<string>();
  const stack: unknown[] = [root];
  while (stack.length) {
    const v = stack.pop();
    if (Array.isArray(v)) {
      for (const x of v) if (x !== null && typeof x === 'object') stack.push(x);
      continue;
    }
    const o = v as Node;
    for (const k in o) {
      const x = o[k];
      if (k === 'linkId') {
        if (typeof x !== 'string' || seen.has(x)) return false;
        seen.add(x);
      } else if (k === '_linkId') return false;
      else if (x !== null && typeof x === 'object') stack.push(x);
    }
  }
  return true;
}

function entries(n: Node): Node[] {
  const e = n.entry;
  return Array.isArray(e) && e.every((x) => x !== null && typeof x === 'object' && !Array.isArray(x)) ? (e as Node[]) : [{ invalid: true }];
}

/** The FHIRPath model path of a definition-prefixed element path: SimpleQuantity -> Quantity, value[x] -> value. */
export function modelPath(path: string): string {
  return path.replace(/^SimpleQuantity\b/, 'Quantity').replace(/\[x\]/g, '');
}

const compiled = new Map<string, Invariant>();

/**
 * Where an invariant is evaluated: on a resource, on an element object, or on a primitive value. fhirpath.js
 * cannot navigate from a bare primitive (ras-1 on a decimal probability throws), so invariants of
 * primitive elements are evaluated from the parent as `element.all(expression)`.
 */
export type Site = 'resource' | 'node' | 'primitive';

/** The invariant `id` prepared for nodes at `path` (a resource type for resource-level invariants). */
export function invariant(id: string, path: string, site: Site): Invariant {
  const cacheKey = `${id}\u0000${path}\u0000${site}`;
  const hit = compiled.get(cacheKey);
  if (hit) return hit;
  const c: ConstraintDef = invariantTable().constraints[id];
  const inv: Invariant = { id, key: c.key, severity: c.severity, human: c.human, site };
  if (site === 'node' || site === 'resource') {
    const shortcut = SHORTCUTS[id];
    if (shortcut) inv.shortcut = shortcut;
  }
  if (c.expression.trim() === 'htmlChecks()') inv.native = 'html';
  else {
    if (id === 'dom-3') inv.native = 'dom-3';
    const expr = compatible(id, c.expression);
    const mp = modelPath(path);
    const cut = mp.lastIndexOf('.');
    // Compiled on first evaluation: native ones are only compiled when cross-checked.
    let fn: Evaluator | undefined;
    inv.evaluate = (node, env) => {
      fn ??= (site === 'resource'
        ? fhirpath.compile(expr, r4model, OPTIONS)
        : site === 'primitive'
          ? fhirpath.compile({ base: mp.slice(0, cut), expression: `${mp.slice(cut + 1)}.all(${expr})` }, r4model, OPTIONS)
          : fhirpath.compile({ base: mp, expression: expr }, r4model, OPTIONS)) as unknown as Evaluator;
      return fn(node, env);
    };
    inv.expression = expr;
  }
  compiled.set(cacheKey, inv);
  return inv;
}

/** Constraint ids declared on an element path (ele-1 excluded: checked natively). */
export function constraintIds(path: string): readonly string[] {
  return (invariantTable().elements[path] ?? []).filter((id) => id !== ELE_1);
}

/**
 * Whether an invariant result passes: an invariant must evaluate to true
 * (https://hl7.org/fhir/R4/conformance-rules.html#constraints), so empty fails (per-1 with a date start
 * and a dateTime end on the same day is uncertain, hence not shown to hold); a single boolean is
 * itself; any other non-empty result is true.
 */
export function holds(result: unknown[]): boolean {
  if (result.length === 1 && typeof result[0] === 'boolean') return result[0];
  return result.length > 0;
}

export function constraintDef(id: string): ConstraintDef {
  return invariantTable().constraints[id];
}
