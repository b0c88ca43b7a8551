// Hostile bodies (issue 14 acceptance; https://hl7.org/fhir/R4/http.html): a seeded, bounded fuzz
// built from the official examples, sent as create, update, transaction and $validate. Every answer
// is below 500, every error an OperationOutcome whose first issue fits its status, and the event
// loop (which serves /healthz) never stalls for a second. FUZZ_SEED and FUZZ_BODIES replay or widen it.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { ERROR_CATALOGUE } from '../../src/fhir/errors.js';
import { backends, startTestServer, type TestServer } from '../support/backends.js';
import { prng } from '../support/prng.js';

const SEED = Number(process.env.FUZZ_SEED ?? 14);
// Per backend: with both backends in CI, about 3,000 bodies in all.
const BODIES = Number(process.env.FUZZ_BODIES ?? 1500);
const STALL_LIMIT_MS = 1000;

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Obj = { [k: string]: Json };
type Rng = () => number;
const pick = <T>(rng: Rng, xs: readonly T[]): T => xs[Math.floor(rng() * xs.length)];

const dir = dirname(createRequire(import.meta.url).resolve('hl7.fhir.r4.examples/package.json'));
/** Examples small enough to send many times (the package's largest run to megabytes). */
function loadExamples(rng: Rng, count: number): Obj[] {
  const files = readdirSync(dir).filter((f) => f.endsWith('.json') && f !== 'package.json' && statSync(join(dir, f)).size < 24_000).sort();
  const out: Obj[] = [];
  for (let i = 0; i < count; i++) out.push(JSON.parse(readFileSync(join(dir, pick(rng, files)), 'utf8')) as Obj);
  return out;
}

/** Every [parent, key] inside a JSON value, so a mutation can pick any element. */
function slots(root: Json): [Obj | Json[], string | number][] {
  const out: [Obj | Json[], string | number][] = [];
  const stack: Json[] = [root];
  while (stack.length) {
    const v = stack.pop()!;
    if (Array.isArray(v)) v.forEach((x, i) => (out.push([v, i]), stack.push(x)));
    else if (v && typeof v === 'object') for (const k of Object.keys(v)) (out.push([v, k]), stack.push(v[k]));
  }
  return out;
}

const set = (p: Obj | Json[], k: string | number, v: Json) => ((p as Record<string | number, Json>)[k] = v);
const get = (p: Obj | Json[], k: string | number) => (p as Record<string | number, Json>)[k];

/** A body as sent: JSON text or raw bytes, and the mutation's name (for the failure report). */
interface Body {
  name: string;
  bytes: string | Buffer;
}

/** Mutations that keep the JSON parseable: the value is changed, then serialized. */
const VALUE_MUTATIONS: Record<string, (r: Obj, rng: Rng) => void> = {
  'wrong type': (r, rng) => {
    const s = slots(r);
    if (!s.length) return;
    const [p, k] = pick(rng, s);
    const v = get(p, k);
    set(p, k, pick<Json>(rng, [typeof v === 'string' ? 42 : 'text', typeof v === 'object' ? true : { value: v }, Array.isArray(v) ? { x: v } : [v], null, false]));
  },
  'huge or negative number': (r, rng) => {
    const s = slots(r);
    const [p, k] = s.length ? pick(rng, s) : [r, 'valueInteger'];
    set(p, k, pick(rng, [1e308, -1e308, Number.MAX_SAFE_INTEGER + 2, -2147483649, 2147483648, -1, -0.000001, 1.5e-300]));
  },
  'required field removed': (r, rng) => {
    const keys = Object.keys(r);
    delete r[pick(rng, keys)];
  },
  'unknown element': (r, rng) => {
    const objs = slots(r).map(([p, k]) => get(p, k)).filter((v): v is Obj => !!v && typeof v === 'object' && !Array.isArray(v));
    const target = objs.length ? pick(rng, objs) : r;
    target[pick(rng, ['fooBar', '_fooBar', 'extension_', 'resourceType', 'valueFoo', 'value[x]', ''])] = pick(rng, [1, 'x', { a: 1 }, []]);
  },
  'empty values': (r, rng) => {
    const s = slots(r);
    if (!s.length) return;
    const [p, k] = pick(rng, s);
    set(p, k, pick(rng, ['', [], {}, ' ', [null]]));
  },
  'giant array': (r, rng) => {
    const arrays = slots(r).map(([p, k]) => get(p, k)).filter((v): v is Json[] => Array.isArray(v) && v.length > 0);
    const n = pick(rng, [5_000, 20_000, 50_000]);
    if (arrays.length) {
      const a = pick(rng, arrays);
      const item = a[0];
      for (let i = 1; i < n; i++) a.push(rng() < 0.5 ? item : pick<Json>(rng, [0, 'x', null, {}, { id: 'y' }]));
    } else r.extension = new Array(n).fill({ url: 'http://example.org/x', valueString: 'a' }) as Json;
  },
  'deep nesting (under the parser limit)': (r) => {
    let v: Json = { url: 'http://example.org/x', valueString: 'a' };
    for (let i = 0; i < 90; i++) v = { url: 'http://example.org/x', extension: [v] };
    r.extension = [v];
  },
};

