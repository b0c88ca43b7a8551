// One typed pass over a resource (https://hl7.org/fhir/R4/validation.html) for what JSON Schema cannot
// say: ele-1 on every element, the FHIRPath invariants of each element and datatype (inherited ones
// included: dom-*, ext-1, ref-1, ...) and required bindings. Contained and other nested resources
// are walked as resources of their own type.
import type { Issue } from '../fhir/errors.js';
import { codeInValueSet, codingInValueSet, requiredValueSet } from './bindings.js';
import { ELE_1, constraintDef, constraintIds, evaluate, holds, invariant, type Invariant, type Site } from './invariants.js';
import { definition, type DefInfo, type PropInfo } from './type-model.js';
import { precheck } from './precheck.js';
import { checkExtension, checkTypeRules, type Host } from './rules.js';
import { checkXhtml } from './xhtml.js';

export interface WalkOptions {
  invariants: boolean;
  bindings: boolean;
  /** Also evaluate with fhirpath.js every invariant decided natively, and report disagreements (tests). */
  crossCheck?: boolean;
  /** Extensions without a known definition: accepted (default) or refused. */
  unknownExtensions?: 'accept' | 'reject';
  /** Stop walking once more than this many issues, at least one an error, are gathered (default: never). */
  stopAfter?: number;
}

/**
 * When to stop: only once an error is among the issues, so the verdict (valid or not) never depends
 * on the limit; the walk just stops adding to a list that is already too long to report in full.
 */
interface Budget {
  limit: number;
  /** Issues before this index hold no error. */
  scanned: number;
  stopped: boolean;
}

function spent(ctx: { out: Issue[]; budget: Budget }): boolean {
  const b = ctx.budget;
  if (b.stopped) return true;
  if (ctx.out.length <= b.limit) return false;
  for (; b.scanned < ctx.out.length; b.scanned++) {
    const s = ctx.out[b.scanned].severity;
    if (s === 'error' || s === 'fatal') return (b.stopped = true);
  }
  return false;
}

interface Ctx {
  opts: WalkOptions;
  out: Issue[];
  env: { resource: unknown; rootResource: unknown };
  /** Structure errors were found: invariants that fail to evaluate are then not reported. */
  structureBroken: boolean;
  /** Locations with structure errors: their codes are not also checked against bindings. */
  badPaths: ReadonlySet<string>;
  /** Local references ('#…' in any `reference` or canonical/uri/url) anywhere under the root resource (dom-3). */
  refs: Set<string>;
  /** This resource refers to its container ('#' alone), for dom-3 of contained resources. */
  refersToContainer: boolean;
  /** Per contained resource of this resource: whether it refers to its container. */
  containedBack: Map<Obj, boolean>;
  budget: Budget;
}

type Obj = Record<string, unknown>;

const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v);

/** Walks a resource of a known type; issues are appended to `out`. Returns true if it stopped early (opts.stopAfter). */
export function walkResource(resource: Obj, path: string, opts: WalkOptions, out: Issue[]): boolean {
  const badPaths = new Set(out.filter((i) => i.severity === 'error').map((i) => i.expression?.[0] ?? ''));
  const budget: Budget = { limit: opts.stopAfter ?? Infinity, scanned: 0, stopped: false };
  walkIn(resource, path, { opts, out, structureBroken: out.length > 0, badPaths, root: resource, refs: new Set(), budget });
  return budget.stopped;
}

interface WalkParams {
  opts: WalkOptions;
  out: Issue[];
  structureBroken: boolean;
  badPaths: ReadonlySet<string>;
  root: unknown;
  refs: Set<string>;
  budget: Budget;
}

