// A cheap, partial reading of invariant expressions (https://hl7.org/FHIRPath/N1/#boolean-logic) on
// the JSON itself, to skip fhirpath.js when the answer is certain. It understands boolean combinations
// (or, and, xor, implies, not()) of member paths (into contained and other nested resources by their
// resourceType) tested with exists(), empty(), hasValue(), count(), startsWith() and matches() with a
// literal, and
// comparisons (=, !=, <, <=, >, >=) of single string, boolean and number values, count() and sums of
// counts with literals; anything else is Unknown and the expression is evaluated by fhirpath.js. A
// decided answer replaces the evaluation; test/unit/validation-invariants.test.ts compares every
// decided answer with fhirpath.js over the official examples.
import { definition, isPrimitiveType, type DefInfo, type PropInfo } from './type-model.js';

/** True, False, Empty (FHIRPath's {}), Unknown (not decided here). */
export type Truth = 'T' | 'F' | 'E' | 'U';

/** The kind of a single value as FHIRPath compares it. */
type Ty = 'string' | 'boolean' | 'integer' | 'decimal';

type Expr =
  | { k: 'or' | 'and' | 'xor' | 'implies'; a: Expr; b: Expr }
  | { k: 'cmp'; op: string; a: Expr; b: Expr }
  | { k: 'plus'; a: Expr; b: Expr }
  | { k: 'not'; a: Expr }
  | { k: 'lit'; v: string | number | boolean; ty: Ty }
  | { k: 'path'; path: string[] }
  | { k: 'test'; path: string[]; fn: 'exists' | 'empty' | 'hasValue' | 'all' | 'count'; filtered: boolean }
  | { k: 'startsWith' | 'matches'; path: string[]; arg: string }
  | { k: 'unknown' };

const UNKNOWN: Expr = { k: 'unknown' };

const regexCache = new Map<string, RegExp>();

/**
 * The RegExp of a matches() pattern of the R4 invariants: they use escapes (`\/`, `\@`, `\'`) and a
 * lone `]` that the u flag rejects, so they are compiled with it when possible and without it
 * otherwise (the patterns are the spec's constants, never client input).
 */
export function fhirRegExp(pattern: string): RegExp {
  let re = regexCache.get(pattern);
  if (!re) {
    try {
      re = new RegExp(pattern, 'su');
    } catch {
      re = new RegExp(pattern, 's');
    }
    regexCache.set(pattern, re);
  }
  return re;
}

type Tok = { t: 'id' | 'str' | 'num' | 'op' | 'cmp' | 'sym'; v: string };

const BOOLEAN_OPS = new Set(['or', 'and', 'xor', 'implies']);

function tokenize(src: string): Tok[] | undefined {
  const out: Tok[] = [];
  let i = 0;
  while (i < src.length) {
    const c = src[i];
    if (/\s/.test(c)) {
      i++;
    } else if (/[A-Za-z_]/.test(c)) {
      let j = i + 1;
      while (j < src.length && /[A-Za-z0-9_]/.test(src[j])) j++;
      const w = src.slice(i, j);
      out.push({ t: BOOLEAN_OPS.has(w) ? 'op' : 'id', v: w });
      i = j;
    } else if (/[0-9]/.test(c)) {
      const m = /^[0-9]+(\.[0-9]+)?/.exec(src.slice(i))!;
      out.push({ t: 'num', v: m[0] });
      i += m[0].length;
    } else if (c === '`') {
      const j = src.indexOf('`', i + 1);
      if (j < 0) return undefined;
      out.push({ t: 'id', v: src.slice(i + 1, j) });
      i = j + 1;
    } else if (c === "'") {
      let j = i + 1;
      let v = '';
      while (j < src.length && src[j] !== "'") {
        if (src[j] === '\\') return undefined; // escapes: not handled here
        v += src[j++];
      }
      if (j >= src.length) return undefined;
      out.push({ t: 'str', v });
      i = j + 1;
    } else if (src.startsWith('%ucum', i) && !/[A-Za-z0-9_]/.test(src[i + 5] ?? '')) {
      out.push({ t: 'str', v: 'http://unitsofmeasure.org' });
      i += 5;
    } else if (src.startsWith('!=', i) || src.startsWith('<=', i) || src.startsWith('>=', i)) {
      out.push({ t: 'cmp', v: src.slice(i, i + 2) });
      i += 2;
    } else if (c === '=' || c === '<' || c === '>') {
      out.push({ t: 'cmp', v: c });
      i++;
    } else {
      // '(', ')', '.', '+' and any other operator or token (|, ~, %, $, @, -, ...), which makes its term unknown
      out.push({ t: 'sym', v: c });
      i++;
    }
  }
  return out;
}

