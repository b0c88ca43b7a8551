// SQL planning for a SearchRequest over Vesta's schema (https://hl7.org/fhir/R4/search.html): each
// clause becomes an EXISTS over the index table of its parameter type (OR values inside it, AND across
// clauses); chains and _has nest the same conditions behind joins on idx_reference. Produces SQL text
// with placeholders and bindings only: every value is bound, never spliced.
import { FhirError } from '../fhir/errors.js';
import { resourceTypeInfo } from '../fhir/definitions.js';
import { INDEX_TABLES, type IndexKind } from './index-rows.js';
import { splitUnescaped, unescapeValue } from './escape.js';
import type { ChainLink, HasLink, ParamClause, SearchRequest } from './parse.js';
import { isBlindParam, type PhiIndexMode } from './phi-seam.js';
import { paramsOf, type ParamSpec, type ValueKind } from './registry.js';
import { Aliases, and, frag, or, type SqlFragment } from './sql.js';
import { dateCondition, instantCondition, parseDateQuery } from './types/date.js';
import { numberCondition, parseNumberQuery, parseQuantityQuery, quantityCondition } from './types/number.js';
import { identifierParam, referenceCondition } from './types/reference.js';
import { stringCondition, type StringModifier } from './types/string.js';
import { ofTypeParam, tokenCondition, tokenOfTypeCondition, tokenTextCondition } from './types/token.js';
import { isValueSetModifier, tokenInCondition } from './types/token-in.js';
import { uriCondition } from './types/uri.js';
import { nearCondition, parseNearQuery } from './types/position.js';
import { textCondition } from './types/text.js';

export type { SqlFragment } from './sql.js';

/** Whose index rows a condition looks at: a resource type (as SQL) and id column, and its `resource` row alias if joined. */
interface Owner {
  type: SqlFragment;
  id: string;
  row?: string;
  /** Reached through a chain or _has hop: its conditions take the hashed form (see inSet). */
  viaHop?: boolean;
}

/**
 * `id in (<ids>)` written so that PostgreSQL keeps it a subplan, which it hashes once, instead of
 * pulling it up into a semi-join. Right after a bulk load (no statistics yet) every estimate is one
 * row, and the semi-joins of a chain or _has became nested loops that rescanned an index range per
 * outer row: minutes, where the hashed subplan takes milliseconds (measured on the 73 Synthea bundles,
 * issue 14). Used only inside hops and for hops on a known type: a plain clause of a selective
 * search keeps its correlated EXISTS, which probes the index per candidate.
 */
function inSet(id: string, ids: SqlFragment, negate = false): SqlFragment {
  return frag(`${negate ? 'not ' : ''}coalesce(${id} in (${ids.sql}), false)`, ...ids.bindings);
}

/** A resource-type expression that is a bound constant (so a sub-query on it needs no correlation). */
function constantType(t: SqlFragment): boolean {
  return t.sql === '?';
}

interface Ctx {
  aliases: Aliases;
  now: number;
  baseUrl: string | undefined;
  /** How PHI is kept (sealed PHI parameters match on their blind index), and the types searched. */
  phi?: PhiIndexMode;
  scope: readonly string[];
  /** Conditions (on `r`) a resource reached through a chain or _has hop must satisfy (authorization). */
  hopScope?: (type: string) => SqlFragment | undefined;
}

/**
 * The hop scope of `type` applied to the resource `id` (an SQL expression): an EXISTS over its row
 * under the alias `r`, which the scope's conditions are written on (the inner alias shadows any outer
 * `r` within this sub-query only). Empty when the hop is not narrowed.
 */
function hopCondition(ctx: Ctx, type: string, id: string): SqlFragment[] {
  const cond = ctx.hopScope?.(type);
  if (!cond) return [];
  return [frag(`exists (select 1 from resource r where r.resource_type = ? and r.id = ${id} and (${cond.sql}))`, type, ...cond.bindings)];
}

