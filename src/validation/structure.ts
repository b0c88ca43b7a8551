// Structure checks from the generated JSON Schemas (https://hl7.org/fhir/R4/json.html): element types,
// cardinality, choice types, primitive formats, _element siblings, unknown and empty elements.
// ajv compiles one validator per resource type on first use; nested resources (contained, Bundle
// entries, Parameters) are checked by the validator of their own type.
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import formatsPlugin from 'ajv-formats';
import ucs2lengthModule from 'ajv/dist/runtime/ucs2length.js';
import type { Issue } from '../fhir/errors.js';
import { schemaDocument } from './artifacts.js';
import { fhirPathOf } from './location.js';
import { definition, safeName } from './type-model.js';

type AnyErr = ErrorObject<string, Record<string, any>, unknown>;

// ajv-formats' RFC 3339 full-date check (leap years, days per month), applied to the complete part of
// FHIR's partial dates: the spec's regexes alone accept 2021-02-30.
type FormatsPlugin = { get(name: string, mode?: string): unknown };
const plugin = ((formatsPlugin as unknown as { default?: FormatsPlugin }).default ?? formatsPlugin) as unknown as FormatsPlugin;
const rfcDate = plugin.get('date', 'full') as { validate: (s: string) => boolean };
// The function ajv's generated code calls for minLength/maxLength (CommonJS default export).
const ucs2length = ((ucs2lengthModule as unknown as { default?: unknown }).default ?? ucs2lengthModule) as (s: string) => number;

function calendarOk(s: string): boolean {
  return s.length < 10 || rfcDate.validate(s.slice(0, 10));
}

const UNKNOWN_TYPE = 'fhirResource';

/** The generated base64Binary pattern (the spec's, rewritten to be linear: fhir-definitions/validation-artifacts.ts). */
export const BASE64_PATTERN = '^(?:[\\t\\n\\x0B\\f\\r ]*(?:[0-9a-zA-Z+/=]{4}[\\t\\n\\x0B\\f\\r ]*)+)$';

const BASE64_CHARS = /[0-9a-zA-Z+/=]+/y;
const BASE64_SPACE = /[\t\n\x0B\f\r ]+/y;

/**
 * The same language as BASE64_PATTERN in one pass without a backtracking stack: quads of
 * [0-9a-zA-Z+/=], whitespace only before the first quad or right after a whole quad. Attachments
 * run to megabytes, where the regex engine spends most of a resource's validation time; the scan
 * goes run by run (sticky character-class RegExps, which V8 runs natively), counting characters.
 */
export function base64Shape(s: string): boolean {
  let n = 0;
  let i = 0;
  const len = s.length;
  while (i < len) {
    BASE64_CHARS.lastIndex = i;
    if (BASE64_CHARS.test(s)) {
      n += BASE64_CHARS.lastIndex - i;
      i = BASE64_CHARS.lastIndex;
      if (i >= len) break;
    }
    // whitespace, and only after a whole quad (or before the first)
    BASE64_SPACE.lastIndex = i;
    if (n % 4 !== 0 || !BASE64_SPACE.test(s)) return false;
    i = BASE64_SPACE.lastIndex;
  }
  return n > 0 && n % 4 === 0;
}

/** ajv's regex engine: the base64Binary shape by hand, every other pattern as a RegExp. */
function regExpEngine(pattern: string, flags: string): { test(s: string): boolean } {
  if (pattern === BASE64_PATTERN) return { test: base64Shape };
  return new RegExp(pattern, flags);
}

/**
 * Two compilations of the same schemas: `fast` stops at the first error and answers the common case
 * (a valid resource) several times faster; `full` (allErrors) runs only on a resource that failed, to
 * report every issue.
 */
type Mode = 'fast' | 'full';
const ajvs: Partial<Record<Mode, Ajv>> = {};

/** Thrown out of the `full` validators once they hold more errors than asked for (see linearErrors). */
class EnoughErrors {
  constructor(readonly errors: AnyErr[]) {}
}

/** The `full` Ajv instance, with the error limit of the running check (read by the generated code). */
type FullAjv = Ajv & { vestaStopAfter: number; vestaEnough: (errs: AnyErr[]) => EnoughErrors };