/** Recursive descent over the supported subset; unsupported terms become `unknown`. */
function parse(src: string): Expr {
  const raw = tokenize(src);
  if (!raw) return UNKNOWN;
  // .trace('label') returns its input: drop it
  const toks: Tok[] = [];
  for (let i = 0; i < raw.length; i++) {
    if (raw[i].v === '.' && raw[i + 1]?.v === 'trace' && raw[i + 2]?.v === '(' && raw[i + 3]?.t === 'str' && raw[i + 4]?.v === ')') {
      i += 4;
      continue;
    }
    toks.push(raw[i]);
  }
  let p = 0;
  const peek = () => toks[p];
  const boolean = (ops: string[], next: () => Expr) => (): Expr => {
    let left = next();
    while (peek()?.t === 'op' && ops.includes(peek().v)) {
      const op = toks[p++].v as 'or' | 'and' | 'xor' | 'implies';
      left = { k: op, a: left, b: next() };
    }
    return left;
  };
  /** Skips a balanced parenthesised argument list (p at the token after '('); false if unbalanced. */
  const skipArgs = (): boolean => {
    let depth = 1;
    while (p < toks.length && depth > 0) {
      if (toks[p].v === '(') depth++;
      else if (toks[p].v === ')') depth--;
      p++;
    }
    return depth === 0;
  };
  const primary = (): Expr => {
    const start = p;
    const t = peek();
    let e: Expr;
    if (t?.t === 'sym' && t.v === '(') {
      p++;
      e = implies();
      if (peek()?.v !== ')') return skipTerm(start);
      p++;
    } else if (t?.t === 'str') {
      p++;
      e = { k: 'lit', v: t.v, ty: 'string' };
    } else if (t?.t === 'num') {
      p++;
      e = { k: 'lit', v: Number(t.v), ty: t.v.includes('.') ? 'decimal' : 'integer' };
    } else if (t?.t === 'id' && (t.v === 'true' || t.v === 'false') && toks[p + 1]?.v !== '.' && toks[p + 1]?.v !== '(') {
      p++;
      e = { k: 'lit', v: t.v === 'true', ty: 'boolean' };
    } else {
      if (t?.t === 'id' && (t.v === 'true' || t.v === 'false')) return skipTerm(start);
      const path: string[] = [];
      let filtered = false;
      while (peek()?.t === 'id' && toks[p + 1]?.v !== '(') {
        path.push(toks[p++].v);
        // continue through `.name` unless the name is a function call
        if (peek()?.v === '.' && toks[p + 1]?.t === 'id' && toks[p + 2]?.v !== '(') p++;
        else break;
      }
      if (!path.length) return skipTerm(start);
      // `.where(…)` / `.select(…)` and anything after them: empty when the path before is empty
      while (peek()?.v === '.' && (toks[p + 1]?.v === 'where' || toks[p + 1]?.v === 'select') && toks[p + 2]?.v === '(') {
        p += 3;
        if (!skipArgs()) return skipTerm(start);
        filtered = true;
        while (peek()?.v === '.' && toks[p + 1]?.t === 'id' && toks[p + 2]?.v !== '(') p += 2;
      }
      if (filtered && peek()?.v === '.' && toks[p + 1]?.v === 'all') {
        // x.where(…).all(…): not decided here
        return skipTerm(start);
      }
      if (!filtered && peek()?.v === '.' && toks[p + 1]?.v === 'all' && toks[p + 2]?.v === '(') {
        // path.all(criteria) is true on an empty path; otherwise not decided here
        p += 3;
        if (!skipArgs()) return skipTerm(start);
        e = { k: 'test', path, fn: 'all', filtered: false };
      } else if (!filtered && peek()?.v === '.' && (toks[p + 1]?.v === 'startsWith' || toks[p + 1]?.v === 'matches') && toks[p + 2]?.v === '(' && toks[p + 3]?.t === 'str' && toks[p + 4]?.v === ')') {
        e = { k: toks[p + 1].v as 'startsWith' | 'matches', path, arg: toks[p + 3].v };
        p += 5;
      } else if (peek()?.v === '.' && toks[p + 1]?.t === 'id' && toks[p + 2]?.v === '(' && toks[p + 3]?.v === ')') {
        const fn = toks[p + 1].v;
        if (fn !== 'exists' && fn !== 'empty' && !((fn === 'hasValue' || fn === 'count') && !filtered)) return skipTerm(start);
        e = { k: 'test', path, fn, filtered };
        p += 4;
      } else if (!filtered) {
        e = { k: 'path', path };
      } else return skipTerm(start);
    }
    return postfix(e, start);
  };
  /** Postfix .not() calls; the operand must end at an operator or a closing parenthesis. */
  const postfix = (e0: Expr, start: number): Expr => {
    let e = e0;
    while (peek()?.v === '.' && toks[p + 1]?.v === 'not' && toks[p + 2]?.v === '(' && toks[p + 3]?.v === ')') {
      e = { k: 'not', a: e };
      p += 4;
    }
    const n = peek();
    if (n && !(n.t === 'op' || n.t === 'cmp' || n.v === ')' || n.v === '+')) return skipTerm(start);
    return e;
  };
  /** Skips to the end of the current operand (balanced parentheses, up to the next top-level boolean operator). */
  const skipTerm = (start: number): Expr => {
    p = start;
    let depth = 0;
    while (p < toks.length) {
      const t = toks[p];
      if (t.v === '(') depth++;
      else if (t.v === ')') {
        if (depth === 0) break;
        depth--;
      } else if (depth === 0 && t.t === 'op') break;
      p++;
    }
    return UNKNOWN;
  };
  // FHIRPath precedence: + binds tighter than comparisons, which bind tighter than = and !=, then
  // and, then or/xor, then implies.
  const additive = (): Expr => {
    let left = primary();
    while (peek()?.v === '+' && left.k !== 'unknown') {
      p++;
      left = { k: 'plus', a: left, b: primary() };
    }
    return left;
  };
  const comparison = (ops: string[], next: () => Expr) => (): Expr => {
    let left = next();
    while (peek()?.t === 'cmp' && ops.includes(peek().v)) {
      const op = toks[p++].v;
      left = { k: 'cmp', op, a: left, b: next() };
    }
    return left;
  };
  const relational = comparison(['<', '<=', '>', '>='], additive);
  const equality = comparison(['=', '!='], relational);
  const and = boolean(['and'], equality);
  const or = boolean(['or', 'xor'], and);
  const implies: () => Expr = boolean(['implies'], or);
  const e = implies();
  return p === toks.length ? e : UNKNOWN;
}