/** Mutations of the bytes themselves: what JSON.stringify can never produce. */
const TEXT_MUTATIONS: Record<string, (text: string, rng: Rng) => string | Buffer> = {
  'NUL in a string': (t, rng) => insertInString(t, rng, '\\u0000'),
  'lone surrogate': (t, rng) => insertInString(t, rng, pick(rng, ['\\ud800', '\\udfff', '\\ud83d x'])),
  'invalid UTF-8': (t, rng) => {
    const at = stringStart(t, rng);
    return Buffer.concat([Buffer.from(t.slice(0, at)), Buffer.from(pick(rng, [[0xff], [0xc3, 0x28], [0xed, 0xa0, 0x80], [0xf8, 0x88, 0x80, 0x80, 0x80]])), Buffer.from(t.slice(at))]);
  },
  'duplicate key': (t, rng) => `{"${pick(rng, ['resourceType', 'id', 'status', 'text'])}":${pick(rng, ['"Patient"', '"x"', '1', '{}'])},${t.slice(1)}`,
  'deep nesting (over the parser limit)': (t, rng) => {
    const n = pick(rng, [101, 500, 5000]);
    const open = pick(rng, ['[', '{"a":']);
    return `{"extension":${open.repeat(n)}1${(open === '[' ? ']' : '}').repeat(n)},${t.slice(1)}`;
  },
  'number literal out of range': (t, rng) => `{"valueDecimal":${pick(rng, ['1e400', '-1e400', '123456789012345678901234567890', '-0', '1E+99999'])},${t.slice(1)}`,
  truncated: (t, rng) => t.slice(0, Math.floor(rng() * t.length)),
  'not an object': (_t, rng) => pick(rng, ['[]', '"Patient"', '42', 'null', 'true', '[{"resourceType":"Patient"}]', '']),
};

function stringStart(t: string, rng: Rng): number {
  const quotes: number[] = [];
  for (let i = t.indexOf(':"'); i >= 0 && quotes.length < 200; i = t.indexOf(':"', i + 2)) quotes.push(i + 2);
  return quotes.length ? pick(rng, quotes) : 1;
}

function insertInString(t: string, rng: Rng, what: string): string {
  const at = stringStart(t, rng);
  return t.slice(0, at) + what + t.slice(at);
}

/** The body of the issue: a 125 KB Observation whose category holds 64,000 zeros. */
function zeros(n = 64_000): Obj {
  return { resourceType: 'Observation', status: 'final', code: { text: 'x' }, category: new Array(n).fill(0) as Json };
}

function mutate(r: Obj, rng: Rng): Body {
  const copy = JSON.parse(JSON.stringify(r)) as Obj;
  if (rng() < 0.6) {
    const name = pick(rng, Object.keys(VALUE_MUTATIONS));
    VALUE_MUTATIONS[name](copy, rng);
    // two mutations at once now and then: interactions between errors
    if (rng() < 0.2) VALUE_MUTATIONS[pick(rng, Object.keys(VALUE_MUTATIONS))](copy, rng);
    return { name, bytes: JSON.stringify(copy) };
  }
  const name = pick(rng, Object.keys(TEXT_MUTATIONS));
  return { name, bytes: TEXT_MUTATIONS[name](JSON.stringify(copy), rng) };
}