/** The index rows of `owner` for `param` in table `kind`, with `cond` on them (alias `a`). */
function exists(ctx: Ctx, owner: Owner, kind: IndexKind, param: string, cond: (a: string) => SqlFragment, negate = false): SqlFragment {
  const a = ctx.aliases.next('x');
  const c = cond(a);
  if (owner.viaHop && constantType(owner.type)) {
    return inSet(owner.id, frag(`select ${a}.resource_id from ${INDEX_TABLES[kind]} ${a} where ${a}.resource_type = ${owner.type.sql} and ${a}.param = ? and (${c.sql})`, ...owner.type.bindings, param, ...c.bindings), negate);
  }
  return frag(
    `${negate ? 'not ' : ''}exists (select 1 from ${INDEX_TABLES[kind]} ${a} where ${a}.resource_type = ${owner.type.sql} and ${a}.resource_id = ${owner.id} and ${a}.param = ? and (${c.sql}))`,
    ...owner.type.bindings,
    param,
    ...c.bindings,
  );
}

/** The condition of one value of a plain (non-composite) parameter on index alias `a`. */
function valueCondition(ctx: Ctx, kind: ValueKind, a: string, raw: string, code: string, modifier?: string): SqlFragment {
  switch (kind) {
    case 'string':
      return stringCondition(a, unescapeValue(raw), modifier as StringModifier, code);
    case 'token':
      if (modifier === 'text') return tokenTextCondition(a, unescapeValue(raw), code);
      if (modifier === 'of-type') return tokenOfTypeCondition(a, raw, code);
      return tokenCondition(a, raw, code);
    case 'reference':
      return referenceCondition(a, raw, code, modifier, ctx.baseUrl);
    case 'date':
      return dateCondition(a, parseDateQuery(unescapeValue(raw), code), ctx.now);
    case 'number':
      return numberCondition(a, parseNumberQuery(unescapeValue(raw), code));
    case 'quantity':
      return quantityCondition(a, parseQuantityQuery(raw, code));
    case 'uri':
      return uriCondition(a, raw, modifier as 'below' | 'above' | undefined, code);
    case 'position':
      return nearCondition(a, parseNearQuery(raw, code));
    case 'text':
      return textCondition(a, unescapeValue(raw), code);
  }
}

function compositeCondition(ctx: Ctx, owner: Owner, spec: ParamSpec, values: string[]): SqlFragment {
  const comps = spec.components!;
  const al = comps.map(() => ctx.aliases.next('k'));
  const ors = values.map((v) => {
    const parts = splitUnescaped(v, '$');
    if (parts.length !== comps.length) throw new FhirError('invalid-search', `parameter ${spec.code} takes ${comps.length} values separated by $`);
    return and(comps.map((c, i) => valueCondition(ctx, c.kind, al[i], parts[i], spec.code)));
  });
  const body = or(ors);
  const joins = comps.slice(1).map((c, j) => {
    const i = j + 1;
    return frag(
      `join ${INDEX_TABLES[c.kind]} ${al[i]} on ${al[i]}.resource_type = ${al[0]}.resource_type and ${al[i]}.resource_id = ${al[0]}.resource_id and ${al[i]}.grp = ${al[0]}.grp and ${al[i]}.param = ?`,
      `${spec.code}$${i}`,
    );
  });
  return frag(
    `exists (select 1 from ${INDEX_TABLES[comps[0].kind]} ${al[0]} ${joins.map((j) => j.sql).join(' ')} where ${al[0]}.resource_type = ${owner.type.sql} and ${al[0]}.resource_id = ${owner.id} and ${al[0]}.param = ? and (${body.sql}))`,
    ...joins.flatMap((j) => j.bindings),
    ...owner.type.bindings,
    `${spec.code}$0`,
    ...body.bindings,
  );
}