type Obj = Record<string, unknown>;

const byElement = new WeakMap<DefInfo, Map<string, PropInfo[]>>();

/** The properties holding an element (several for a choice: valueQuantity, valueString, ...). */
function propsOf(d: DefInfo, name: string): PropInfo[] | undefined {
  let m = byElement.get(d);
  if (!m) {
    m = new Map();
    for (const p of d.props.values()) {
      if (p.kind === 'sibling') continue;
      const list = m.get(p.element) ?? [];
      list.push(p);
      m.set(p.element, list);
    }
    byElement.set(d, m);
  }
  return m.get(name);
}

const STRING_TYPES = new Set(['string', 'code', 'id', 'uri', 'url', 'canonical', 'markdown', 'oid', 'uuid']);
const INTEGER_TYPES = new Set(['integer', 'positiveInt', 'unsignedInt']);

/** How FHIRPath compares a value of a primitive type (undefined: not compared here). */
function classOf(target: string): Ty | undefined {
  if (STRING_TYPES.has(target)) return 'string';
  if (INTEGER_TYPES.has(target)) return 'integer';
  if (target === 'decimal') return 'decimal';
  if (target === 'boolean') return 'boolean';
  return undefined;
}

interface Found {
  /** How many values the path holds (nulls in arrays excluded). */
  count: number;
  /** The first of them. */
  first: unknown;
  /** Some `_name` sibling (extensions or id on a primitive) is present at the last step. */
  siblings: boolean;
  /** The comparison class shared by every property that held a value at the last step (undefined: mixed or other). */
  ty: Ty | undefined;
}