function walkIn(resource: Obj, path: string, p: WalkParams): Ctx | undefined {
  const def = definition(String(resource.resourceType));
  if (!def?.isResource) return undefined;
  const ctx: Ctx = { opts: p.opts, out: p.out, env: { resource, rootResource: p.root }, structureBroken: p.structureBroken, badPaths: p.badPaths, refs: p.refs, refersToContainer: false, containedBack: new Map(), budget: p.budget };
  const invariants = p.opts.invariants ? resourceInvariants(def.name) : [];
  if (p.opts.invariants) {
    runInvariants(ctx, invariants, resource, path, undefined, def);
    checkTypeRules(def.name, resource, path, p.out);
  }
  walkChildren(ctx, def, resource, path, { path: def.name, type: def.name, resource: true });
  const dom3 = invariants.find((i) => i.native === 'dom-3');
  if (dom3 && !ctx.budget.stopped && Array.isArray(resource.contained)) {
    const ok = checkDom3(ctx, dom3, resource.contained, path);
    if (p.opts.crossCheck) crossCheck(ctx, dom3, ok, resource, path, 'native');
  }
  return ctx;
}

/**
 * dom-3 natively: every contained resource with an id is referenced ('#id') from somewhere in the
 * resource, or refers to its container ('#'). The R4 expression recomputes %resource.descendants()
 * for every contained resource (about 1.4 ms per resource on the examples); the walk already visits
 * every reference, canonical, uri and url once.
 */
function checkDom3(ctx: Ctx, inv: Invariant, contained: unknown[], path: string): boolean {
  const unmatched = contained.some((c) => isObj(c) && typeof c.id === 'string' && !ctx.refs.has(`#${c.id}`) && !ctx.containedBack.get(c));
  if (unmatched) ctx.out.push({ severity: inv.severity, code: 'invariant', diagnostics: `${inv.key}: ${inv.human}`, expression: [path] });
  return !unmatched;
}

const resourceLevel = new Map<string, Invariant[]>();
function resourceInvariants(type: string): Invariant[] {
  let list = resourceLevel.get(type);
  if (!list) {
    list = constraintIds(type).map((id) => invariant(id, type, 'resource'));
    resourceLevel.set(type, list);
  }
  return list;
}

/**
 * What the walk needs at every value of a property, looked up once per property rather than at
 * every node (one map lookup per value instead of several).
 */
interface Plan {
  /** Invariants of its element path and of its type (deduplicated). */
  invariants: Invariant[];
  /** The required value set bound to the element, if checked. */
  valueSet: string | undefined;
  /** The context of extensions found on the value (checkExtension). */
  host: Host;
}

function planOf(prop: PropInfo): Plan {
  let plan = prop.walkPlan as Plan | undefined;
  if (!plan) {
    plan = { invariants: propInvariants(prop), valueSet: requiredValueSet(prop.elementPath), host: { path: prop.elementPath, type: prop.target, resource: false } };
    prop.walkPlan = plan;
  }
  return plan;
}

/** Invariants for a value of `prop`: those of its element path and those of its type (deduplicated). */
function propInvariants(prop: PropInfo): Invariant[] {
  const site: Site = prop.kind === 'primitive' ? 'primitive' : 'node';
  const seen = new Set<string>();
  const list: Invariant[] = [];
  const add = (path: string) => {
    for (const id of constraintIds(path)) {
      if (seen.has(id)) continue;
      seen.add(id);
      list.push(invariant(id, path, path === prop.elementPath ? site : 'node'));
    }
  };
  add(prop.elementPath);
  if (prop.kind === 'complex') add(prop.target);
  return list;
}

