// Rules the R4 specification states in prose rather than as FHIRPath invariants, checked as the HL7
// reference validator does: attachment sizes (datatypes.html#Attachment), absolute code system URIs
// (datatypes.html#Coding), Bundle fullUrls, navigation links and search entries (bundle.html), search
// parameters against the definitions they name (searchparameter.html, capabilitystatement.html), and
// the contexts and value types of the core extensions (extensibility.html#context).
import type { Issue } from '../fhir/errors.js';
import { resourceTypeInfo, searchParamsFor } from '../fhir/definitions.js';
import { bindingTable, coreExtensions } from './artifacts.js';
import { fhirPathOf } from './location.js';
import { definition, isPrimitiveType, type DefInfo } from './type-model.js';

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v);
const list = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);

const ABSOLUTE_URI = /^[A-Za-z][A-Za-z0-9+.-]*:/;

/** Decoded byte length of base64 text (whitespace ignored). */
export function base64Length(data: string): number {
  let n = 0;
  let pad = 0;
  for (let i = 0; i < data.length; i++) {
    const c = data.charCodeAt(i);
    if (c === 32 || c === 9 || c === 10 || c === 13) continue;
    n++;
    pad = c === 61 ? pad + 1 : 0;
  }
  return Math.floor((n * 3) / 4) - pad;
}

function err(out: Issue[], code: string, diagnostics: string, path: string, severity: Issue['severity'] = 'error'): void {
  out.push({ severity, code, diagnostics, expression: [path] });
}

function attachment(node: Obj, path: string, out: Issue[]): void {
  if (typeof node.data === 'string' && typeof node.size === 'number' && base64Length(node.data) !== node.size) {
    err(out, 'value', 'the stated attachment size does not match the size of its data', `${path}.size`);
  }
}

function coding(node: Obj, path: string, out: Issue[]): void {
  const system = node.system;
  if (typeof system !== 'string') return;
  if (!ABSOLUTE_URI.test(system)) err(out, 'value', 'Coding.system must be an absolute URI', `${path}.system`);
  else if (bindingTable().valueSetUrls[system]) err(out, 'code-invalid', 'Coding.system names a value set, not a code system', `${path}.system`);
}

/** JSON Pointers of every string `reference` (Reference.reference) under a value, with no recursion. */
function references(root: unknown): { pointer: string; ref: string }[] {
  const out: { pointer: string; ref: string }[] = [];
  const stack: [unknown, string][] = [[root, '']];
  while (stack.length) {
    const [v, at] = stack.pop()!;
    if (Array.isArray(v)) v.forEach((x, i) => stack.push([x, `${at}/${i}`]));
    else if (isObj(v)) {
      for (const [k, x] of Object.entries(v)) {
        if (k === 'reference' && typeof x === 'string') out.push({ pointer: at, ref: x });
        else if (x !== null && typeof x === 'object') stack.push([x, `${at}/${k.replace(/~/g, '~0').replace(/\//g, '~1')}`]);
      }
    }
  }
  return out;
}

const RESTFUL = /^(.*\/)?[A-Za-z]+\/[A-Za-z0-9\-.]{1,64}$/;

/**
 * Resolving references in a Bundle (https://hl7.org/fhir/R4/bundle.html#references): a relative
 * reference resolves against the fullUrl of its entry; a version-independent reference that matches
 * the fullUrl of more than one entry is ambiguous.
 */
function ambiguousReferences(node: Obj, path: string, out: Issue[]): void {
  const entries = list(node.entry);
  const counts = new Map<string, number>();
  for (const e of entries) if (isObj(e) && typeof e.fullUrl === 'string') counts.set(e.fullUrl, (counts.get(e.fullUrl) ?? 0) + 1);
  if (![...counts.values()].some((n) => n > 1)) return;
  entries.forEach((e, i) => {
    if (!isObj(e) || !isObj(e.resource)) return;
    const full = typeof e.fullUrl === 'string' ? e.fullUrl : '';
    const base = RESTFUL.test(full) ? full.replace(/[A-Za-z]+\/[A-Za-z0-9\-.]{1,64}$/, '') : undefined;
    for (const { pointer, ref } of references(e.resource)) {
      if (ref.startsWith('#') || ref.includes('/_history/')) continue;
      const target = ABSOLUTE_URI.test(ref) ? ref : base !== undefined ? base + ref : undefined;
      if (target && (counts.get(target) ?? 0) > 1) {
        const rt = String(e.resource.resourceType);
        const at = fhirPathOf(rt, e.resource, pointer).slice(rt.length);
        err(out, 'structure', 'the reference matches more than one entry of the Bundle', `${path}.entry[${i}].resource${at}`);
      }
    }
  });
}

const SINGLE_LINKS = new Set(['self', 'first', 'previous', 'prev', 'next', 'last']);