/** _id and _lastUpdated live on the resource row; off the top level it is joined in. */
function columnCondition(ctx: Ctx, owner: Owner, spec: ParamSpec, values: string[]): SqlFragment {
  const on = (row: string): SqlFragment => {
    if (spec.column === 'id') {
      const ids = values.map(unescapeValue);
      return frag(`${row}.id in (${ids.map(() => '?').join(', ')})`, ...ids);
    }
    return or(values.map((v) => instantCondition(`${row}.last_updated`, parseDateQuery(unescapeValue(v), spec.code), ctx.now)));
  };
  if (owner.row) return on(owner.row);
  const z = ctx.aliases.next('z');
  const c = on(z);
  return frag(`exists (select 1 from resource ${z} where ${z}.resource_type = ${owner.type.sql} and ${z}.id = ${owner.id} and ${z}.deleted = false and (${c.sql}))`, ...owner.type.bindings, ...c.bindings);
}

function missingCondition(ctx: Ctx, owner: Owner, spec: ParamSpec, missing: boolean): SqlFragment {
  if (spec.column) return frag(missing ? 'false' : 'true');
  const kind: IndexKind = spec.kind === 'composite' ? spec.components![0].kind : spec.kind;
  const param = spec.kind === 'composite' ? `${spec.code}$0` : spec.code;
  const has = [exists(ctx, owner, kind, param, () => frag('true'))];
  // A Reference holding only an identifier is still a value of the parameter.
  if (spec.kind === 'reference') has.push(exists(ctx, owner, 'token', identifierParam(spec.code), () => frag('true')));
  const any = or(has);
  return missing ? frag(`not (${any.sql})`, ...any.bindings) : any;
}

/** The specs of a parameter on each owner type (all types having it when `types` is empty). */
function specsFor(types: readonly string[], spec: ParamSpec): ParamSpec[] {
  const list = types.length ? types : resourceTypeInfo().map((t) => t.type);
  const out = list.map((t) => paramsOf(t).supported.get(spec.code)).filter((p): p is ParamSpec => p !== undefined && p.kind === spec.kind);
  return out.length ? out : [spec];
}

/** A test on the index rows of one parameter: the table, the parameter name stored there, the condition on alias `a`. */
interface IndexTest {
  kind: IndexKind;
  param: string;
  cond: (a: string) => SqlFragment;
  negate: boolean;
}

/** The index test of a plain (non-composite, index-table) final parameter; undefined for :missing, columns and composites. */
function indexTest(ctx: Ctx, spec: ParamSpec, clause: ParamClause, types: readonly string[]): IndexTest | undefined {
  const { modifier, values } = clause;
  if (modifier === 'missing' || spec.column || spec.kind === 'composite') return undefined;
  const kind = spec.kind;
  if (kind === 'token' && modifier === 'not') {
    return { kind: 'token', param: spec.code, cond: (a) => or(values.map((v) => tokenCondition(a, v, spec.code))), negate: true };
  }
  if (kind === 'token' && isValueSetModifier(modifier)) {
    const specs = specsFor(types, spec);
    return { kind: 'token', param: spec.code, cond: (a) => or(values.map((v) => tokenInCondition(a, v, spec.code, modifier, specs))), negate: modifier === 'not-in' };
  }
  if (kind === 'token' && modifier === 'of-type') {
    return { kind: 'token', param: ofTypeParam(spec.code), cond: (a) => or(values.map((v) => valueCondition(ctx, kind, a, v, spec.code, modifier))), negate: false };
  }
  if (kind === 'reference' && modifier === 'identifier') {
    return { kind: 'token', param: identifierParam(spec.code), cond: (a) => or(values.map((v) => tokenCondition(a, v, spec.code))), negate: false };
  }
  return { kind, param: spec.code, cond: (a) => or(values.map((v) => valueCondition(ctx, kind, a, v, spec.code, modifier))), negate: false };
}

/** The condition of the final parameter of a clause on one owner, whose type is one of `types` (empty: any). */
function finalCondition(ctx: Ctx, owner: Owner, spec: ParamSpec, clause: ParamClause, types: readonly string[]): SqlFragment {
  const { modifier, values } = clause;
  if (modifier === 'missing') return missingCondition(ctx, owner, spec, values[0] === 'true');
  if (spec.column) return columnCondition(ctx, owner, spec, values);
  if (spec.kind === 'composite') return compositeCondition(ctx, owner, spec, values);
  const t = indexTest(ctx, spec, clause, types)!;
  return exists(ctx, owner, t.kind, t.param, t.cond, t.negate);
}

