// A cheap, partial reading of invariant expressions (https://hl7.org/FHIRPath/N1/#boolean-logic) on
// the JSON itself, to skip fhirpath.js when the answer is certain. It understands only boolean
// combinations (or, and, implies, not()) of member paths tested with exists(), empty(), hasValue()
// and `= 'literal'`; anything else is Unknown and the expression is evaluated by fhirpath.js. A decided
// answer replaces the evaluation; test/unit/validation-invariants.test.ts compares every decided answer
// with fhirpath.js over the official examples.
import { definition, isPrimitiveType, type DefInfo, type PropInfo } from './type-model.js';

/** True, False, Empty (FHIRPath's {}), Unknown (not decided here). */
export type Truth = 'T' | 'F' | 'E' | 'U';

type Expr =
  | { k: 'or' | 'and' | 'implies'; a: Expr; b: Expr }
  | { k: 'not'; a: Expr }
  | { k: 'test'; path: string[]; fn: 'exists' | 'empty' | 'hasValue' | 'all'; filtered: boolean }
  | { k: 'eq'; path: string[]; value: string }
  | { k: 'unknown' };

const UNKNOWN: Expr = { k: 'unknown' };

type Tok = { t: 'id' | 'str' | 'op' | 'sym'; v: string };

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
      out.push({ t: w === 'or' || w === 'and' || w === 'implies' ? 'op' : 'id', v: w });
      i = j;
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
    } else if ('().='.includes(c)) {
      out.push({ t: 'sym', v: c });
      i++;
    } else {
      // any other operator or token (<=, !=, |, %, $, numbers, ...) makes the whole term unknown
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
  const binary = (ops: string[], next: () => Expr) => (): Expr => {
    let left = next();
    while (peek()?.t === 'op' && ops.includes(peek().v)) {
      const op = toks[p++].v as 'or' | 'and' | 'implies';
      left = { k: op, a: left, b: next() };
    }
    return left;
  };
  // FHIRPath precedence: and binds tighter than or, which binds tighter than implies.
  const primary = (): Expr => {
    const start = p;
    let e: Expr;
    if (peek()?.t === 'sym' && peek().v === '(') {
      p++;
      e = implies();
      if (peek()?.v !== ')') return skipTerm(start);
      p++;
    } else {
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
        let depth = 1;
        while (p < toks.length && depth > 0) {
          if (toks[p].v === '(') depth++;
          else if (toks[p].v === ')') depth--;
          p++;
        }
        if (depth > 0) return skipTerm(start);
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
        let depth = 1;
        while (p < toks.length && depth > 0) {
          if (toks[p].v === '(') depth++;
          else if (toks[p].v === ')') depth--;
          p++;
        }
        if (depth > 0) return skipTerm(start);
        e = { k: 'test', path, fn: 'all', filtered: false };
        return postfix(e, start);
      }
      if (!filtered && peek()?.v === '=' && toks[p + 1]?.t === 'str') {
        e = { k: 'eq', path, value: toks[p + 1].v };
        p += 2;
      } else if (peek()?.v === '.' && toks[p + 1]?.t === 'id' && toks[p + 2]?.v === '(' && toks[p + 3]?.v === ')') {
        const fn = toks[p + 1].v;
        if (fn !== 'exists' && fn !== 'empty' && !(fn === 'hasValue' && !filtered)) return skipTerm(start);
        e = { k: 'test', path, fn, filtered };
        p += 4;
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
    if (peek() && !(peek().t === 'op' || peek().v === ')')) return skipTerm(start);
    return e;
  };
  /** Skips to the end of the current operand (balanced parentheses, up to the next top-level operator). */
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
  const and = binary(['and'], primary);
  const or = binary(['or'], and);
  const implies: () => Expr = binary(['implies'], or);
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

/** Values at a member path, with choice elements resolved through the definitions; undefined = unknown. */
function navigate(node: Obj, def: DefInfo, path: string[]): { values: unknown[]; siblings: boolean; stringTyped: boolean } | undefined {
  let level: { v: Obj; d: DefInfo }[] = [{ v: node, d: def }];
  let values: unknown[] = [];
  let siblings = false;
  let stringTyped = true;
  for (let i = 0; i < path.length; i++) {
    const name = path[i];
    const next: { v: Obj; d: DefInfo }[] = [];
    values = [];
    siblings = false;
    stringTyped = true;
    for (const { v, d } of level) {
      const props = propsOf(d, name);
      if (!props) {
        // Not an element of this definition (SimpleQuantity.comparator, a misspelling): empty unless
        // the JSON carries something by that name anyway (then the schema reports it; not decided here).
        if (Object.keys(v).some((k) => k === name || k === `_${name}` || (k.startsWith(name) && /^[A-Z]/.test(k.slice(name.length))))) return undefined;
        continue;
      }
      for (const prop of props) {
        if (!STRING_TYPES.has(prop.target)) stringTyped = false;
        const raw = v[prop.name];
        const items = raw === undefined || raw === null ? [] : Array.isArray(raw) ? raw.filter((x) => x !== null) : [raw];
        const ext = v[`_${prop.name}`];
        if (ext !== undefined && ext !== null) siblings = true;
        for (const it of items) {
          values.push(it);
          if (i < path.length - 1) {
            if (prop.kind === 'resource' || isPrimitiveType(prop.target)) return undefined;
            const nd = definition(prop.target);
            if (!nd || typeof it !== 'object') return undefined;
            next.push({ v: it as Obj, d: nd });
          }
        }
        if (i < path.length - 1 && siblings) return undefined; // extensions on a primitive mid-path: not modelled
      }
    }
    level = next;
  }
  return { values, siblings, stringTyped };
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
    case 'implies': {
      const a = truth(e.a, node, def);
      if (a === 'F') return 'T';
      const b = truth(e.b, node, def);
      if (b === 'T') return 'T';
      if (a === 'U' || b === 'U') return 'U';
      return a === 'T' ? b : 'E';
    }
    case 'test': {
      const n = navigate(node, def, e.path);
      if (!n) return 'U';
      const exists = n.values.length > 0 || n.siblings;
      if (e.fn === 'all') return exists ? 'U' : 'T';
      if (e.filtered) {
        // where/select over an empty collection is empty; over items, not decided here
        if (exists) return 'U';
        return e.fn === 'exists' ? 'F' : 'T';
      }
      if (e.fn === 'exists') return exists ? 'T' : 'F';
      if (e.fn === 'empty') return exists ? 'F' : 'T';
      // hasValue(): a single primitive with a value
      if (n.values.length === 0) return 'F';
      return n.values.length === 1 && typeof n.values[0] !== 'object' ? 'T' : 'U';
    }
    case 'eq': {
      const n = navigate(node, def, e.path);
      if (!n) return 'U';
      if (n.values.length === 0) return n.siblings ? 'U' : 'E';
      if (n.values.length > 1 || typeof n.values[0] !== 'string' || !n.stringTyped) return 'U';
      return n.values[0] === e.value ? 'T' : 'F';
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