function runInvariants(ctx: Ctx, list: Invariant[], node: unknown, path: string, parent?: unknown, def?: DefInfo): void {
  let html: ReturnType<typeof checkXhtml> | undefined;
  for (const inv of list) {
    if (inv.native === 'dom-3') continue; // after the walk, see checkDom3
    if (inv.native === 'html') {
      if (typeof node !== 'string') continue;
      html ??= checkXhtml(node);
      for (const p of html) {
        if (p.rule !== inv.key) continue;
        ctx.out.push({ severity: inv.severity, code: 'invariant', diagnostics: `${inv.key}: ${inv.human} (${p.message})`, expression: [path] });
      }
      continue;
    }
    const short = inv.shortcut?.(node as Obj, ctx.env) ?? false;
    const decided = short ? 'T' : inv.site !== 'primitive' && inv.expression ? precheck(inv.expression, node, def) : 'U';
    if (ctx.opts.crossCheck && decided !== 'U') crossCheck(ctx, inv, decided === 'T', node, path, short ? 'shortcut' : 'precheck');
    if (short) continue;
    let ok: boolean;
    try {
      ok = decided === 'U' ? holds(evaluate(inv, inv.site === 'primitive' ? parent : node, ctx.env)) : decided === 'T';
    } catch {
      // fhirpath.js messages can quote the data: only the key is reported.
      if (!ctx.structureBroken) {
        ctx.out.push({ severity: 'warning', code: 'invariant', diagnostics: `${inv.key}: could not be evaluated on this content; not checked`, expression: [path] });
      }
      continue;
    }
    if (!ok) ctx.out.push({ severity: inv.severity, code: 'invariant', diagnostics: `${inv.key}: ${inv.human}`, expression: [path] });
  }
}

/** Test mode: the native answer against fhirpath.js (an exception counts as a disagreement). */
function crossCheck(ctx: Ctx, inv: Invariant, native: boolean, node: unknown, path: string, how: string): void {
  let fp: boolean | string;
  try {
    fp = holds(evaluate(inv, node, ctx.env));
  } catch {
    fp = 'an exception';
  }
  if (fp !== native) ctx.out.push({ severity: 'error', code: 'exception', diagnostics: `cross-check: ${inv.key} ${how} says ${native}, fhirpath.js ${fp}`, expression: [path] });
}

function ele1(ctx: Ctx, path: string): void {
  const c = constraintDef(ELE_1);
  ctx.out.push({ severity: 'error', code: 'invariant', diagnostics: `${ELE_1}: ${c.human}`, expression: [path] });
}

/** `[0]`, `[1]`, ...: array steps of locations, built once. */
const INDEX = Array.from({ length: 64 }, (_, i) => `[${i}]`);
const index = (i: number) => (i < 64 ? INDEX[i] : `[${i}]`);

/** `keys`: Object.keys(obj) when the caller already has them. */
function walkChildren(ctx: Ctx, def: DefInfo, obj: Obj, path: string, host: Host, keys: string[] = Object.keys(obj)): void {
  for (const key of keys) {
    if (spent(ctx)) return;
    const prop = def.props.get(key);
    if (!prop) continue;
    if (prop.kind === 'sibling') {
      // Visited with its primitive, unless the primitive value itself is absent.
      const primitive = def.props.get(key.slice(1));
      if (primitive && !(primitive.name in obj)) visitPrimitive(ctx, primitive, undefined, obj[key], path, obj);
      continue;
    }
    const value = obj[key];
    if (prop.kind === 'primitive') visitPrimitive(ctx, prop, value, obj[prop.siblingName], path, obj);
    else if (prop.array) {
      if (!Array.isArray(value)) continue;
      const extension = (ctx.opts.invariants || ctx.opts.unknownExtensions === 'reject') && prop.target === 'Extension';
      const base = path + prop.step;
      for (let i = 0; i < value.length; i++) {
        if (spent(ctx)) return;
        const at = base + index(i);
        if (extension && isObj(value[i])) checkExtension(value[i] as Obj, at, ctx.out, host, ctx.opts.unknownExtensions === 'reject');
        visitValue(ctx, prop, value[i], at);
      }
    } else visitValue(ctx, prop, value, path + prop.step);
  }
}