/** Follows the clause's chain/_has hops from `owner`, then applies the final parameter. */
function pathCondition(ctx: Ctx, owner: Owner, clause: ParamClause, hop: number, type: string): SqlFragment {
  if (hop === clause.path.length) {
    const spec = hop === 0 ? clause.spec : paramsOf(type).supported.get(clause.code);
    if (!spec) return frag('false');
    // Sealed PHI parameters match on keyed HMACs instead of values (search/blind.ts).
    const types = hop === 0 ? ctx.scope : [type];
    const blind = ctx.phi?.sealed ? ctx.phi.blind?.clauseCondition(types, clause, owner.type, owner.id, ctx.aliases, () => finalCondition(ctx, owner, spec, clause, types)) : undefined;
    if (blind) return blind;
    return finalCondition(ctx, owner, spec, clause, types);
  }
  const link = clause.path[hop];
  const a = ctx.aliases.next(link.kind === 'chain' ? 'c' : 'h');
  if (link.kind === 'chain') return chainHop(ctx, owner, clause, hop, link, a);
  return hasHop(ctx, owner, clause, hop, link, a);
}

/** The idx_reference rows a chain hop follows from its owner: their condition on alias `a` (beyond owner and param). */
function chainInner(ctx: Ctx, clause: ParamClause, hop: number, link: ChainLink, a: string): SqlFragment {
  // A reference to a resource that is not here refers to nothing (search.html#chaining); :not and
  // :not-in hold without index rows, so they alone need the target shown to exist.
  const exists = (t: string): SqlFragment[] => {
    if (clause.modifier !== 'not' && clause.modifier !== 'not-in') return [];
    const z = ctx.aliases.next('z');
    return [frag(`exists (select 1 from resource ${z} where ${z}.resource_type = ? and ${z}.id = ${a}.target_id and ${z}.deleted = false)`, t)];
  };
  const inner = or(
    link.targets.map((t) => and([frag(`${a}.target_type = ?`, t), ...exists(t), ...hopCondition(ctx, t, `${a}.target_id`), pathCondition(ctx, { type: frag('?', t), id: `${a}.target_id`, viaHop: true }, clause, hop + 1, t)])),
  );
  return frag(`${a}.target_id is not null and (${inner.sql})`, ...inner.bindings);
}

function chainHop(ctx: Ctx, owner: Owner, clause: ParamClause, hop: number, link: ChainLink, a: string): SqlFragment {
  const inner = chainInner(ctx, clause, hop, link, a);
  if (constantType(owner.type)) {
    return inSet(owner.id, frag(`select ${a}.resource_id from idx_reference ${a} where ${a}.resource_type = ${owner.type.sql} and ${a}.param = ? and ${inner.sql}`, ...owner.type.bindings, link.spec.code, ...inner.bindings));
  }
  return frag(
    `exists (select 1 from idx_reference ${a} where ${a}.resource_type = ${owner.type.sql} and ${a}.resource_id = ${owner.id} and ${a}.param = ? and ${inner.sql})`,
    ...owner.type.bindings,
    link.spec.code,
    ...inner.bindings,
  );
}