// ajv's generated code gathers a callee's errors with `vErrors = vErrors === null ? f.errors :
// vErrors.concat(f.errors)`: every failing array item copies all errors gathered so far, so 64,000
// bad items cost 2 billion copies (64 s). Appending in place is linear. The generated schemas use no
// anyOf/oneOf/not/if, so no error once recorded is ever withdrawn: stopping after enough of them
// (the throw below) loses issues, never invents one, and runs only after the `fast` pass has
// already decided the resource is invalid.
const APPEND = /vErrors = vErrors === null \? ((?:[\w$]+\.)+errors) : vErrors\.concat\(\1\);errors = vErrors\.length;/g;
const STOP = 'if(errors>self.vestaStopAfter){throw self.vestaEnough(vErrors);}';

export function linearErrors(code: string): string {
  const out = code
    .replace(APPEND, (_m, src: string) => `if(vErrors === null){vErrors = ${src};}else{for(const e$ of ${src}){vErrors.push(e$);}}errors = vErrors.length;${STOP}`)
    .replace(/errors\+\+;/g, `errors++;${STOP}`);
  // An ajv release that gathers errors differently must fail loudly here, not turn quadratic again.
  if (/vErrors\.concat\(/.test(out)) throw new Error('ajv generated an error concatenation that linearErrors does not rewrite');
  return out;
}

// ajv passes every nested validator and keyword a fresh context object with the instance path built
// by string concatenation (array indexes converted to strings), for every object and array item of
// the resource. The `fast` validators only decide valid or invalid (their errors are discarded, see
// checkStructure), so they share one empty context instead: no allocation per node.
const NESTED_CXT = /\{instancePath(?::instancePath\+[^,{}]*)?,parentData(?::[\w$]+)?,parentDataProperty(?::[^,{}]*)?,rootData\}/g;

export function sharedContexts(code: string): string {
  return code.replace(NESTED_CXT, 'self.vestaCxt');
}

/**
 * ajv counts minLength/maxLength in code points by scanning the whole string (ucs2length) at every
 * string, narratives and attachments included, to compare with 1 or 1,048,576. A string of n code
 * units holds between n/2 and n code points, so its length alone decides outside that band and the
 * scan runs only inside it: the same answers, without a pass over every string. `fn` is the name
 * ajv gave ucs2length in the generated code.
 */
export function lengthChecks(code: string, fn: string | undefined): string {
  if (!fn) return code;
  let rewritten = 0;
  const out = code.replace(new RegExp(`\\b${fn}\\(([\\w$]+)\\) ([<>]) (\\d+)\\b`, 'g'), (_m, x: string, op: string, n: string) => {
    rewritten++;
    return op === '>' ? `(${x}.length > ${n} && ${fn}(${x}) > ${n})` : `(${x}.length < ${n} || (${x}.length < ${2 * Number(n)} && ${fn}(${x}) < ${n}))`;
  });
  // Every call must have been a comparison rewritten above; an ajv release that calls it otherwise must fail loudly.
  if (code.split(`${fn}(`).length - 1 !== rewritten) throw new Error('ajv generated a string length check that lengthChecks does not rewrite');
  return out;
}
const validators: Record<Mode, Map<string, ValidateFunction>> = { fast: new Map(), full: new Map() };

function nestedErrors(errors: AnyErr[] | null | undefined, prefix: string): AnyErr[] {
  // ajv rewrites schemaPath to the fhirResource keyword; the original names the primitive at fault.
  return (errors ?? []).map((e) => ({ ...e, instancePath: prefix + e.instancePath, params: { ...e.params, innerSchemaPath: e.params.innerSchemaPath ?? e.schemaPath } }));
}

function instance(mode: Mode): Ajv {
  const cached = ajvs[mode];
  if (cached) return cached;
  // unicodeRegExp off: the spec's primitive regexes are written for code units (no \p{..}, no astral
  // ranges), and non-unicode RegExps run markedly faster in V8.
  const rewrite = (code: string) => lengthChecks(mode === 'full' ? linearErrors(code) : sharedContexts(code), a.scope.getValue('func', ucs2length)?.str);
  const a: Ajv = new Ajv({ allErrors: mode === 'full', unicodeRegExp: false, strict: true, strictTypes: false, strictTuples: false, validateSchema: false, inlineRefs: true, code: { optimize: true, regExp: regExpEngine as never, process: rewrite } });
  if (mode === 'full') Object.assign(a, { vestaStopAfter: Infinity, vestaEnough: (errs: AnyErr[]) => new EnoughErrors(errs) });
  else Object.assign(a, { vestaCxt: Object.freeze({ instancePath: '' }) });
  a.addFormat('fhir-date', { type: 'string', validate: calendarOk });
  a.addFormat('fhir-dateTime', { type: 'string', validate: calendarOk });
  a.addFormat('fhir-instant', { type: 'string', validate: calendarOk });
  // The FHIR keywords are compiled once per schema; the returned checks allocate nothing when the data is valid.
  type Check = ((data: Record<string, unknown>, cxt?: { instancePath: string }) => boolean) & { errors?: AnyErr[] };
  const keyword = (name: string, schemaType: 'object' | 'array', compile: (schema: any, parent: any) => Check) =>
    a.addKeyword({ keyword: name, type: 'object', schemaType, errors: true, compile: compile as never });
  const fail = (check: Check, errs: AnyErr[]) => {
    check.errors = errs;
    return false;
  };
  keyword('fhirChoice', 'object', (schema: Record<string, string[]>) => {
    const groups = Object.entries(schema).map(([base, variants]) => ({ base, keys: variants.flatMap((v) => [v, `_${v}`]) }));
    const members = new Set(groups.flatMap((g) => g.keys));
    const check: Check = (data, cxt) => {
      // The common case first: at most one key of any choice group present, so no group can hold two
      // (Extension has 100 candidate keys; an element carries a handful of keys).
      let present = 0;
      for (const k in data) if (members.has(k) && data[k] !== undefined && ++present > 1) break;
      if (present <= 1) return true;
      let errs: AnyErr[] | undefined;
      for (const g of groups) {
        let present = 0;
        for (const k of g.keys) if (data[k] !== undefined) present++;
        // a variant and its own _ sibling count once
        if (present > 1 && new Set(g.keys.filter((k) => data[k] !== undefined).map((k) => k.replace(/^_/, ''))).size > 1) {
          (errs ??= []).push({ keyword: 'fhirChoice', params: { base: g.base }, instancePath: cxt?.instancePath ?? '', schemaPath: '', message: '' });
        }
      }
      return errs ? fail(check, errs) : true;
    };
    return check;
  });
  keyword('fhirRequired', 'array', (schema: string[][], parent: { fhirChoice?: Record<string, string[]> }) => {
    const groups = schema.map((group) => {
      const base = Object.entries(parent?.fhirChoice ?? {}).find(([, vs]) => vs.includes(group[0]))?.[0];
      return { group, name: base ? `${base}[x]` : group[0] };
    });
    const check: Check = (data, cxt) => {
      let errs: AnyErr[] | undefined;
      for (const g of groups) {
        if (g.group.some((k) => data[k] !== undefined)) continue;
        (errs ??= []).push({ keyword: 'fhirRequired', params: { name: g.name }, instancePath: cxt?.instancePath ?? '', schemaPath: '', message: '' });
      }
      return errs ? fail(check, errs) : true;
    };
    return check;
  });
  keyword('fhirPrimitiveArrays', 'array', (schema: string[]) => {
    const names = schema.map((name) => ({ name, ext: `_${name}` }));
    const check: Check = (data, cxt) => {
      let errs: AnyErr[] | undefined;
      const at = cxt?.instancePath ?? '';
      for (const { name, ext } of names) {
        const v = Array.isArray(data[name]) ? (data[name] as unknown[]) : undefined;
        const e = Array.isArray(data[ext]) ? (data[ext] as unknown[]) : undefined;
        if (!e && !v?.includes(null)) continue; // the common case: values only, no nulls
        if (v && e && v.length !== e.length) {
          (errs ??= []).push({ keyword: 'fhirPrimitiveArrays', params: { name, reason: 'length' }, instancePath: at, schemaPath: '', message: '' });
          continue;
        }
        const len = Math.max(v?.length ?? 0, e?.length ?? 0);
        for (let i = 0; i < len; i++) {
          if ((v?.[i] ?? null) === null && (e?.[i] ?? null) === null) {
            (errs ??= []).push({ keyword: 'fhirPrimitiveArrays', params: { name, index: i, reason: 'null' }, instancePath: `${at}/${name}/${i}`, schemaPath: '', message: '' });
          }
        }
      }
      return errs ? fail(check, errs) : true;
    };
    return check;
  });
  a.addKeyword({
    keyword: 'fhirResource',
    schemaType: 'boolean',
    errors: true,
    validate: function nested(_schema: boolean, data: unknown, _parent: unknown, cxt?: { instancePath: string }): boolean {
      const at = cxt?.instancePath ?? '';
      const rt = data && typeof data === 'object' && !Array.isArray(data) ? (data as { resourceType?: unknown }).resourceType : undefined;
      const v = typeof rt === 'string' ? structureValidator(rt, mode) : undefined;
      if (!v) {
        (nested as unknown as { errors: AnyErr[] }).errors = [{ keyword: UNKNOWN_TYPE, params: {}, instancePath: at, schemaPath: '', message: '' }];
        return false;
      }
      let ok: boolean;
      try {
        ok = v(data);
      } catch (e) {
        // the nested validator ran without the outer path: the errors it stopped with get it here
        if (e instanceof EnoughErrors) throw new EnoughErrors(nestedErrors(e.errors, at));
        throw e;
      }
      (nested as unknown as { errors: AnyErr[] }).errors = ok ? [] : nestedErrors(v.errors as AnyErr[], at);
      return ok;
    },
  });
  a.addSchema(schemaDocument() as object);
  ajvs[mode] = a;
  return a;
}

/** The compiled validator of a resource type (compiled on first use), or undefined for unknown types. */
export function structureValidator(type: string, mode: Mode = 'full'): ValidateFunction | undefined {
  const hit = validators[mode].get(type);
  if (hit) return hit;
  const def = definition(type);
  if (!def?.isResource) return undefined;
  const a = instance(mode);
  const v = a.getSchema(`${schemaDocument().$id}#/$defs/${type}`);
  if (!v) return undefined;
  validators[mode].set(type, v);
  return v;
}

/** Structure issues; `stopped` when the check ended early, after more than the errors asked for. */
export interface StructureResult {
  issues: Issue[];
  stopped: boolean;
}

/**
 * Runs the structure checks; returns issues with FHIRPath locations. With `stopAfter`, an invalid
 * resource's errors are gathered only until there are more than that many (the verdict comes from
 * the fast pass, which reads the whole resource and stops at its first error).
 */
export function checkStructure(resource: Record<string, unknown>, stopAfter = Infinity): StructureResult {
  const type = String(resource.resourceType);
  const fast = structureValidator(type, 'fast');
  if (!fast) return { issues: [{ severity: 'error', code: 'structure', diagnostics: 'resourceType is missing or not an R4 resource type', expression: ['resourceType'] }], stopped: false };
  if (fast(resource)) return { issues: [], stopped: false };
  const v = structureValidator(type, 'full')!;
  const full = instance('full') as FullAjv;
  let errs: AnyErr[];
  let stopped = false;
  full.vestaStopAfter = stopAfter;
  try {
    // cannot differ from the fast verdict; kept so a disagreement never invents errors
    if (v(resource)) return { issues: [], stopped: false };
    errs = v.errors as AnyErr[];
  } catch (e) {
    if (!(e instanceof EnoughErrors)) throw e;
    errs = e.errors;
    stopped = true;
  } finally {
    full.vestaStopAfter = Infinity;
  }
  const out: Issue[] = [];
  const seen = new Set<string>();
  // A value that fails its regex is not also reported as an impossible calendar date.
  const badPattern = new Set(errs.filter((e) => e.keyword === 'pattern').map((e) => e.instancePath));
  for (const e of errs) {
    if (e.keyword === 'format' && badPattern.has(e.instancePath)) continue;
    const issue = toIssue(type, resource, e);
    if (!issue) continue;
    const k = `${issue.code}|${issue.diagnostics}|${issue.expression?.[0]}`;
    if (seen.has(k)) continue;
    seen.add(k);
    out.push(issue);
  }
  return { issues: out, stopped };
}

/** The value a JSON Pointer names (undefined if it names nothing). */
function valueAt(root: unknown, pointer: string): unknown {
  let v = root;
  for (const seg of pointer.split('/').slice(1)) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<string, unknown>)[seg.replace(/~1/g, '/').replace(/~0/g, '~')];
  }
  return v;
}

