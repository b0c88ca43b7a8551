// The search parameters Vesta serves per resource type (https://hl7.org/fhir/R4/searchparameter-registry.html),
// built from the official SearchParameter definitions: which are indexed, with which compiled
// expressions, and why the others are not. Built lazily per type and cached.
import { searchParamsFor, type SearchParamDef, type SearchParamType } from '../fhir/definitions.js';
import { compileExpression, type Evaluator } from './expressions.js';
import { phiParamIndexed, phiSearchDocumentation, type PhiIndexMode } from './phi-seam.js';
import { NEAR_DOCUMENTATION } from './types/position.js';
import { CONTENT_DOCUMENTATION, FULL_TEXT_PARAMS, TEXT_DOCUMENTATION } from './types/text.js';

/**
 * How a parameter's values are indexed and matched; `position` serves the special parameter Location
 * near, `text` the full-text parameters _text and _content.
 */
export type ValueKind = 'string' | 'token' | 'reference' | 'date' | 'number' | 'quantity' | 'uri' | 'position' | 'text';
export type ParamKind = ValueKind | 'composite';

export interface ComponentSpec {
  kind: ValueKind;
  expression: string;
  def: SearchParamDef;
}

export interface ParamSpec {
  code: string;
  kind: ParamKind;
  def: SearchParamDef;
  /** Served from the resource table instead of an index table (_id, _lastUpdated). */
  column?: 'id' | 'last_updated';
  /** Evaluates the official expression (indexed parameters only). */
  evaluate?: Evaluator;
  /** The resource type this spec was built for (simple expressions compile to a fast path per type). */
  owner?: string;
  components?: ComponentSpec[];
  /** What Vesta serves, when the official description does not say it (special parameters). */
  documentation?: string;
}

export interface TypeParams {
  /** Every parameter Vesta can search, by code. */
  supported: Map<string, ParamSpec>;
  /** Parameters extracted at write time from their expressions (supported ones without a column, but full text). */
  indexed: ParamSpec[];
  /** Which full-text parameters the type has (extracted by search/types/text.ts, not by an expression). */
  fullText: { text: boolean; content: boolean };
  /** Official parameters Vesta does not serve, with the reason. */
  unsupported: Map<string, string>;
}

const VALUE_KINDS: ReadonlySet<SearchParamType> = new Set(['string', 'token', 'reference', 'date', 'number', 'quantity', 'uri']);

/** Special parameters Vesta serves (search.html#special), by type and code. */
const SPECIAL: Readonly<Record<string, { kind: ValueKind; documentation: string }>> = {
  'Location.near': { kind: 'position', documentation: NEAR_DOCUMENTATION },
};

/** What the full-text parameters (served from idx_text) say in the CapabilityStatement. */
const FULL_TEXT_DOCUMENTATION: Readonly<Record<string, string>> = { _text: TEXT_DOCUMENTATION, _content: CONTENT_DOCUMENTATION };

/** Why a parameter without an expression or of type special is not served. */
const NOT_SERVED: Readonly<Record<string, string>> = {
  _filter: '_filter is not supported',
  _query: 'named queries are not supported',
};

function componentsOf(def: SearchParamDef, byUrl: Map<string, SearchParamDef>): ComponentSpec[] | string {
  const out: ComponentSpec[] = [];
  for (const c of def.component) {
    const cd = byUrl.get(c.definition);
    if (!cd) return 'a component definition is not among the official parameters of this type';
    if (!VALUE_KINDS.has(cd.type)) return `component type ${cd.type} is not supported`;
    out.push({ kind: cd.type as ValueKind, expression: c.expression, def: cd });
  }
  return out.length >= 2 ? out : 'a composite needs at least two components';
}

function build(type: string): TypeParams {
  const supported = new Map<string, ParamSpec>();
  const unsupported = new Map<string, string>();
  const defs = searchParamsFor(type);
  const byUrl = new Map(defs.map((d) => [d.url, d]));
  for (const def of defs) {
    const code = def.code;
    if (code === '_id') supported.set(code, { code, kind: 'token', def, column: 'id' });
    else if (code === '_lastUpdated') supported.set(code, { code, kind: 'date', def, column: 'last_updated' });
    else if (FULL_TEXT_PARAMS.has(code)) supported.set(code, { code, kind: 'text', def, documentation: FULL_TEXT_DOCUMENTATION[code] });
    else if (NOT_SERVED[code]) unsupported.set(code, NOT_SERVED[code]);
    else if (!def.expression) unsupported.set(code, 'the official definition has no expression');
    else if (type === 'Bundle' && (code === 'composition' || code === 'message')) unsupported.set(code, 'this parameter only serves chaining into the first entry');
    else if (def.type === 'composite') {
      const comps = componentsOf(def, byUrl);
      if (typeof comps === 'string') unsupported.set(code, comps);
      else supported.set(code, { code, kind: 'composite', def, components: comps });
    } else if (VALUE_KINDS.has(def.type)) supported.set(code, { code, kind: def.type as ValueKind, def });
    else if (def.type === 'special' && Object.hasOwn(SPECIAL, `${type}.${code}`)) supported.set(code, { code, def, ...SPECIAL[`${type}.${code}`] });
    else unsupported.set(code, `parameters of type ${def.type} are not supported`);
  }
  for (const p of supported.values()) p.owner = type;
  const indexed = [...supported.values()].filter((p) => !p.column && p.kind !== 'text');
  return { supported, indexed, unsupported, fullText: { text: supported.has('_text'), content: supported.has('_content') } };
}

const cache = new Map<string, TypeParams>();

/** The parameters of a resource type (compiled on first use; expressions are compiled once per process). */
export function paramsOf(type: string): TypeParams {
  let t = cache.get(type);
  if (!t) {
    t = build(type);
    cache.set(type, t);
  }
  return t;
}

/** The evaluator of an indexed parameter's (composite base) expression. */
export function evaluatorOf(spec: ParamSpec): Evaluator {
  spec.evaluate ??= compileExpression(spec.def.expression!, undefined, spec.kind === 'composite' ? undefined : spec.owner);
  return spec.evaluate;
}

export interface SupportedSearchParam {
  name: string;
  type: SearchParamType;
  definition: string;
  documentation: string;
}

/**
 * The search parameters actually served for a type, for the CapabilityStatement
 * (https://hl7.org/fhir/R4/capabilitystatement-definitions.html#CapabilityStatement.rest.resource.searchParam).
 * Sealed PHI parameters the blind index serves say what is served; those it cannot serve are left out.
 */
export function supportedSearchParams(type: string, mode: PhiIndexMode = { sealed: true }): SupportedSearchParam[] {
  return [...paramsOf(type).supported.values()]
    .filter((p) => phiParamIndexed(type, p.code, mode))
    .map((p) => ({ name: p.code, type: p.def.type, definition: p.def.url, documentation: phiSearchDocumentation(type, p.code, p.kind, p.def.description, mode) ?? p.documentation ?? p.def.description }));
}
