// FHIRPath for SearchParameter expressions (https://hl7.org/fhir/R4/searchparameter.html#expression):
// compiled once per (base, expression) and cached. Two rewrites make the official R4 expressions
// evaluable synchronously by fhirpath.js (https://hl7.org/fhirpath/):
//  - `x.where(resolve() is T)` becomes a test on the reference's type (resolve() is async in
//    fhirpath.js, and resolving at write time would make index rows depend on other resources);
//  - `x as T` and `x.as(T)` become `x.ofType(T)`: R4 applies `as` to collections (e.g.
//    `Observation.component.value as Quantity`), which fhirpath.js rejects as a non-singleton.
import fhirpath from 'fhirpath';
import r4model from 'fhirpath/fhir-context/r4/index.js';
import { compileFast, fastNodeType } from './fast-path.js';

export type Evaluator = (data: unknown, env?: Record<string, unknown>) => unknown[];

/** The FHIRPath test standing in for `resolve() is T`: a relative or absolute literal reference to T, or Reference.type. */
function referenceTypeTest(type: string): string {
  return `where(reference.matches('^(.*/)?${type}/[A-Za-z0-9.-]+(/_history/[A-Za-z0-9.-]+)?$') or type = '${type}')`;
}

/** Rewrites an official expression into one fhirpath.js evaluates synchronously with the same meaning. */
export function rewriteExpression(expr: string): string {
  return expr
    .replace(/where\(resolve\(\) is ([A-Za-z]+)\)/g, (_m, t: string) => referenceTypeTest(t))
    .replace(/\.as\(([A-Za-z]+)\)/g, '.ofType($1)')
    .replace(/([A-Za-z0-9_.()[\]]+) as ([A-Za-z]+)/g, '$1.ofType($2)');
}

/**
 * Splits at top-level `|`. Each branch is evaluated on its own and the results concatenated: the
 * union operator deduplicates with FHIRPath equality, which costs time and throws on a Quantity with a
 * comparator (e.g. Observation.component.value as Quantity in the official examples); index rows are
 * deduplicated after extraction anyway.
 */
export function splitUnion(expr: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let quote = false;
  let start = 0;
  for (let i = 0; i < expr.length; i++) {
    const ch = expr[i];
    if (quote) {
      if (ch === '\\') i++;
      else if (ch === "'") quote = false;
    } else if (ch === "'") quote = true;
    else if (ch === '(' || ch === '[') depth++;
    else if (ch === ')' || ch === ']') depth--;
    else if (ch === '|' && depth === 0) {
      out.push(expr.slice(start, i).trim());
      start = i + 1;
    }
  }
  out.push(expr.slice(start).trim());
  return out;
}

const cache = new Map<string, Evaluator>();

/**
 * A compiled evaluator for an expression, optionally relative to an element path (composite
 * components are evaluated on each element the composite's base expression selects). With `forType`,
 * branches of the simple shapes run on the fast path (search/fast-path.ts) instead of fhirpath.js.
 */
export function compileExpression(expression: string, base?: string, forType?: string): Evaluator {
  const key = `${base ?? ''}\n${forType ?? ''}\n${expression}`;
  let fn = cache.get(key);
  if (!fn) {
    const branches = splitUnion(expression).map((b): Evaluator => {
      const fast = !base && forType ? compileFast(b, forType) : undefined;
      if (fast) return (data) => fast(data);
      const e = rewriteExpression(b);
      return fhirpath.compile(base ? { base, expression: e } : e, r4model) as unknown as Evaluator;
    });
    fn = branches.length === 1 ? branches[0] : (data, env) => branches.flatMap((b) => b(data, env));
    cache.set(key, fn);
  }
  return fn;
}

/** The element path fhirpath.js records on an object result (e.g. `Observation.component`). */
export function nodePath(node: unknown): string | undefined {
  return (node as { __path__?: { path?: string } } | null)?.__path__?.path;
}

/** The FHIR datatype fhirpath.js records on an object result (e.g. `Identifier`), when known. */
export function nodeType(node: unknown): string | undefined {
  return fastNodeType(node) ?? (node as { __path__?: { fhirNodeDataType?: string } } | null)?.__path__?.fhirNodeDataType;
}