/** The primitive type whose definition raised an error, from its schema path (#/$defs/date/pattern). */
function primitiveOf(e: AnyErr): string {
  const m = /^#\/\$defs\/([A-Za-z0-9]+)(?:-or-null)?\/[a-zA-Z]+$/.exec(String(e.params.innerSchemaPath ?? e.schemaPath));
  return m ? m[1] : 'value';
}

function toIssue(type: string, resource: unknown, e: AnyErr): Issue | undefined {
  const at = (pointer: string) => fhirPathOf(type, resource, pointer);
  const here = at(e.instancePath);
  const p = e.params;
  const issue = (code: string, diagnostics: string, expression = here): Issue => ({ severity: 'error', code, diagnostics, expression: [expression] });
  switch (e.keyword) {
    case 'additionalProperties': {
      const name = safeName(String(p.additionalProperty));
      return issue('structure', `unknown element '${name}'`, at(`${e.instancePath}/${String(p.additionalProperty).replace(/~/g, '~0').replace(/\//g, '~1')}`));
    }
    case 'required':
      return issue('required', `missing required element '${safeName(String(p.missingProperty))}'`, at(`${e.instancePath}/${String(p.missingProperty)}`));
    case 'fhirRequired': {
      const name = String(p.name);
      return issue('required', `missing required element '${name}'`, `${here}.${name.replace('[x]', '')}`);
    }
    case 'fhirChoice':
      return issue('structure', `only one type of '${String(p.base)}[x]' may be present`, `${here}.${String(p.base)}`);
    case 'fhirPrimitiveArrays':
      return p.reason === 'length'
        ? issue('structure', `'${String(p.name)}' and '_${String(p.name)}' must have the same number of items`, `${here}.${String(p.name)}`)
        : issue('structure', 'a repeating primitive item has neither a value nor extensions (null in both arrays)');
    case UNKNOWN_TYPE:
      return issue('structure', 'a nested resource has a missing or unknown resourceType');
    case 'type': {
      const t = Array.isArray(p.type) ? (p.type as string[]).filter((x) => x !== 'null').join(' or ') : String(p.type);
      const what = primitiveOf(e);
      if (t === 'array') return issue('structure', 'this element repeats and must be a JSON array');
      if (t === 'object') return issue('structure', 'this element must be a JSON object');
      return issue('value', `a ${what} must be a JSON ${t}`);
    }
    case 'minItems':
      return issue('structure', 'arrays must not be empty');
    case 'maxItems':
      return issue('structure', `at most ${String(p.limit)} item(s) allowed`);
    case 'minProperties':
      return issue('structure', 'objects must not be empty');
    case 'minLength':
      return issue('value', 'strings must not be empty');
    case 'maxLength':
      return issue('value', `the value exceeds the maximum length of a ${primitiveOf(e)} (${String(p.limit)} characters)`);
    case 'pattern':
      return valueAt(resource, e.instancePath) === '' ? issue('value', 'strings must not be empty') : issue('value', `the value is not a valid ${primitiveOf(e)}`);
    case 'format':
      return issue('value', `the value is not a valid calendar ${String(p.format).replace('fhir-', '')}`);
    case 'minimum':
    case 'maximum':
      return issue('value', `the value is out of range for a ${primitiveOf(e)}`);
    case 'const':
      return issue('structure', 'resourceType does not match the type expected here');
    default:
      return issue('structure', 'the element does not match its definition');
  }
}