/**
 * Values at a member path, with choice elements resolved through the definitions and nested
 * resources (contained, Bundle.entry.resource, ...) through their resourceType; undefined = unknown.
 * Only the count and the first value are kept: every form decided here needs no more, and the
 * common one-step paths then allocate nothing but the answer.
 */
function navigate(node: Obj, def: DefInfo, path: string[]): Found | undefined {
  const lastName = path[path.length - 1];
  if (path.length === 1) {
    const found: Found = { count: 0, first: undefined, siblings: false, ty: undefined };
    const state = { typed: true };
    return lastStep(node, def, lastName, found, state) ? finish(found, state.typed) : undefined;
  }
  let objs: Obj[] = [node];
  let defs: DefInfo[] = [def];
  for (let i = 0; i < path.length - 1; i++) {
    if (!objs.length) return NOTHING; // the rest of the path is empty too
    const name = path[i];
    const nextObjs: Obj[] = [];
    const nextDefs: DefInfo[] = [];
    for (let j = 0; j < objs.length; j++) {
      const v = objs[j];
      const props = propsOf(defs[j], name);
      if (!props) {
        if (carries(v, name)) return undefined;
        continue;
      }
      for (const prop of props) {
        const raw = v[prop.name];
        const ext = v[prop.siblingName];
        if (ext !== undefined && ext !== null) return undefined; // extensions on a primitive mid-path: not modelled
        if (raw === undefined || raw === null) continue;
        const many = Array.isArray(raw);
        const count = many ? raw.length : 1;
        for (let k = 0; k < count; k++) {
          const it: unknown = many ? raw[k] : raw;
          if (it === null) continue;
          if (typeof it !== 'object' || Array.isArray(it)) return undefined;
          if (prop.kind === 'resource') {
            // a nested resource is navigated as its own type
            const nd = definition(String((it as Obj).resourceType));
            if (!nd?.isResource) return undefined;
            nextObjs.push(it as Obj);
            nextDefs.push(nd);
            continue;
          }
          if (isPrimitiveType(prop.target)) return undefined;
          const nd = definition(prop.target);
          if (!nd) return undefined;
          nextObjs.push(it as Obj);
          nextDefs.push(nd);
        }
      }
    }
    objs = nextObjs;
    defs = nextDefs;
  }
  if (!objs.length) return NOTHING;
  const found: Found = { count: 0, first: undefined, siblings: false, ty: undefined };
  const state = { typed: true };
  for (let j = 0; j < objs.length; j++) if (!lastStep(objs[j], defs[j], lastName, found, state)) return undefined;
  return finish(found, state.typed);
}

/**
 * Not an element of this definition (SimpleQuantity.comparator, a misspelling): empty unless the
 * JSON carries something by that name anyway (then the schema reports it; not decided here).
 */
function carries(v: Obj, name: string): boolean {
  return Object.keys(v).some((k) => k === name || k === `_${name}` || (k.startsWith(name) && /^[A-Z]/.test(k.slice(name.length))));
}