/** A transaction Bundle of a few examples, some entries mutated (as values: the Bundle stays JSON). */
function transactionOf(rs: Obj[], rng: Rng): Body {
  const entry = rs.map((r) => {
    const copy = JSON.parse(JSON.stringify(r)) as Obj;
    if (rng() < 0.5) VALUE_MUTATIONS[pick(rng, Object.keys(VALUE_MUTATIONS))](copy, rng);
    const put = rng() < 0.4 && typeof copy.id === 'string';
    const type = typeof copy.resourceType === 'string' ? copy.resourceType : 'Basic';
    return { fullUrl: `urn:uuid:${Math.floor(rng() * 1e12)}`, resource: copy, request: put ? { method: 'PUT', url: `${type}/${copy.id as string}` } : { method: 'POST', url: type } };
  });
  const bundle: Obj = { resourceType: 'Bundle', type: 'transaction', entry: entry as Json };
  if (rng() < 0.15) (bundle.entry as Json[]).push(pick<Json>(rng, [0, 'x', null, {}, { request: { method: 'POST' } }, { resource: zeros(), request: { method: 'POST', url: 'Observation' } }]));
  return { name: 'transaction', bytes: JSON.stringify(bundle) };
}

interface Sent {
  how: string;
  name: string;
  status: number;
  problem?: string;
}

/** The first issue's code of each status, from the one error catalogue. */
const ISSUE_CODES_BY_STATUS = new Map<number, Set<string>>();
for (const { status, issue } of Object.values(ERROR_CATALOGUE)) {
  if (!ISSUE_CODES_BY_STATUS.has(status)) ISSUE_CODES_BY_STATUS.set(status, new Set());
  ISSUE_CODES_BY_STATUS.get(status)!.add(issue);
}

function judge(status: number, text: string): string | undefined {
  if (status >= 500) return `status ${status}`;
  if (status < 400) return undefined;
  let body: { resourceType?: string; issue?: { severity?: string; code?: string }[] };
  try {
    body = JSON.parse(text) as typeof body;
  } catch {
    return `status ${status} without a JSON body`;
  }
  if (body.resourceType !== 'OperationOutcome' || !Array.isArray(body.issue) || body.issue.length === 0) return `status ${status} without an OperationOutcome`;
  const first = body.issue[0];
  if (first.severity !== 'error' && first.severity !== 'fatal') return `status ${status}: first issue is not an error`;
  if (!ISSUE_CODES_BY_STATUS.get(status)?.has(String(first.code))) return `status ${status} with issue code ${String(first.code)}`;
  return undefined;
}

