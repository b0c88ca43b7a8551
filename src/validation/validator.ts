// The R4 resource validator (https://hl7.org/fhir/R4/validation.html): structure from the generated
// JSON Schemas (ajv), then ele-1, FHIRPath invariants and required bindings in one typed walk.
// Every issue carries a FHIRPath location and a message that never quotes the resource's values.
import { FhirError, type Issue } from '../fhir/errors.js';
import { checkStructure } from './structure.js';
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
  /** Tests: evaluate with fhirpath.js every invariant also decided natively and report disagreements as errors. */
  crossCheck?: boolean;
}

/** Nesting depth and node count; the recursion stops at maxDepth, so it is bounded by the limit itself. */
function measure(value: unknown, maxDepth: number, maxNodes: number): 'depth' | 'nodes' | undefined {
  let nodes = 0;
  let over: 'depth' | 'nodes' | undefined;
  const visit = (v: unknown, d: number): void => {
    if (over) return;
    if (++nodes > maxNodes) {
      over = 'nodes';
      return;
    }
    if (v === null || typeof v !== 'object') return;
    if (d > maxDepth) {
      over = 'depth';
      return;
    }
    if (Array.isArray(v)) for (const x of v) visit(x, d + 1);
    else for (const k in v) visit((v as Record<string, unknown>)[k], d + 1);
  };
  visit(value, 1);
  return over;
}

/** Satisfies interactions' ResourceValidator (structurally: validation does not import interactions). */
export class R4Validator {
  private readonly invariants: boolean;
  private readonly bindings: boolean;
  private readonly maxDepth: number;
  private readonly maxNodes: number;
  private readonly crossCheck: boolean;
  private readonly unknownExtensions: 'accept' | 'reject';

  constructor(opts: ValidatorOptions = {}) {
    this.invariants = opts.invariants ?? true;
    this.bindings = opts.bindings ?? true;
    this.maxDepth = opts.maxDepth ?? 128;
    this.maxNodes = opts.maxNodes ?? 2_000_000;
    this.crossCheck = opts.crossCheck ?? false;
    this.unknownExtensions = opts.unknownExtensions ?? 'accept';
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
      const issues = checkStructure(r);
      if (this.invariants || this.bindings || this.unknownExtensions === 'reject') {
        walkResource(r, r.resourceType, { invariants: this.invariants, bindings: this.bindings, crossCheck: this.crossCheck, unknownExtensions: this.unknownExtensions }, issues);
      }
      return issues;
    } catch (e) {
      // A fault of the validator, never of the client: a 500 (details in the log, not the body).
      throw new FhirError('internal', 'the validator failed on this resource', { cause: e });
    }
  }
}