/** Adds the values of element `name` of `v` to `found`; false = unknown. */
function lastStep(v: Obj, d: DefInfo, name: string, found: Found, state: { typed: boolean }): boolean {
  const props = propsOf(d, name);
  if (!props) return !carries(v, name);
  for (const prop of props) {
    const raw = v[prop.name];
    const ext = v[prop.siblingName];
    if (ext !== undefined && ext !== null) found.siblings = true;
    if (raw === undefined || raw === null) continue;
    const many = Array.isArray(raw);
    const count = many ? raw.length : 1;
    for (let k = 0; k < count; k++) {
      const it: unknown = many ? raw[k] : raw;
      if (it === null) continue;
      const c = classOf(prop.target);
      if (c === undefined || (found.ty !== undefined && found.ty !== c)) state.typed = false;
      found.ty = c;
      if (found.count++ === 0) found.first = it;
    }
  }
  return true;
}

function finish(found: Found, typed: boolean): Found {
  if (!typed) found.ty = undefined;
  return found;
}

const NOTHING: Found = Object.freeze({ count: 0, first: undefined, siblings: false, ty: undefined }) as Found;

/** A FHIRPath collection of at most one primitive value; undefined = unknown. */
type Val = { items: []; ty?: undefined } | { items: [string | number | boolean]; ty: Ty };

const EMPTY: Val = { items: [] };
const TRUE: Val = { items: [true], ty: 'boolean' };
const FALSE: Val = { items: [false], ty: 'boolean' };

/** The single typed value at a path (empty when absent). */
function single(n: Found | undefined): Val | undefined {
  if (!n) return undefined;
  if (n.count === 0) return n.siblings ? undefined : EMPTY;
  if (n.count > 1 || !n.ty) return undefined;
  const v = n.first;
  switch (n.ty) {
    case 'string':
      return typeof v === 'string' ? { items: [v], ty: 'string' } : undefined;
    case 'boolean':
      return typeof v === 'boolean' ? { items: [v], ty: 'boolean' } : undefined;
    case 'integer':
      return Number.isInteger(v) ? { items: [v as number], ty: 'integer' } : undefined;
    case 'decimal':
      return typeof v === 'number' && Number.isFinite(v) ? { items: [v], ty: 'decimal' } : undefined;
  }
}

function value(e: Expr, node: Obj, def: DefInfo): Val | undefined {
  switch (e.k) {
    case 'lit':
      return { items: [e.v], ty: e.ty } as Val;
    case 'path':
      return single(navigate(node, def, e.path));
    case 'plus': {
      const a = value(e.a, node, def);
      const b = value(e.b, node, def);
      if (!a || !b) return undefined;
      if (!a.items.length || !b.items.length) return EMPTY;
      if (a.ty !== 'integer' || b.ty !== 'integer') return undefined;
      return { items: [(a.items[0] as number) + (b.items[0] as number)], ty: 'integer' };
    }
    default: {
      if (e.k === 'test' && e.fn === 'count') {
        const n = navigate(node, def, e.path);
        // a primitive with only extensions (_name) is an item too: not counted here
        if (!n || n.siblings) return undefined;
        return { items: [n.count], ty: 'integer' };
      }
      // the other forms are boolean
      const t = truth(e, node, def);
      return t === 'T' ? TRUE : t === 'F' ? FALSE : t === 'E' ? EMPTY : undefined;
    }
  }
}

function compare(op: string, a: Val | undefined, b: Val | undefined): Truth {
  if (!a || !b) return 'U';
  if (!a.items.length || !b.items.length) return 'E';
  const x = a.items[0];
  const y = b.items[0];
  let eq: boolean;
  if (a.ty === 'string' && b.ty === 'string') {
    if (op !== '=' && op !== '!=') return 'U';
    eq = x === y;
  } else if (a.ty === 'boolean' && b.ty === 'boolean') {
    if (op !== '=' && op !== '!=') return 'U';
    eq = x === y;
  } else if ((a.ty === 'integer' || a.ty === 'decimal') && (b.ty === 'integer' || b.ty === 'decimal')) {
    const m = x as number;
    const n = y as number;
    switch (op) {
      case '<':
        return m < n ? 'T' : 'F';
      case '<=':
        return m <= n ? 'T' : 'F';
      case '>':
        return m > n ? 'T' : 'F';
      case '>=':
        return m >= n ? 'T' : 'F';
    }
    // decimal equality follows precision rules in FHIRPath: only integers are compared here
    if (a.ty !== 'integer' || b.ty !== 'integer') return 'U';
    eq = m === n;
  } else return 'U';
  return (op === '=') === eq ? 'T' : 'F';
}