function visitValue(ctx: Ctx, prop: PropInfo, value: unknown, path: string): void {
  if (!isObj(value)) return;
  if (prop.kind === 'resource') {
    // A contained resource's %rootResource is its container; its references count for the container's dom-3.
    const contained = prop.name === 'contained';
    const inner = walkIn(value, path, { opts: ctx.opts, out: ctx.out, structureBroken: ctx.structureBroken, badPaths: ctx.badPaths, root: contained ? ctx.env.rootResource : value, refs: contained ? ctx.refs : new Set(), budget: ctx.budget });
    if (contained && inner) ctx.containedBack.set(value, inner.refersToContainer);
    return;
  }
  if (typeof value.reference === 'string' && value.reference.startsWith('#')) noteLocalRef(ctx, value.reference);
  const keys = Object.keys(value);
  if (keys.length === 0) return; // reported by the schema (empty object)
  if (keys.length === 1 && keys[0] === 'id') ele1(ctx, path);
  const def = prop.targetDef;
  const plan = planOf(prop);
  if (ctx.opts.invariants) {
    runInvariants(ctx, plan.invariants, value, path, undefined, def);
    checkTypeRules(prop.target, value, path, ctx.out);
  }
  if (ctx.opts.bindings && plan.valueSet && (ctx.badPaths.size === 0 || !ctx.badPaths.has(path))) checkCoded(ctx, prop, plan.valueSet, value, path);
  if (def) walkChildren(ctx, def, value, path, plan.host, keys);
}

function visitPrimitive(ctx: Ctx, prop: PropInfo, value: unknown, ext: unknown, path: string, parent: Obj): void {
  if (prop.array) {
    const values = Array.isArray(value) ? value : [];
    const exts = Array.isArray(ext) ? ext : [];
    const n = Math.max(values.length, exts.length);
    const base = path + prop.step;
    for (let i = 0; i < n && !spent(ctx); i++) primitiveItem(ctx, prop, values[i], exts[i], base + index(i), parent);
  } else primitiveItem(ctx, prop, value, ext, path + prop.step, parent);
}

const elementDef = () => definition('Element');

/** dom-3 looks for '#id' in every `reference` and every canonical, uri and url of the resource. */
const LOCAL_REF_TYPES = new Set(['canonical', 'uri', 'url']);

function noteLocalRef(ctx: Ctx, ref: string): void {
  ctx.refs.add(ref);
  if (ref === '#') ctx.refersToContainer = true;
}

function primitiveItem(ctx: Ctx, prop: PropInfo, value: unknown, ext: unknown, path: string, parent: Obj): void {
  const hasValue = value !== undefined && value !== null;
  if (isObj(ext)) {
    const keys = Object.keys(ext);
    if (!hasValue && keys.length > 0 && !('extension' in ext)) ele1(ctx, path);
    const def = elementDef();
    if (def && keys.length) walkChildren(ctx, def, ext, path, planOf(prop).host, keys);
  } else if (!hasValue) return;
  if (!hasValue || Array.isArray(value) || isObj(value)) return;
  if (typeof value === 'string' && value.startsWith('#') && (prop.element === 'reference' || LOCAL_REF_TYPES.has(prop.target))) noteLocalRef(ctx, value);
  const plan = planOf(prop);
  if (ctx.opts.invariants && plan.invariants.length) runInvariants(ctx, plan.invariants, value, path, parent);
  if (ctx.opts.bindings && plan.valueSet && typeof value === 'string' && (ctx.badPaths.size === 0 || !ctx.badPaths.has(path))) {
    if (!codeInValueSet(plan.valueSet, value)) {
      ctx.out.push({ severity: 'error', code: 'code-invalid', diagnostics: `the code is not in the required value set ${plan.valueSet}`, expression: [path] });
    }
  }
}

function checkCoded(ctx: Ctx, prop: PropInfo, vs: string, value: Obj, path: string): void {
  const target = prop.target === 'SimpleQuantity' ? 'Quantity' : prop.target;
  if (target === 'Coding' || target === 'Quantity') {
    if (!codingInValueSet(vs, value.system, value.code)) {
      ctx.out.push({ severity: 'error', code: 'code-invalid', diagnostics: `the code is not in the required value set ${vs}`, expression: [path] });
    }
  } else if (target === 'CodeableConcept') {
    const codings = Array.isArray(value.coding) ? value.coding.filter((c): c is Obj => isObj(c) && typeof c.code === 'string') : [];
    if (codings.length && !codings.some((c) => codingInValueSet(vs, c.system, c.code))) {
      ctx.out.push({ severity: 'error', code: 'code-invalid', diagnostics: `no coding is in the required value set ${vs}`, expression: [path] });
    }
  }
}