function hasHop(ctx: Ctx, owner: Owner, clause: ParamClause, hop: number, link: HasLink, a: string): SqlFragment {
  const inner = and([...hopCondition(ctx, link.type, `${a}.resource_id`), pathCondition(ctx, { type: frag('?', link.type), id: `${a}.resource_id`, viaHop: true }, clause, hop + 1, link.type)]);
  if (constantType(owner.type)) {
    return inSet(
      owner.id,
      frag(`select ${a}.target_id from idx_reference ${a} where ${a}.resource_type = ? and ${a}.param = ? and ${a}.target_type = ${owner.type.sql} and (${inner.sql})`, link.type, link.spec.code, ...owner.type.bindings, ...inner.bindings),
    );
  }
  return frag(
    `exists (select 1 from idx_reference ${a} where ${a}.resource_type = ? and ${a}.param = ? and ${a}.target_type = ${owner.type.sql} and ${a}.target_id = ${owner.id} and (${inner.sql}))`,
    link.type,
    link.spec.code,
    ...owner.type.bindings,
    ...inner.bindings,
  );
}

export interface PlanOptions {
  now?: number;
  /** Types searched (system search); default: the request's type. An empty list means every type. */
  types?: readonly string[];
  /** Further conditions on `r`, ANDed (e.g. compartment membership). */
  extra?: SqlFragment[];
  /**
   * Conditions (on `r`) that a resource reached through a chain or _has hop must satisfy, per type:
   * authorization narrows hops as it narrows matches, so that results never depend on resources
   * outside the token's reach. Undefined (or a function returning undefined) leaves hops open.
   */
  hopScope?: (type: string) => SqlFragment | undefined;
  /**
   * Whether the index-only form may be planned (default true). It pages in id order only, so a sorted
   * search (_sort) says false and its clauses are built once, as conditions on the resource table.
   */
  indexOnly?: boolean;
}

function newCtx(req: SearchRequest, opts: PlanOptions): Ctx {
  return { aliases: new Aliases(), now: opts.now ?? Date.now(), baseUrl: req.baseUrl, ...(req.phi ? { phi: req.phi } : {}), scope: opts.types ?? [req.resourceType], ...(opts.hopScope ? { hopScope: opts.hopScope } : {}) };
}

/** WHERE conditions on `r` (the resource table) for the request's clauses. */
export function planWhere(req: SearchRequest, opts: PlanOptions = {}): SqlFragment {
  const ctx = newCtx(req, opts);
  const types = opts.types ?? [req.resourceType];
  // One type: a constant, so that chain and _has hops need no correlation with the row (inSet).
  const owner: Owner = { type: types.length === 1 ? frag('?', types[0]) : frag('r.resource_type'), id: 'r.id', row: 'r' };
  const conds: SqlFragment[] = [];
  if (types.length === 1) conds.push(frag('r.resource_type = ?', types[0]));
  else if (types.length > 1) conds.push(frag(`r.resource_type in (${types.map(() => '?').join(', ')})`, ...types));
  conds.push(frag('r.deleted = false'));
  for (const c of req.clauses) conds.push(pathCondition(ctx, owner, c, 0, req.resourceType));
  conds.push(...(opts.extra ?? []));
  return and(conds);
}

/**
 * A search answered from the index tables alone. Index rows exist only for the current version of a
 * live resource (storage/search-store.ts writes them with the version and removes them on delete), so
 * the ids of the matches can be found without visiting the resource table: one clause is the source
 * of candidate ids (`select ... as id`, possibly repeating an id), the others are conditions on
 * `s.id`. Pages then walk the source in id order and stop after a page, and counts read only the
 * (covering) index entries (migration 0006).
 */
export interface SearchPlan {
  /** WHERE conditions on `r` (the resource table): always valid (built when first read, see planSearch). */
  readonly where: SqlFragment;
  /** The one type searched (`where` restricts `r.resource_type` to it), if only one. */
  type?: string;
  /**
   * The index-only form, when the search qualifies (one type, no extra conditions, a clause that can be
   * a source): `from (<source>) s where (<others>)`, the ids of the matches of `type` in `s.id`,
   * possibly repeated.
   */
  driven?: SqlFragment;
}

/** How good a source a clause is (lower first): equality on references and tokens narrows most. */
function sourceRank(clause: ParamClause): number {
  const first = clause.path[0];
  if (first?.kind === 'has') return 6;
  if (first?.kind === 'chain') return 5;
  switch (clause.spec.kind) {
    case 'reference':
      return 0;
    case 'token':
      return clause.modifier === 'text' ? 3 : 1;
    case 'uri':
    case 'string':
      return 2;
    case 'date':
      return 4;
    default:
      return 3;
  }
}