describe.each(backends())('fuzzed bodies (%s)', (backend) => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer(backend);
  });
  afterAll(async () => {
    await t.close();
  });

  test(
    `${BODIES} bodies (seed ${SEED}): no 5xx, every error an OperationOutcome, no event-loop stall of ${STALL_LIMIT_MS} ms`,
    async () => {
      const rng = prng(SEED);
      const examples = loadExamples(rng, 150);
      // ajv compiles a type's validators on its first use (0.2-2.3 s once per process, measured on
      // this machine): a start-up cost, not one a request's size controls, so it is paid before the probe.
      for (const type of new Set(['Observation', 'Basic', 'Bundle', 'Patient', 'Parameters', ...examples.map((r) => String(r.resourceType))])) {
        t.svc.validator.validate({ resourceType: type, fooBar: 1 });
      }
      const headers = { Authorization: `Bearer ${t.token}`, 'Content-Type': 'application/fhir+json' };
      const sent: Sent[] = [];
      // Which body was in flight when the loop stalled longest, for the failure message.
      let inFlight = '';
      let worstGap = { ms: 0, during: '' };
      let lastTick = performance.now();
      const ticker = setInterval(() => {
        const now = performance.now();
        if (now - lastTick - 20 > worstGap.ms) worstGap = { ms: Math.round(now - lastTick - 20), during: inFlight };
        lastTick = now;
      }, 20);
      const send = async (how: string, name: string, path: string, method: string, bytes: string | Buffer) => {
        inFlight = `${how} / ${name} (${bytes.length} bytes)`;
        const res = await fetch(t.url + path, { method, headers, body: typeof bytes === 'string' ? bytes : new Uint8Array(bytes) });
        const text = await res.text();
        const problem = judge(res.status, text);
        sent.push({ how, name, status: res.status, ...(problem ? { problem } : {}) });
      };

      // The probe: the server runs in this process, so what it measures is this event loop's delay;
      // a /healthz poller beside it measures the same wait as a client sees it.
      const delay = monitorEventLoopDelay({ resolution: 10 });
      delay.enable();
      let polling = true;
      let slowestHealthz = 0;
      let healthzAnswers = 0;
      const poller = (async () => {
        while (polling) {
          const t0 = performance.now();
          const res = await fetch(`${t.url}/healthz`);
          await res.text();
          slowestHealthz = Math.max(slowestHealthz, performance.now() - t0);
          if (res.status === 200) healthzAnswers++;
          await new Promise((r) => setTimeout(r, 25));
        }
      })();

      try {
        // The issue's body, on every path it stalled.
        const z = JSON.stringify(zeros());
        await send('create', '64,000 zeros', '/Observation', 'POST', z);
        await send('update', '64,000 zeros', '/Observation/zeros', 'PUT', JSON.stringify({ ...zeros(), id: 'zeros' }));
        await send('$validate', '64,000 zeros', '/Observation/$validate', 'POST', z);
        await send('transaction', '64,000 zeros', '/', 'POST', JSON.stringify({ resourceType: 'Bundle', type: 'transaction', entry: [{ resource: zeros(), request: { method: 'POST', url: 'Observation' } }] }));
        await send('$validate', 'parameter: 1', '/Patient/$validate', 'POST', '{"resourceType":"Parameters","parameter":1}');
        await send('$validate', 'parameter: [null]', '/Patient/$validate', 'POST', '{"resourceType":"Parameters","parameter":[null]}');
        await send('transaction', '200,000-item array', '/', 'POST', JSON.stringify({ resourceType: 'Bundle', type: 'transaction', entry: [{ resource: { resourceType: 'Basic', code: { text: 'x' }, extension: new Array(200_000).fill(0) }, request: { method: 'POST', url: 'Basic' } }] }));

        for (let i = sent.length; i < BODIES; i++) {
          const how = pick(rng, ['create', 'update', 'transaction', '$validate'] as const);
          if (how === 'transaction') {
            const n = 1 + Math.floor(rng() * 8);
            const body = transactionOf(Array.from({ length: n }, () => pick(rng, examples)), rng);
            await send(how, body.name, '/', 'POST', body.bytes);
            continue;
          }
          const r = pick(rng, examples);
          const type = typeof r.resourceType === 'string' ? r.resourceType : 'Basic';
          const body = mutate(r, rng);
          if (how === 'create') await send(how, body.name, `/${type}`, 'POST', body.bytes);
          else if (how === 'update') await send(how, body.name, `/${type}/${typeof r.id === 'string' ? r.id : 'fuzz'}`, 'PUT', body.bytes);
          else await send(how, body.name, `/${type}/$validate`, 'POST', body.bytes);
        }
      } finally {
        polling = false;
        await poller;
        delay.disable();
        clearInterval(ticker);
      }

      const problems = sent.filter((s) => s.problem).map((s) => `${s.how} / ${s.name}: ${s.problem}`);
      const counts = new Map<string, number>();
      for (const p of problems) counts.set(p, (counts.get(p) ?? 0) + 1);
      // One line per kind of failure with its count: readable when something breaks.
      expect([...counts].map(([p, n]) => `${n} x ${p}`)).toEqual([]);
      expect(sent).toHaveLength(BODIES);
      // The fuzz reached past the parser: some bodies were judged by the validator, some accepted.
      expect(sent.filter((s) => s.status === 422).length).toBeGreaterThan(BODIES / 20);
      expect(sent.filter((s) => s.status < 300).length).toBeGreaterThan(BODIES / 20);
      const worstStallMs = delay.max / 1e6;
      expect({ worstStallMs: Math.round(worstStallMs), during: worstGap.during, under: worstStallMs < STALL_LIMIT_MS }).toEqual({ worstStallMs: Math.round(worstStallMs), during: worstGap.during, under: true });
      expect(slowestHealthz).toBeLessThan(STALL_LIMIT_MS);
      expect(healthzAnswers).toBeGreaterThan(10);
      // eslint-disable-next-line no-console
      if (process.env.FUZZ_REPORT) console.log(`fuzz ${backend}: ${sent.length} bodies, worst event-loop stall ${worstStallMs.toFixed(0)} ms (${worstGap.during}), slowest /healthz ${slowestHealthz.toFixed(0)} ms`);
    },
    240_000,
  );
});