function bundle(node: Obj, path: string, out: Issue[]): void {
  const seen = new Set<string>();
  list(node.link).forEach((l, i) => {
    const rel = isObj(l) ? l.relation : undefined;
    if (typeof rel !== 'string' || !SINGLE_LINKS.has(rel)) return;
    if (seen.has(rel)) err(out, 'structure', `a Bundle may have only one link with relation ${rel}`, `${path}.link[${i}]`);
    seen.add(rel);
  });
  ambiguousReferences(node, path, out);
  const searchset = node.type === 'searchset';
  list(node.entry).forEach((e, i) => {
    if (!isObj(e)) return;
    if (typeof e.fullUrl === 'string' && !ABSOLUTE_URI.test(e.fullUrl)) {
      err(out, 'value', 'Bundle.entry.fullUrl must be an absolute URI', `${path}.entry[${i}].fullUrl`);
    }
    if (!searchset || !isObj(e.search) || !isObj(e.resource)) return;
    const mode = e.search.mode;
    if (mode === 'outcome' && e.resource.resourceType !== 'OperationOutcome') {
      err(out, 'structure', 'an entry with search mode outcome must be an OperationOutcome', `${path}.entry[${i}].resource`);
    }
    if (mode === 'match' && typeof e.resource.id !== 'string') {
      err(out, 'required', 'a search result (search mode match) must have an id', `${path}.entry[${i}].resource`);
    }
  });
}

let coreParams: Map<string, { type: string; bases: Set<string> }> | undefined;
function coreSearchParam(url: string): { type: string; bases: Set<string> } | undefined {
  if (!coreParams) {
    coreParams = new Map();
    for (const { type } of resourceTypeInfo()) {
      for (const p of searchParamsFor(type)) {
        const hit = coreParams.get(p.url) ?? { type: p.type, bases: new Set<string>() };
        hit.bases.add(type);
        coreParams.set(p.url, hit);
      }
    }
  }
  return coreParams.get(url.split('|')[0]);
}

function capabilityStatement(node: Obj, path: string, out: Issue[]): void {
  list(node.rest).forEach((rest, r) => {
    if (!isObj(rest)) return;
    list(rest.resource).forEach((res, i) => {
      if (!isObj(res)) return;
      list(res.searchParam).forEach((sp, j) => {
        if (!isObj(sp) || typeof sp.definition !== 'string' || typeof sp.type !== 'string') return;
        const core = coreSearchParam(sp.definition);
        if (core && core.type !== sp.type) {
          err(out, 'value', `the search parameter type differs from its definition (${core.type})`, `${path}.rest[${r}].resource[${i}].searchParam[${j}].type`);
        }
      });
    });
  });
}

function searchParameter(node: Obj, path: string, out: Issue[]): void {
  if (node.type === 'composite' && list(node.component).length < 2) {
    err(out, 'required', 'a composite search parameter must define two or more components', `${path}.component`);
  }
  if (typeof node.derivedFrom !== 'string') return;
  const core = coreSearchParam(node.derivedFrom);
  if (!core) return;
  if (typeof node.type === 'string' && node.type !== core.type) {
    err(out, 'value', `the type differs from the type of the search parameter it is derived from (${core.type})`, `${path}.type`);
  }
  const everyType = core.bases.size === resourceTypeInfo().length;
  list(node.base).forEach((b, i) => {
    if (typeof b === 'string' && !core.bases.has(b) && !(everyType && (b === 'Resource' || b === 'DomainResource'))) {
      err(out, 'value', 'a base is not a base of the search parameter this one is derived from', `${path}.base[${i}]`);
    }
  });
}

/** Whether an element path of a profile names an element of its type (choice variants by type name). */
function knownPath(type: string, elementPath: string): boolean {
  const segs = elementPath.split('.');
  if (segs[0] !== type) return false;
  let def: DefInfo | undefined = definition(type);
  for (const raw of segs.slice(1)) {
    if (!def) return true; // inside a nested resource or beyond what the model describes: not judged
    const seg = raw.split(':')[0];
    let target: string | undefined;
    const base = seg.endsWith('[x]') ? seg.slice(0, -3) : undefined;
    for (const p of def.props.values()) {
      if (p.kind === 'sibling') continue;
      if (p.name === seg || (base !== undefined && p.element === base && p.choiceType)) {
        target = p.target;
        break;
      }
    }
    if (target === undefined) return false;
    def = isPrimitiveType(target) ? definition('Element') : target === 'Resource' ? undefined : definition(target);
  }
  return true;
}

