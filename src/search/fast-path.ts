// A fast evaluator for the simple shapes most official SearchParameter expressions take
// (https://hl7.org/fhir/R4/searchparameter.html#expression): `Type.a.b`, `(Type.a as X)`,
// `Type.a.as(X)`, `Type.a.ofType(X)` and `Type.a.where(resolve() is T)`. It walks the JSON directly,
// using the generated element table for types and choice elements, and gives the same values as
// fhirpath.js for those shapes (test/unit/search-fast-path.test.ts compares both on the official
// examples and Synthea). Anything else returns undefined and goes to fhirpath.js. Index extraction
// evaluates every parameter of every written resource, so this is on the ingest hot path.
import { elementIndex } from '../fhir/definitions.js';

export type FastEvaluator = (resource: unknown) => unknown[];

/** FHIR types of values returned for objects (fhirpath.js records them on `__path__`; we never mutate resources). */
const valueTypes = new WeakMap<object, string>();

/** The FHIR datatype the fast path found an object result to be. */
export function fastNodeType(node: unknown): string | undefined {
  return node !== null && typeof node === 'object' ? valueTypes.get(node) : undefined;
}

interface Step {
  name: string;
  /** ofType filter applied after the step. */
  ofType?: string;
  /** where(resolve() is T): keep References to T. */
  refType?: string;
}

interface Ctx {
  /** Type whose element table holds the next step (a resource or complex datatype). */
  owner: string;
  /** Path of the node inside `owner` ('' at the owner's root). */
  path: string;
}

const IDENT = '[A-Za-z][A-Za-z0-9]*';
const STEP_RE = new RegExp(`^(${IDENT})(?:\\.(?:as|ofType)\\((${IDENT})\\)|\\.where\\(resolve\\(\\) is (${IDENT})\\))?$`);

