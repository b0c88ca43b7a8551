// Differential test of blind-index search (issue 6 acceptance): the same data (the Synthea bundles and
// generated patients with accents, shared prefixes, long names, several names, partial birth dates,
// identifiers with and without systems) is loaded into a server with PHI sealed and one with
// PHI_ENCRYPTION=off; every query generated from the loaded values, and negatives, must return exactly
// the same patients on both. Server ids differ between the two, so patients are compared by their
// first identifier (unique by construction).
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Bundle, Patient } from 'fhir/r4.js';
import request from 'supertest';
import { MAX_PREFIX, normaliseString } from '../../src/crypto/blind-index.js';
import { findPackageRoot } from '../../src/fhir/package-root.js';
import { concurrencyBackends, startTestServer, type TestServer, authed, agentFor } from '../support/backends.js';

const FHIR = 'application/fhir+json';
const fixtures = join(findPackageRoot(), 'test', 'fixtures', 'synthea');
const synthea = readdirSync(fixtures)
  .filter((f) => f.endsWith('.json') && f !== 'manifest.json')
  .map((f) => JSON.parse(readFileSync(join(fixtures, f), 'utf8')) as Bundle);

/** A small deterministic PRNG (mulberry32), so the generated data and queries are the same every run. */
function prng(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const FAMILIES = ['Müller', 'Muller', "O'Brien", 'van der Berg', 'Smith', 'Smithson', 'Smithsonian', 'Abbott774', 'Abbott775', 'Nguyễn', 'Ng', 'Zhang', 'Constantinopoulos-Papadopoulou', 'Wolfeschlegelsteinhausenbergerdorffvoralternwaren', 'García', 'Garcia-Lopez', 'Ångström', 'Lee', 'Leeuwenhoek'];
const GIVENS = ['José', 'Jose', 'Zoë', 'Anne Marie', 'Ann', 'Anna', 'Annabelle', 'Ned', 'Nedra', 'Li', 'Łukasz', 'Siobhán', 'Jo', 'Johannes'];
const CITIES = ['Springfield', 'Springdale', 'Boston', 'Bostwick', 'São Paulo', 'Sao Paulo', 'Amherst'];
const STATES = ['Massachusetts', 'Maine', 'MA'];

function generated(n: number): Patient[] {
  const r = prng(42);
  const pick = <T>(xs: T[]) => xs[Math.floor(r() * xs.length)];
  const out: Patient[] = [];
  for (let i = 0; i < n; i++) {
    const y = 1920 + Math.floor(r() * 90);
    const m = String(1 + Math.floor(r() * 12)).padStart(2, '0');
    const d = String(1 + Math.floor(r() * 28)).padStart(2, '0');
    const precision = r();
    const p: Patient = {
      resourceType: 'Patient',
      identifier: [{ system: 'urn:key', value: `k${i}` }],
      gender: r() < 0.5 ? 'female' : 'male',
      name: [{ use: 'official', family: pick(FAMILIES), given: r() < 0.3 ? [pick(GIVENS), pick(GIVENS)] : [pick(GIVENS)], ...(r() < 0.3 ? { prefix: ['Dr.'] } : {}) }],
      birthDate: precision < 0.8 ? `${y}-${m}-${d}` : precision < 0.9 ? `${y}-${m}` : `${y}`,
      address: [{ use: 'home', line: [`${1 + Math.floor(r() * 999)} ${pick(['Main', 'Elm', 'Oak'])} Street`], city: pick(CITIES), state: pick(STATES), postalCode: `0${1000 + Math.floor(r() * 50)}`, country: pick(['US', 'USA', 'BR']) }],
    };
    if (r() < 0.3) p.name!.push({ use: 'maiden', family: pick(FAMILIES) });
    const telecom = [];
    if (r() < 0.8) telecom.push({ system: 'phone' as const, value: `555-01${String(Math.floor(r() * 30)).padStart(2, '0')}` });
    if (r() < 0.4) telecom.push({ system: 'email' as const, value: `p${Math.floor(r() * 20)}@example.org` });
    if (telecom.length) p.telecom = telecom;
    if (r() < 0.5) p.identifier!.push({ system: pick(['urn:mrn', 'urn:other']), value: `M${Math.floor(r() * 25)}` });
    if (r() < 0.2) p.identifier!.push({ value: `NOSYS${Math.floor(r() * 5)}` });
    out.push(p);
  }
  return out;
}

/** Queries generated from a patient's values (and near misses). */
function queriesFor(p: Patient): string[] {
  const q: string[] = [];
  const enc = encodeURIComponent;
  const parts = (p.name ?? []).flatMap((n) => [n.family, ...(n.given ?? []), ...(n.prefix ?? [])]).filter((x): x is string => !!x);
  for (const part of parts) {
    const n = normaliseString(part);
    for (const len of [1, 2, 3, 5, 8, 9, n.length, n.length + 1]) {
      if (len <= n.length && len <= MAX_PREFIX) q.push(`name=${enc(part.slice(0, len))}`);
    }
    q.push(`name=${enc(`${part}x`)}`, `name:exact=${enc(part)}`, `name:exact=${enc(part.toUpperCase())}`);
  }
  for (const n of p.name ?? []) {
    if (n.family) {
      if (normaliseString(n.family).length <= MAX_PREFIX) q.push(`family=${enc(n.family)}`, `family=${enc(n.family.toLowerCase())}`);
      q.push(`family=${enc(n.family.slice(0, 4))}`, `family:exact=${enc(n.family)}`, `phonetic=${enc(n.family)}`, `family=${enc(n.family.slice(0, 3))}&birthdate=${p.birthDate}`);
    }
    for (const g of n.given ?? []) q.push(`given=${enc(g)}`, `given=${enc(g.slice(0, 2))}&gender=${p.gender}`);
  }
  for (const i of p.identifier ?? []) {
    q.push(`identifier=${enc(i.value!)}`, `identifier=${enc(`|${i.value}`)}`);
    if (i.system) q.push(`identifier=${enc(`${i.system}|${i.value}`)}`, `identifier=${enc(`${i.system}|`)}`, `identifier=${enc(`${i.system}|${i.value}x`)}`);
    for (const c of i.type?.coding ?? []) q.push(`identifier:of-type=${enc(`${c.system}|${c.code}|${i.value}`)}`);
  }
  if (p.birthDate) {
    const b = p.birthDate;
    q.push(`birthdate=${b}`, `birthdate=${b.slice(0, 4)}`, `birthdate=eq${b.slice(0, 4)}`);
    if (b.length >= 7) q.push(`birthdate=${b.slice(0, 7)}`);
    if (b.length === 10) q.push(`birthdate=${b.slice(0, 8)}${String(Math.min(28, Number(b.slice(8)) + 1)).padStart(2, '0')}`);
  }
  for (const t of p.telecom ?? []) {
    q.push(`telecom=${enc(t.value!)}`, `${t.system === 'email' ? 'email' : 'phone'}=${enc(t.value!)}`, `phone=${enc(`${t.value}0`)}`);
  }
  for (const a of p.address ?? []) {
    for (const l of a.line ?? []) q.push(`address=${enc(l.slice(0, 6))}`, `address=${enc(l)}`);
    if (a.city) q.push(`address-city=${enc(a.city)}`, `address-city=${enc(a.city.slice(0, 3))}`, `address=${enc(a.city)}`);
    if (a.state) q.push(`address-state=${enc(a.state)}`);
    if (a.postalCode) q.push(`address-postalcode=${enc(a.postalCode)}`, `address-postalcode=${enc(a.postalCode.slice(0, 3))}`);
    if (a.country) q.push(`address-country=${enc(a.country)}`);
    if (a.use) q.push(`address-use=${a.use}`);
  }
  // Starts-with values longer than MAX_PREFIX are refused with sealing (see REFUSED), not compared.
  const STRINGS = ['name', 'family', 'given', 'address', 'address-city', 'address-state', 'address-postalcode', 'address-country'];
  return q.filter((x) => [...new URLSearchParams(x)].every(([k, v]) => !STRINGS.includes(k) || v.split(',').every((w) => normaliseString(w).length <= MAX_PREFIX)));
}

const NEGATIVES = ['family=zzzzq', 'name=qqq', 'identifier=urn:mrn|nope', 'identifier=nope', 'birthdate=1800-01-01', 'birthdate=1800', 'phone=000', 'email=nobody@example.org', 'address-city=atlantis', 'phonetic=Xyzzy'];
const COMMON = ['email:missing=true', 'email:missing=false', 'birthdate:missing=true', 'phone:missing=false', 'telecom:missing=true', 'name=a,b,c', 'family=smith,muller', 'identifier=urn:key|k1,urn:key|k2', 'address-state=ma,maine', 'given=an&family=g'];
/** Served without sealing, refused with it (the blind index cannot answer them). */
const REFUSED = ['name:contains=mit', 'birthdate=ge1950', 'birthdate=lt1950-06', 'birthdate=1950-06-01T10:00:00Z', 'identifier:not=M1', '_sort=family', `family=${'w'.repeat(MAX_PREFIX + 1)}`];

type Entry = { resource: Patient; search: { mode: string } };

/** Every match of a search (all pages), as first identifiers, sorted. */
async function keys(url: string, query: string): Promise<string[]> {
  const out: string[] = [];
  let next: string | undefined = `/Patient?${query}&_count=500`;
  while (next) {
    const res: request.Response = await (await agentFor(url)).get(next).set('Prefer', 'handling=strict');
    if (res.status !== 200) throw new Error(`${res.status} for ${query}: ${JSON.stringify(res.body).slice(0, 300)}`);
    out.push(...(res.body.entry ?? []).filter((e: Entry) => e.search.mode === 'match').map((e: Entry) => e.resource.identifier?.[0]?.value ?? '?'));
    const link = (res.body.link as { relation: string; url: string }[]).find((l) => l.relation === 'next');
    next = link ? link.url.replace(url, '') : undefined;
  }
  return out.sort();
}

async function inBatches<T>(items: T[], size: number, fn: (x: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += size) await Promise.all(items.slice(i, i + size).map(fn));
}

describe.each(concurrencyBackends().slice(0, 1))('blind-index search equals plaintext search on %s PostgreSQL', (backend) => {
  let sealed: TestServer;
  let plain: TestServer;
  const people = generated(60);
  beforeAll(async () => {
    sealed = await startTestServer(backend);
    plain = await startTestServer(backend, { PHI_ENCRYPTION: 'off' });
    for (const t of [sealed, plain]) {
      for (const b of synthea) await authed(t).post('/').set('Content-Type', FHIR).send(b).expect(200);
      const batch: Bundle = { resourceType: 'Bundle', type: 'transaction', entry: people.map((p) => ({ resource: p, request: { method: 'POST', url: 'Patient' } })) };
      await authed(t).post('/').set('Content-Type', FHIR).send(batch).expect(200);
    }
  }, 120_000);
  afterAll(async () => {
    await sealed?.close();
    await plain?.close();
  });

  test('every generated query returns the same patients with sealing on and off', async () => {
    const patients = [...synthea.flatMap((b) => (b.entry ?? []).map((e) => e.resource).filter((r): r is Patient => r?.resourceType === 'Patient')), ...people];
    const queries = [...new Set([...patients.flatMap(queriesFor), ...NEGATIVES, ...COMMON])];
    expect(queries.length).toBeGreaterThan(1000);
    const differ: string[] = [];
    let nonEmpty = 0;
    let matched = 0;
    await inBatches(queries, 6, async (q) => {
      const [a, b] = await Promise.all([keys(sealed.url, q), keys(plain.url, q)]);
      if (JSON.stringify(a) !== JSON.stringify(b)) differ.push(`${q}: sealed ${a.length} [${a.slice(0, 5)}] / plain ${b.length} [${b.slice(0, 5)}]`);
      if (b.length) nonEmpty += 1;
      matched += b.length;
    });
    expect(differ).toEqual([]);
    // Not vacuous: most queries find someone, and the negatives find no one.
    expect(nonEmpty).toBeGreaterThan(queries.length * 0.6);
    expect(matched).toBeGreaterThan(queries.length);
    for (const q of NEGATIVES) expect([q, await keys(plain.url, q)]).toEqual([q, []]);
  }, 600_000);

  test('chained searches into Patient agree (Observation counts)', async () => {
    const families = synthea.flatMap((b) => (b.entry ?? []).map((e) => e.resource).filter((r): r is Patient => r?.resourceType === 'Patient')).map((p) => p.name![0].family!);
    for (const q of [...families.map((f) => `subject:Patient.family=${f}`), ...families.map((f) => `patient.name=${f.slice(0, 3)}`), 'subject:Patient.birthdate=1988', 'patient.identifier=nope']) {
      const [a, b] = await Promise.all([(await agentFor(sealed.url)).get(`/Observation?${q}&_summary=count`).expect(200), (await agentFor(plain.url)).get(`/Observation?${q}&_summary=count`).expect(200)]);
      expect([q, a.body.total]).toEqual([q, b.body.total]);
    }
    const some = await (await agentFor(plain.url)).get(`/Observation?subject:Patient.family=${families[0]}&_summary=count`).expect(200);
    expect(some.body.total).toBeGreaterThan(0);
  });

  test('what the blind index cannot answer is refused with sealing on (and served with it off)', async () => {
    for (const q of REFUSED) {
      await (await agentFor(plain.url)).get(`/Patient?${q}`).set('Prefer', 'handling=strict').expect(200);
      const r = await (await agentFor(sealed.url)).get(`/Patient?${q}`).expect(400);
      expect([q, r.body.issue[0].code]).toEqual([q, 'not-supported']);
    }
  });
});