function truth(e: Expr, node: Obj, def: DefInfo): Truth {
  switch (e.k) {
    case 'unknown':
      return 'U';
    case 'not': {
      const a = truth(e.a, node, def);
      return a === 'T' ? 'F' : a === 'F' ? 'T' : a;
    }
    case 'or': {
      const a = truth(e.a, node, def);
      if (a === 'T') return 'T';
      const b = truth(e.b, node, def);
      if (b === 'T') return 'T';
      if (a === 'U' || b === 'U') return 'U';
      return a === 'F' && b === 'F' ? 'F' : 'E';
    }
    case 'and': {
      const a = truth(e.a, node, def);
      if (a === 'F') return 'F';
      const b = truth(e.b, node, def);
      if (b === 'F') return 'F';
      if (a === 'U' || b === 'U') return 'U';
      return a === 'T' && b === 'T' ? 'T' : 'E';
    }
    case 'xor': {
      const a = truth(e.a, node, def);
      if (a === 'U') return 'U';
      const b = truth(e.b, node, def);
      if (b === 'U') return 'U';
      if (a === 'E' || b === 'E') return 'E';
      return a !== b ? 'T' : 'F';
    }
    case 'implies': {
      const a = truth(e.a, node, def);
      if (a === 'F') return 'T';
      const b = truth(e.b, node, def);
      if (b === 'T') return 'T';
      if (a === 'U' || b === 'U') return 'U';
      return a === 'T' ? b : 'E';
    }
    case 'cmp':
      return compare(e.op, value(e.a, node, def), value(e.b, node, def));
    case 'startsWith':
    case 'matches': {
      const v = single(navigate(node, def, e.path));
      if (!v) return 'U';
      if (!v.items.length) return 'E';
      if (v.ty !== 'string') return 'U';
      const s = v.items[0] as string;
      return (e.k === 'startsWith' ? s.startsWith(e.arg) : fhirRegExp(e.arg).test(s)) ? 'T' : 'F';
    }
    case 'test': {
      if (e.fn === 'count') return 'U';
      const n = navigate(node, def, e.path);
      if (!n) return 'U';
      const exists = n.count > 0 || n.siblings;
      if (e.fn === 'all') return exists ? 'U' : 'T';
      if (e.filtered) {
        // where/select over an empty collection is empty; over items, not decided here
        if (exists) return 'U';
        return e.fn === 'exists' ? 'F' : 'T';
      }
      if (e.fn === 'exists') return exists ? 'T' : 'F';
      if (e.fn === 'empty') return exists ? 'F' : 'T';
      // hasValue(): a single primitive with a value
      if (n.count === 0) return 'F';
      return n.count === 1 && typeof n.first !== 'object' ? 'T' : 'U';
    }
    case 'lit':
    case 'path':
    case 'plus': {
      // a boolean value in a boolean context
      const v = value(e, node, def);
      if (!v) return 'U';
      if (!v.items.length) return 'E';
      return v.ty === 'boolean' ? (v.items[0] ? 'T' : 'F') : 'U';
    }
  }
}

const parsed = new Map<string, Expr>();

/** Decides an invariant expression on a node of definition `def` where the subset allows. */
export function precheck(expression: string, node: unknown, def: DefInfo | undefined): Truth {
  if (!def || node === null || typeof node !== 'object' || Array.isArray(node)) return 'U';
  let e = parsed.get(expression);
  if (!e) {
    e = parse(expression);
    parsed.set(expression, e);
  }
  return truth(e, node as Obj, def);
}