/** Parses a branch into its root type and steps, or undefined when it is not one of the simple shapes. */
export function parseSimple(branch: string): { root: string; steps: Step[] } | undefined {
  let e = branch.trim();
  // `(X as T)` and `X as T`
  const paren = /^\((.*)\)$/.exec(e);
  if (paren) e = paren[1].trim();
  const as = new RegExp(`^([A-Za-z0-9.]+) as (${IDENT})$`).exec(e);
  if (as) e = `${as[1]}.ofType(${as[2]})`;
  if (/[^A-Za-z0-9.() ]/.test(e.replace(/where\(resolve\(\) is [A-Za-z]+\)/g, ''))) return undefined;
  // Split on dots outside parentheses.
  const parts: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < e.length; i++) {
    const ch = e[i];
    if (ch === '(') depth++;
    else if (ch === ')') depth--;
    else if (ch === '.' && depth === 0) {
      parts.push(e.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(e.slice(start));
  const root = parts.shift();
  if (!root || !new RegExp(`^${IDENT}$`).test(root) || !parts.length) return undefined;
  const steps: Step[] = [];
  for (const p of parts) {
    const fn = /^(as|ofType)\((\w+)\)$/.exec(p);
    if (fn) {
      if (!steps.length || steps[steps.length - 1].ofType || steps[steps.length - 1].refType) return undefined;
      steps[steps.length - 1].ofType = fn[2];
      continue;
    }
    const wh = /^where\(resolve\(\) is (\w+)\)$/.exec(p);
    if (wh) {
      if (!steps.length || steps[steps.length - 1].ofType || steps[steps.length - 1].refType) return undefined;
      steps[steps.length - 1].refType = wh[1];
      continue;
    }
    const m = STEP_RE.exec(p);
    if (!m || m[2] || m[3]) return undefined;
    steps.push({ name: m[1] });
  }
  return { root, steps };
}

const PRIMITIVE = /^[a-z]|^http:\/\/hl7\.org\/fhirpath\//;

function upperFirst(s: string): string {
  return s.charAt(0).toUpperCase() + s.slice(1);
}

/** The element's declared types at ctx + name, and whether it is a choice element. */
function lookup(ctx: Ctx, name: string): { types: string[]; choice: boolean; path: string } | undefined {
  const table = elementIndex()[ctx.owner];
  if (!table) return undefined;
  const path = ctx.path ? `${ctx.path}.${name}` : name;
  if (table[path]) return { types: table[path], choice: false, path };
  if (table[`${path}[x]`]) return { types: table[`${path}[x]`], choice: true, path };
  return undefined;
}

function childCtx(ctx: Ctx, path: string, type: string): Ctx | undefined {
  if (type === 'BackboneElement' || type === 'Element') return { owner: ctx.owner, path };
  if (PRIMITIVE.test(type)) return undefined;
  return { owner: type, path: '' };
}

function refersTo(ref: unknown, type: string): boolean {
  if (!ref || typeof ref !== 'object') return false;
  const r = ref as { reference?: unknown; type?: unknown };
  if (r.type === type) return true;
  return typeof r.reference === 'string' && new RegExp(`^(.*/)?${type}/[A-Za-z0-9.-]+(/_history/[A-Za-z0-9.-]+)?$`).test(r.reference);
}

/** Types of the resources the expression root applies to ('Resource' and 'DomainResource' apply to all). */
function rootApplies(root: string, resourceType: string): boolean {
  return root === resourceType || root === 'Resource' || root === 'DomainResource';
}

/**
 * Compiles a simple branch, or returns undefined. The element table must know every step, so a
 * misspelt or unknown path falls back to fhirpath.js instead of silently matching nothing.
 */
export function compileFast(branch: string, forType: string): FastEvaluator | undefined {
  const parsed = parseSimple(branch);
  if (!parsed || !rootApplies(parsed.root, forType)) return undefined;
  // Resolve the walk once, statically, for this resource type.
  interface Plan {
    name: string;
    choice: boolean;
    /** For a choice: the variants kept (key suffix and type). */
    variants: { key: string; type: string }[];
    /** The single declared type when not a choice. */
    type?: string;
    refType?: string;
  }
  const plan: Plan[] = [];
  let ctxs: Ctx[] = [{ owner: forType, path: '' }];
  for (const step of parsed.steps) {
    if (ctxs.length !== 1) return undefined;
    const ctx = ctxs[0];
    const el = lookup(ctx, step.name);
    if (!el) return undefined;
    if (el.choice) {
      const kept = el.types.filter((t) => !step.ofType || t === step.ofType);
      plan.push({ name: step.name, choice: true, variants: kept.map((t) => ({ key: `${step.name}${upperFirst(t)}`, type: t })), ...(step.refType ? { refType: step.refType } : {}) });
      const next = kept.length === 1 ? childCtx(ctx, el.path, kept[0]) : undefined;
      ctxs = next ? [next] : [];
    } else {
      if (el.types.length !== 1) return undefined;
      const t = el.types[0];
      if (step.ofType && step.ofType !== t) return undefined;
      plan.push({ name: step.name, choice: false, variants: [], type: t, ...(step.refType ? { refType: step.refType } : {}) });
      const next = childCtx(ctx, el.path, t);
      ctxs = next ? [next] : [];
    }
  }
  const lastIndex = plan.length - 1;
  return (resource: unknown): unknown[] => {
    if (!resource || typeof resource !== 'object' || !rootApplies(parsed.root, (resource as { resourceType?: string }).resourceType ?? '')) return [];
    let nodes: unknown[] = [resource];
    for (let i = 0; i < plan.length; i++) {
      const p = plan[i];
      const next: unknown[] = [];
      for (const n of nodes) {
        const o = n as Record<string, unknown>;
        if (p.choice) {
          for (const v of p.variants) push(next, o[v.key], v.type, i === lastIndex);
        } else {
          push(next, o[p.name], p.type!, i === lastIndex);
        }
      }
      nodes = p.refType ? next.filter((r) => refersTo(r, p.refType!)) : next;
    }
    return nodes;
  };
}

function push(out: unknown[], value: unknown, type: string, last: boolean): void {
  if (value === undefined || value === null) return;
  const add = (v: unknown) => {
    if (v === undefined || v === null) return;
    if (typeof v === 'object') {
      if (last) valueTypes.set(v, type);
      out.push(v);
    } else if (last) out.push(v);
  };
  if (Array.isArray(value)) for (const v of value) add(v);
  else add(value);
}