/** The clause as a source of candidate ids (`select ... as id from ...`), when it can be one. */
function clauseSource(ctx: Ctx, clause: ParamClause, type: string): SqlFragment | undefined {
  const first = clause.path[0];
  if (first?.kind === 'has') {
    const a = ctx.aliases.next('h');
    const inner = and([...hopCondition(ctx, first.type, `${a}.resource_id`), pathCondition(ctx, { type: frag('?', first.type), id: `${a}.resource_id`, viaHop: true }, clause, 1, first.type)]);
    return frag(
      `select ${a}.target_id as id from idx_reference ${a} where ${a}.resource_type = ? and ${a}.param = ? and ${a}.target_type = ? and ${a}.target_id is not null and (${inner.sql})`,
      first.type,
      first.spec.code,
      type,
      ...inner.bindings,
    );
  }
  if (first?.kind === 'chain') {
    const a = ctx.aliases.next('c');
    const inner = chainInner(ctx, clause, 0, first, a);
    return frag(`select ${a}.resource_id as id from idx_reference ${a} where ${a}.resource_type = ? and ${a}.param = ? and ${inner.sql}`, type, first.spec.code, ...inner.bindings);
  }
  if (ctx.phi && isBlindParam(type, clause.code, ctx.phi)) return undefined; // matched by blind.ts, not a plain index
  const t = indexTest(ctx, clause.spec, clause, [type]);
  if (!t || t.negate) return undefined;
  const a = ctx.aliases.next('x');
  const c = t.cond(a);
  return frag(`select ${a}.resource_id as id from ${INDEX_TABLES[t.kind]} ${a} where ${a}.resource_type = ? and ${a}.param = ? and (${c.sql})`, type, t.param, ...c.bindings);
}

/**
 * The request planned for execution: the index-only form when it applies, else the conditions on the
 * resource table. Each clause is built once: `where` is built only when read (a cursor of another
 * type, an estimate, or no index-only form, as with `indexOnly: false`), and then once.
 */
export function planSearch(req: SearchRequest, opts: PlanOptions = {}): SearchPlan {
  // One clock for both forms, should both be built.
  const o: PlanOptions = { ...opts, now: opts.now ?? Date.now() };
  let built: SqlFragment | undefined;
  const where = (): SqlFragment => (built ??= planWhere(req, o));
  const types = o.types ?? [req.resourceType];
  if (types.length !== 1) return { where: where() };
  const type = types[0];
  if (o.extra?.length || !req.clauses.length || o.indexOnly === false) return { where: where(), type };
  let driven: SqlFragment | undefined;
  try {
    driven = drivenForm(req, o, type);
  } catch (e) {
    // A bad value is reported as the conditions on the resource table report it (the first bad clause
    // in request order), not in the order the index-only form tries its clauses.
    where();
    throw e;
  }
  if (!driven) return { where: where(), type };
  return {
    get where() {
      return where();
    },
    type,
    driven,
  };
}

/** The index-only form (`from (<source>) s where (<others>)`), when a clause can be the source of ids. */
function drivenForm(req: SearchRequest, opts: PlanOptions, type: string): SqlFragment | undefined {
  const ctx = newCtx(req, opts);
  const order = req.clauses.map((c, i) => ({ c, i, rank: sourceRank(c) })).sort((x, y) => x.rank - y.rank || x.i - y.i);
  for (const { c, i } of order) {
    const source = clauseSource(ctx, c, type);
    if (!source) continue;
    const owner: Owner = { type: frag('?', type), id: 's.id' };
    const others = and(req.clauses.filter((_c, j) => j !== i).map((o) => pathCondition(ctx, owner, o, 0, type)));
    return frag(`from (${source.sql}) s where (${others.sql})`, ...source.bindings, ...others.bindings);
  }
  return undefined;
}