/** Profiles constrain the elements of their type (https://hl7.org/fhir/R4/elementdefinition.html#path). */
function structureDefinition(node: Obj, path: string, out: Issue[]): void {
  if (node.derivation !== 'constraint' || typeof node.type !== 'string' || !definition(node.type)) return;
  for (const part of ['snapshot', 'differential'] as const) {
    const holder = node[part];
    if (!isObj(holder)) continue;
    list(holder.element).forEach((el, i) => {
      if (!isObj(el) || typeof el.path !== 'string') return;
      if (!knownPath(node.type as string, el.path)) {
        err(out, 'value', `the element path is not an element of ${String(node.type)}`, `${path}.${part}.element[${i}].path`);
      }
    });
  }
}

const TYPE_RULES: Record<string, (node: Obj, path: string, out: Issue[]) => void> = {
  Attachment: attachment,
  Coding: coding,
  Bundle: bundle,
  CapabilityStatement: capabilityStatement,
  SearchParameter: searchParameter,
  StructureDefinition: structureDefinition,
};

/** Prose rules for a value of `type` (a datatype or resource type). */
export function checkTypeRules(type: string, node: Obj, path: string, out: Issue[]): void {
  TYPE_RULES[type]?.(node, path, out);
}

export interface Host {
  /** Element path (Patient.name, HumanName.family) or resource type. */
  path: string;
  /** Datatype, primitive type, backbone definition name or resource type. */
  type: string;
  resource: boolean;
}

/**
 * Whether an element context of an extension admits the host. Leniencies, each needed by the spec's
 * own examples (which the reference validator accepts): a context also admits the element that
 * contains it and the elements inside it (structuredefinition-fhir-type, declared on
 * ElementDefinition.type.code, sits on ElementDefinition.type), and a context naming a primitive type
 * is not enforced (translation, declared on string, sits on ValueSet.expansion.contains).
 */
function contextMatches(c: string, host: Host): boolean {
  if (c === 'Element' || c === host.type || c === host.path || c === host.path.replace('[x]', '')) return true;
  if (host.resource) return c === 'Resource' || c === 'DomainResource';
  if (isPrimitiveType(c)) return true;
  return c.startsWith(`${host.path}.`) || host.path.startsWith(`${c}.`);
}

/** Contexts the R4 definitions omit but the spec's own resources use (and the reference validator accepts). */
const EXTRA_CONTEXTS: Record<string, string[]> = {
  'http://hl7.org/fhir/StructureDefinition/structuredefinition-normative-version': ['CodeSystem', 'ValueSet', 'OperationDefinition'],
  'http://hl7.org/fhir/StructureDefinition/valueset-concept-comments': ['CodeSystem.concept'],
};

/**
 * Cross-version extensions (https://hl7.org/fhir/R4/versions.html#extensions) are defined implicitly
 * for every element of another FHIR version: http://hl7.org/fhir/[version]/StructureDefinition/extension-[path].
 */
const CROSS_VERSION = /^http:\/\/hl7\.org\/fhir\/\d+\.\d+\/StructureDefinition\/extension-[A-Za-z]/;

/**
 * A core extension (known url) carries a value of a type its definition allows, or none if it is
 * complex (error), and is used in one of its contexts (https://hl7.org/fhir/R4/extensibility.html#context;
 * warning). Other extensions are accepted unchecked (the spec lets systems carry extensions they do
 * not know), or refused with `refuseUnknown` (VALIDATION_UNKNOWN_EXTENSIONS=reject).
 */
export function checkExtension(ext: Obj, path: string, out: Issue[], host: Host, refuseUnknown = false): void {
  if (typeof ext.url !== 'string') return;
  const def = coreExtensions()[ext.url];
  if (!def) {
    // Not quoted: the url is the client's. Nested extensions of a complex extension are named by
    // relative urls, which only their parent's definition gives meaning to: not judged here.
    if (refuseUnknown && /^[a-z][a-z0-9+.-]*:/i.test(ext.url) && !CROSS_VERSION.test(ext.url)) err(out, 'structure', 'the extension url names no extension definition known to this server, which refuses unknown extensions', `${path}.url`);
    return;
  }
  // The url is a core canonical, a spec constant, so it may be named in the message.
  const contexts = [...def.context, ...(EXTRA_CONTEXTS[ext.url] ?? [])];
  if (def.context.length && !contexts.some((c) => contextMatches(c, host))) {
    // A warning: the R4 contexts are incomplete (HL7's own US Core SearchParameters carry
    // capabilitystatement-expectation outside them), so a mismatch does not reject the resource.
    err(out, 'structure', `the extension ${ext.url} is used outside its contexts (${def.context.join(', ')})`, path, 'warning');
  }
  const valueKey = Object.keys(ext).find((k) => k.startsWith('value') && k.length > 5);
  if (!valueKey) return;
  const suffix = valueKey.slice(5);
  const allowed = def.value.some((t) => t.toLowerCase() === suffix.toLowerCase());
  if (!allowed) {
    err(out, 'structure', def.value.length ? `the extension ${ext.url} takes a value of type ${def.value.join(' or ')}` : `the extension ${ext.url} is complex and takes no value`, `${path}.value`);
  }
}
