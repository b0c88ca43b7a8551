// The R4 resource validator (https://hl7.org/fhir/R4/validation.html): structure from the generated
// JSON Schemas (ajv), then ele-1, FHIRPath invariants and required bindings in one typed walk.
// Every issue carries a FHIRPath location and a message that never quotes the resource's values.
import { FhirError, type Issue } from '../fhir/errors.js';
import { checkStructure, structureValidator } from './structure.js';
import { pause } from '../fhir/pacer.js';
import { resourceTypeInfo } from '../fhir/definitions.js';
import { definition } from './type-model.js';
import { walkResource } from './walker.js';

export interface ValidatorOptions {
  /** Evaluate FHIRPath invariants (default true). */
  invariants?: boolean;
  /** Check required bindings (default true). */
  bindings?: boolean;
  /** Deepest JSON nesting accepted (default 128; the HTTP body parser stops at 100). */
  maxDepth?: number;
  /** Most JSON nodes (objects, arrays and values) accepted in one resource (default 2,000,000). */
  maxNodes?: number;
  /**
   * An extension whose url names no definition this server knows (the core package's): accepted (the
   * default: the base specification lets any extension be used) or refused, as the HL7 reference
   * validator does by default.
   */
  unknownExtensions?: 'accept' | 'reject';
  /**
   * Most issues reported (default 100); the rest are counted in a final "and N more" issue. An
   * invalid resource stops being checked soon after this many, which bounds the cost of hostile input.
   */
  maxIssues?: number;
  /** Tests: evaluate with fhirpath.js every invariant also decided natively and report disagreements as errors. */
  crossCheck?: boolean;
}

/** Nesting depth and node count; the recursion stops at maxDepth, so it is bounded by the limit itself. */
function measure(value: unknown, maxDepth: number, maxNodes: number): 'depth' | 'nodes' | undefined {
  const n = countNodes(value, 1, maxDepth, maxNodes, 0);
  return n === DEPTH ? 'depth' : n === NODES ? 'nodes' : undefined;
}

const DEPTH = -1;
const NODES = -2;

/**
 * The running node count after `v` (`seen` before it), or DEPTH / NODES once a limit is passed (the
 * first one met, in document order). A plain recursive function: it runs on every node of every
 * resource written.
 */
function countNodes(v: unknown, d: number, maxDepth: number, maxNodes: number, seen: number): number {
  let n = seen + 1;
  if (n > maxNodes) return NODES;
  if (v === null || typeof v !== 'object') return n;
  if (d > maxDepth) return DEPTH;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) {
      n = countNodes(v[i], d + 1, maxDepth, maxNodes, n);
      if (n < 0) return n;
    }
  } else {
    for (const k in v) {
      n = countNodes((v as Record<string, unknown>)[k], d + 1, maxDepth, maxNodes, n);
      if (n < 0) return n;
    }
  }
  return n;
}

/**
 * The first `max` issues, errors first (they decide the outcome), then one informational issue
 * counting the rest; when the checks stopped early the rest cannot be counted, and it says so.
 */
export function capIssues(issues: Issue[], max: number, stopped: boolean, type: string): Issue[] {
  if (issues.length <= max && !stopped) return issues;
  const isError = (i: Issue) => i.severity === 'error' || i.severity === 'fatal';
  const ordered = issues.filter(isError).concat(issues.filter((i) => !isError(i)));
  const kept = ordered.slice(0, max);
  const rest = ordered.length - kept.length;
  const diagnostics = stopped
    ? `and more issues not listed: validation stopped after ${issues.length} (${max} reported)`
    : `and ${rest} more issue${rest === 1 ? '' : 's'} not listed (${max} reported)`;
  kept.push({ severity: 'information', code: 'informational', diagnostics, expression: [type] });
  return kept;
}

/** Satisfies interactions' ResourceValidator (structurally: validation does not import interactions). */
export class R4Validator {
  private readonly invariants: boolean;
  private readonly bindings: boolean;
  private readonly maxDepth: number;
  private readonly maxNodes: number;
  private readonly crossCheck: boolean;
  private readonly unknownExtensions: 'accept' | 'reject';
  private readonly maxIssues: number;

  constructor(opts: ValidatorOptions = {}) {
    this.invariants = opts.invariants ?? true;
    this.bindings = opts.bindings ?? true;
    this.maxDepth = opts.maxDepth ?? 128;
    this.maxNodes = opts.maxNodes ?? 2_000_000;
    this.crossCheck = opts.crossCheck ?? false;
    this.unknownExtensions = opts.unknownExtensions ?? 'accept';
    this.maxIssues = opts.maxIssues ?? 100;
  }

  validate(resource: unknown): Issue[] {
    if (!resource || typeof resource !== 'object' || Array.isArray(resource)) {
      return [{ severity: 'error', code: 'structure', diagnostics: 'a resource must be a JSON object' }];
    }
    const r = resource as Record<string, unknown>;
    if (typeof r.resourceType !== 'string' || !definition(r.resourceType)?.isResource) {
      return [{ severity: 'error', code: 'structure', diagnostics: 'resourceType is missing or not an R4 resource type', expression: ['resourceType'] }];
    }
    try {
      const limit = measure(r, this.maxDepth, this.maxNodes);
      if (limit) {
        const what = limit === 'depth' ? `nests deeper than ${this.maxDepth} levels` : `has more than ${this.maxNodes} JSON values`;
        return [{ severity: 'error', code: 'too-costly', diagnostics: `the resource ${what}; not validated`, expression: [r.resourceType] }];
      }
      // Headroom over the cap: duplicates and shadowed errors are dropped when errors become issues.
      const stopAfter = this.maxIssues * 2 + 50;
      const { issues, stopped } = checkStructure(r, stopAfter);
      let walkStopped = false;
      if (!stopped && (this.invariants || this.bindings || this.unknownExtensions === 'reject')) {
        walkStopped = walkResource(r, r.resourceType, { invariants: this.invariants, bindings: this.bindings, crossCheck: this.crossCheck, unknownExtensions: this.unknownExtensions, stopAfter }, issues);
      }
      return capIssues(issues, this.maxIssues, stopped || walkStopped, r.resourceType);
    } catch (e) {
      // A fault of the validator, never of the client: a 500 (details in the log, not the body).
      throw new FhirError('internal', 'the validator failed on this resource', { cause: e });
    }
  }
}

/**
 * Compiles the data types every resource shares (with the Patient validators): the one compile too
 * large to run beside requests (0.7-1 s here, most of it the first type of each ajv instance), so the
 * production entry runs it before listening; warmUpValidators does the rest after.
 */
export function primeValidators(): void {
  structureValidator('Patient', 'fast');
  structureValidator('Patient', 'full');
}

/**
 * Compiles the validators of every resource type ahead of their first use. ajv compiles a type on
 * first use (10-200 ms each once the shared types are compiled), which the first request of that type
 * paid as one uninterrupted task. The production entry runs this in the background after listening,
 * one type and mode per macrotask, so requests are served in between. Any client could make the
 * server compile every type anyway; this only moves the cost to start-up.
 */
export async function warmUpValidators(types: readonly string[] = resourceTypeInfo().map((t) => t.type)): Promise<{ types: number; ms: number }> {
  const t0 = performance.now();
  // Invariants and bindings are compiled lazily by the walk too: one small resource per type reaches them.
  const walker = new R4Validator();
  for (const type of types) {
    await pause();
    structureValidator(type, 'fast');
    await pause();
    structureValidator(type, 'full');
    await pause();
    walker.validate({ resourceType: type });
  }
  return { types: types.length, ms: Math.round(performance.now() - t0) };
}
