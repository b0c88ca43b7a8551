// Granular-scope differential (SMART App Launch v2, "Scopes and Launch Context": finer-grained
// resource constraints using search parameters, https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html).
// Synthea transaction Bundles (test/fixtures/synthea) are loaded with a system/*.cruds token; then,
// under category-constrained tokens, every way of reaching resources (type and system search with
// paging, read, vread, instance, type and system history, compartment search, _include, _revinclude,
// :iterate) is compared with the set the test computes itself from the full data read with the
// system/*.cruds token:
//   patient token (patient claim = P): an Observation is inside iff its subject is Patient/P and one of its
//     category codings is observation-category|laboratory; a Condition likewise with
//     condition-category|encounter-diagnosis; a Patient iff it is P (or links to P: none here).
//   the same patient token with user/Patient.rs?_id=P in place of patient/Patient.rs: the same reach, so
//     that everything else is still checked when the Patient rule alone goes wrong.
//   user token: an Observation is inside iff one of its category codings is observation-category|laboratory.
// And _has and chained parameters must be decided by resources inside the grant only (else the answer
// tells the token about resources it may not read).
// Nothing outside may come back, everything inside must; outside resources answer 404 (never 403),
// included resources outside are left out with an OperationOutcome `suppressed`, and a type without a
// scope is a 403 naming the scope that is missing. Versions are judged by their own content (as
// src/interactions/history.ts and vread.ts document); instance history needs the current version inside.
//
// Every check appends to a report instead of failing at once, so one run lists every difference with
// the ids involved ("leaked" = returned but outside the grant, "missing" = inside but not returned).
//
// The Synthea Conditions carry no category at all (Synthea v2.4 does not write one), so each bundle
// gets four extra Conditions before it is posted: encounter-diagnosis; problem-list-item plus
// encounter-diagnosis; problem-list-item only; and the code encounter-diagnosis under a foreign system.
// Three Observations of the patient in context are then updated so that history has versions on both
// sides of the grant: a note added (v1, v2 inside), vital-signs -> laboratory (v1 outside, v2 inside),
// laboratory -> vital-signs (v1 inside, v2 outside).
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Response } from 'supertest';
import { authed, backends, startTestServer, tokenFor, type TestServer } from '../support/backends.js';

const FHIR = 'application/fhir+json';
const DIR = join(process.cwd(), 'test', 'fixtures', 'synthea');
const OBS_CAT = 'http://terminology.hl7.org/CodeSystem/observation-category';
const COND_CAT = 'http://terminology.hl7.org/CodeSystem/condition-category';
const LAB = `${OBS_CAT}|laboratory`;
const VITALS = `${OBS_CAT}|vital-signs`;
const ENC_DX = `${COND_CAT}|encounter-diagnosis`;
const enc = encodeURIComponent;

interface Coding {
  system?: string;
  code?: string;
  display?: string;
}
interface Ref {
  reference?: string;
}
interface Res {
  resourceType: string;
  id: string;
  meta?: { versionId?: string };
  subject?: Ref;
  performer?: Ref[];
  asserter?: Ref;
  link?: { other?: Ref }[];
  category?: { coding?: Coding[] }[];
  issue?: { code: string; diagnostics?: string }[];
  [k: string]: unknown;
}
interface Entry {
  fullUrl?: string;
  resource?: Res;
  search?: { mode: string };
  request?: { method: string; url: string };
  response?: { status: string; location?: string };
}
interface Bundle {
  resourceType: string;
  type: string;
  total?: number;
  link?: { relation: string; url: string }[];
  entry?: Entry[];
}
type Agent = ReturnType<typeof authed>;

const key = (r: { resourceType: string; id: string }) => `${r.resourceType}/${r.id}`;
const vkey = (r: Res) => `${r.resourceType}/${r.id}/_history/${r.meta?.versionId ?? '?'}`;
const sorted = (xs: Iterable<string>) => [...xs].sort();
const refTo = (ref: Ref | undefined, type: string, id: string) => ref?.reference === `${type}/${id}` || (ref?.reference?.endsWith(`/${type}/${id}`) ?? false);
const hasCategory = (r: Res, system: string, code: string) => (r.category ?? []).some((cc) => (cc.coding ?? []).some((c) => c.system === system && c.code === code));

function diag(res: Response): string {
  const b = res.body as Partial<Res> | undefined;
  const issue = b?.resourceType === 'OperationOutcome' ? b.issue?.[0] : undefined;
  return issue ? ` [${issue.code}: ${String(issue.diagnostics ?? '').slice(0, 300)}]` : '';
}

/** Collects every difference of one test and asserts at the end, so a failure lists all of them. */
class Report {
  problems: string[] = [];
  checks = 0;
  /** Ids returned vs ids expected: nothing outside (leaked), nothing inside left out (missing), no duplicates. */
  same(label: string, got: string[], want: Iterable<string>, words = { extra: 'leaked', extraWhy: 'returned, outside the grant', missingWhy: 'inside the grant, not returned' }): void {
    this.checks++;
    const g = new Set(got);
    const w = new Set(want);
    const leaked = sorted([...g].filter((x) => !w.has(x)));
    const missing = sorted([...w].filter((x) => !g.has(x)));
    const duplicated = sorted(new Set(got.filter((x, i) => got.indexOf(x) !== i)));
    const parts: string[] = [];
    if (leaked.length) parts.push(`${words.extra} ${leaked.length} (${words.extraWhy}): ${leaked.join(', ')}`);
    if (missing.length) parts.push(`missing ${missing.length} (${words.missingWhy}): ${missing.join(', ')}`);
    if (duplicated.length) parts.push(`duplicated: ${duplicated.join(', ')}`);
    if (parts.length) this.problems.push(`${label}: expected ${w.size}, got ${got.length}; ${parts.join('; ')}`);
  }
  status(label: string, res: Response, want: number): boolean {
    this.checks++;
    if (res.status === want) return true;
    this.problems.push(`${label}: expected ${want}, got ${res.status}${diag(res)}`);
    return false;
  }
  ok(cond: boolean, message: string): void {
    this.checks++;
    if (!cond) this.problems.push(message);
  }
  done(): void {
    expect(this.problems).toEqual([]);
    expect(this.checks).toBeGreaterThan(0);
  }
}

/** Runs `fn` over `items`, `width` at a time. */
async function pool<T, U>(items: T[], width: number, fn: (x: T) => Promise<U>): Promise<U[]> {
  const out: U[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(width, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]);
      }
    }),
  );
  return out;
}

/** A grant under test: its token and the test's own rule for what it reaches. */
interface Grant {
  name: string;
  token: string;
  agent: Agent;
  /** Types it has a scope for (rs). */
  types: string[];
  inside(r: Res): boolean;
}

describe.each(backends())('granular SMART scopes over Synthea on %s PostgreSQL', (backend) => {
  let t: TestServer;
  let full: Agent;
  /** The patient in context, and the other loaded patients. */
  let P: string;
  let others: string[];
  /** Current content of every resource (Type/id), read with the full-access token. */
  const current = new Map<string, Res>();
  /** Every version (Type/id/_history/n) with its content, from the full-access system history. */
  const versions = new Map<string, Res>();
  let patientGrant: Grant;
  /** The patient token with `user/Patient.rs?_id=P` in place of `patient/Patient.rs` (the same reach, by another rule). */
  let altGrant: Grant;
  let userGrant: Grant;
  const moved: { noted: string; movedIn: string; movedOut: string } = { noted: '', movedIn: '', movedOut: '' };

  /** Follows `next` links from `first`; the Bundles, or undefined (reported) when a page is not 200. */
  async function walk(agent: Agent, first: string, rep: Report, label: string, maxPages = 200): Promise<Bundle[] | undefined> {
    const pages: Bundle[] = [];
    let url: string | undefined = first;
    while (url) {
      const res = await agent.get(url);
      if (!rep.status(`GET ${url} (${label}, page ${pages.length + 1})`, res, 200)) return undefined;
      const b = res.body as Bundle;
      pages.push(b);
      const next = b.link?.find((l) => l.relation === 'next')?.url;
      if (next !== undefined && !next.startsWith(t.url)) {
        rep.problems.push(`GET ${url} (${label}): next link ${next} is not under ${t.url}`);
        return undefined;
      }
      url = next?.slice(t.url.length);
      if (pages.length > maxPages) {
        rep.problems.push(`${label}: more than ${maxPages} pages from ${first}`);
        return undefined;
      }
    }
    return pages;
  }
  const entries = (pages: Bundle[], mode: string) => pages.flatMap((b) => (b.entry ?? []).filter((e) => e.search?.mode === mode && e.resource).map((e) => e.resource!));
  const matches = (pages: Bundle[]) => entries(pages, 'match').map(key);
  const included = (pages: Bundle[]) => entries(pages, 'include').map(key);
  const outcomeCodes = (b: Bundle) => entries([b], 'outcome').flatMap((r) => (r.issue ?? []).map((i) => i.code));
  const historyKeys = (pages: Bundle[]) => pages.flatMap((b) => (b.entry ?? []).map((e) => (e.resource ? vkey(e.resource) : `deleted:${e.request?.url ?? '?'}`)));

  const currentOf = (type?: string) => [...current.values()].filter((r) => !type || r.resourceType === type);
  const insideKeys = (g: Grant, type?: string) => currentOf(type).filter((r) => g.inside(r)).map(key);
  const versionsInside = (g: Grant, type?: string) => [...versions.values()].filter((r) => (!type || r.resourceType === type) && g.inside(r)).map(vkey);

  async function fullWalk(first: string): Promise<Bundle[]> {
    const rep = new Report();
    const pages = await walk(full, first, rep, 'full-access token');
    expect(rep.problems).toEqual([]);
    return pages!;
  }

  beforeAll(async () => {
    t = await startTestServer(backend);
    full = authed(t);
    const files = readdirSync(DIR)
      .filter((f) => f.endsWith('.json') && f !== 'manifest.json')
      .sort();
    expect(files.length).toBeGreaterThanOrEqual(3);
    const patientIds: string[] = [];
    for (const f of files) {
      const bundle = JSON.parse(readFileSync(join(DIR, f), 'utf8')) as Bundle;
      const patientUrl = bundle.entry!.find((e) => e.resource?.resourceType === 'Patient')!.fullUrl!;
      const encounterUrl = bundle.entry!.find((e) => e.resource?.resourceType === 'Encounter')!.fullUrl!;
      const condition = (category: Coding[][], text: string): Entry => ({
        fullUrl: `urn:uuid:${randomUUID()}`,
        resource: {
          resourceType: 'Condition',
          id: randomUUID(),
          clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'active' }] },
          category: category.map((coding) => ({ coding })),
          code: { coding: [{ system: 'http://snomed.info/sct', code: '38341003' }], text },
          subject: { reference: patientUrl },
          encounter: { reference: encounterUrl },
        },
        request: { method: 'POST', url: 'Condition' },
      });
      const dx = { system: COND_CAT, code: 'encounter-diagnosis' };
      const problem = { system: COND_CAT, code: 'problem-list-item' };
      bundle.entry!.push(
        condition([[dx]], 'encounter-diagnosis'),
        condition([[problem], [dx]], 'problem-list-item and encounter-diagnosis'),
        condition([[problem]], 'problem-list-item only'),
        condition([[{ system: 'http://example.org/not-condition-category', code: 'encounter-diagnosis' }]], 'foreign system'),
      );
      const res = await full.post('/').set('Content-Type', FHIR).send(bundle);
      expect({ file: f, status: res.status }).toEqual({ file: f, status: 200 });
      const out = res.body as Bundle;
      const i = bundle.entry!.findIndex((e) => e.resource?.resourceType === 'Patient');
      patientIds.push(/^Patient\/([^/]+)/.exec(out.entry![i].response!.location!)![1]);
    }
    [P, ...others] = patientIds;

    // History probes on the patient in context (full-access token).
    const obsOfP = entries(await fullWalk(`/Observation?subject=Patient/${P}&_count=500`), 'match');
    const lab = obsOfP.filter((r) => hasCategory(r, OBS_CAT, 'laboratory'));
    const vitals = obsOfP.filter((r) => hasCategory(r, OBS_CAT, 'vital-signs'));
    expect(lab.length).toBeGreaterThanOrEqual(3);
    expect(vitals.length).toBeGreaterThanOrEqual(1);
    const put = async (r: Res) => {
      const res = await full.put(`/Observation/${r.id}`).set('Content-Type', FHIR).send(r);
      expect({ id: r.id, status: res.status }).toEqual({ id: r.id, status: 200 });
    };
    const recategorized = (r: Res, code: string): Res => ({ ...r, category: [{ coding: [{ system: OBS_CAT, code, display: code }] }] });
    moved.noted = lab[0].id;
    await put({ ...lab[0], note: [{ text: 'reviewed' }] });
    moved.movedIn = vitals[0].id;
    await put(recategorized(vitals[0], 'laboratory'));
    moved.movedOut = lab[1].id;
    await put(recategorized(lab[1], 'vital-signs'));

    // The full data: every version from system history, the current ones from the newest version.
    const hist = await fullWalk('/_history?_count=500');
    for (const b of hist) {
      for (const e of b.entry ?? []) {
        const r = e.resource!;
        versions.set(vkey(r), r);
        const k = key(r);
        const have = current.get(k);
        if (!have || Number(have.meta!.versionId) < Number(r.meta!.versionId)) current.set(k, r);
      }
    }

    const scope = `patient/Observation.rs?category=${LAB} patient/Condition.rs?category=${ENC_DX} patient/Patient.rs`;
    const pToken = await tokenFor(t.url, { scope, patient: P });
    patientGrant = {
      name: `patient token, patient ${P}`,
      token: pToken,
      agent: authed(t, pToken),
      types: ['Observation', 'Condition', 'Patient'],
      inside: (r) => {
        if (r.resourceType === 'Observation') return refTo(r.subject, 'Patient', P) && hasCategory(r, OBS_CAT, 'laboratory');
        if (r.resourceType === 'Condition') return refTo(r.subject, 'Patient', P) && hasCategory(r, COND_CAT, 'encounter-diagnosis');
        if (r.resourceType === 'Patient') return r.id === P || (r.link ?? []).some((l) => refTo(l.other, 'Patient', P));
        return false;
      },
    };
    const altScope = `patient/Observation.rs?category=${LAB} patient/Condition.rs?category=${ENC_DX} user/Patient.rs?_id=${P}`;
    const altToken = await tokenFor(t.url, { scope: altScope, patient: P });
    altGrant = { ...patientGrant, name: `patient token with user/Patient.rs?_id=P, patient ${P}`, token: altToken, agent: authed(t, altToken) };
    const uScope = `user/Observation.rs?category=${LAB}`;
    const uToken = await tokenFor(t.url, { scope: uScope });
    userGrant = {
      name: 'user token',
      token: uToken,
      agent: authed(t, uToken),
      types: ['Observation'],
      inside: (r) => r.resourceType === 'Observation' && hasCategory(r, OBS_CAT, 'laboratory'),
    };
  }, 180_000);

  afterAll(async () => {
    await t?.close();
  });

  const grants = () => [patientGrant, altGrant, userGrant];
  const patientGrants = () => [patientGrant, altGrant];

  test('the data: both sides of every grant are populated, and subject is the whole Patient compartment here', async () => {
    const rep = new Report();
    rep.ok(current.size > 200, `expected over 200 resources loaded, got ${current.size}`);
    for (const g of grants()) {
      for (const type of g.types) {
        const inside = insideKeys(g, type).length;
        const outside = currentOf(type).length - inside;
        rep.ok(inside > 0 && outside > 0, `${g.name}: ${type} has ${inside} inside and ${outside} outside; both must be > 0 for a meaningful test`);
      }
    }
    // The test's rule uses subject only; Observation.performer and Condition.asserter are Patient
    // compartment parameters too, so make sure no resource here uses them to point at a Patient.
    const viaOther = currentOf().filter((r) => (r.performer ?? []).some((p) => /(^|\/)Patient\//.test(p.reference ?? '')) || /(^|\/)Patient\//.test(r.asserter?.reference ?? ''));
    rep.same('resources in a Patient compartment through performer/asserter', viaOther.map(key), []);
    // The expected sets come from /_history; the full-access search must agree with it.
    for (const type of ['Observation', 'Condition', 'Patient', 'Encounter']) {
      rep.same(`GET /${type} [full-access token] vs the current versions from /_history`, matches(await fullWalk(`/${type}?_count=500`)), currentOf(type).map(key));
    }
    rep.ok(versions.has(`Observation/${moved.movedIn}/_history/2`) && versions.has(`Observation/${moved.movedOut}/_history/2`) && versions.has(`Observation/${moved.noted}/_history/2`), 'history probes present');
    rep.done();
  });

  test('type search (paged through next links), with and without other parameters, returns exactly the grant', async () => {
    const rep = new Report();
    for (const g of grants()) {
      for (const type of g.types) {
        const want = insideKeys(g, type);
        const url = `/${type}?_count=7`;
        const pages = await walk(g.agent, url, rep, g.name);
        if (pages) {
          rep.same(`GET ${url} [${g.name}]`, matches(pages), want);
          rep.ok(pages[0].total === want.length, `GET ${url} [${g.name}]: Bundle.total ${pages[0].total}, expected ${want.length}`);
        }
        const count = await g.agent.get(`/${type}?_summary=count`);
        if (rep.status(`GET /${type}?_summary=count [${g.name}]`, count, 200)) {
          rep.ok((count.body as Bundle).total === want.length, `GET /${type}?_summary=count [${g.name}]: total ${(count.body as Bundle).total}, expected ${want.length}`);
        }
        // POST _search gives the first page of the same answer.
        const form = await g.agent.post(`/${type}/_search`).type('form').send('_count=500');
        if (rep.status(`POST /${type}/_search [${g.name}]`, form, 200)) rep.same(`POST /${type}/_search _count=500 [${g.name}]`, matches([form.body as Bundle]), want);
      }
    }
    // Parameters narrow within the grant, never widen it: the answer is the full-access answer within the grant.
    const byParams: [Grant, string][] = [
      ...patientGrants().map((g): [Grant, string] => [g, `/Observation?category=${enc(VITALS)}&_count=50`]),
      ...patientGrants().map((g): [Grant, string] => [g, `/Observation?subject=Patient/${others[0]}&_count=50`]),
      ...patientGrants().map((g): [Grant, string] => [g, `/Observation?category=${enc(LAB)}&_count=5`]),
      ...patientGrants().map((g): [Grant, string] => [g, `/Observation?_lastUpdated=gt2000-01-01&_sort=-_lastUpdated&_count=4`]),
      ...patientGrants().map((g): [Grant, string] => [g, `/Condition?category=${enc(`${COND_CAT}|problem-list-item`)}&_count=5`]),
      ...patientGrants().map((g): [Grant, string] => [g, `/Patient?_id=${others.join(',')}`]),
      ...patientGrants().map((g): [Grant, string] => [g, `/Patient?_id=${[P, ...others].join(',')}`]),
      [userGrant, `/Observation?subject=Patient/${others[0]}&_count=5`],
      [userGrant, `/Observation?category=${enc(VITALS)}`],
      [userGrant, `/Observation?_id=${[moved.movedIn, moved.movedOut, moved.noted].join(',')}`],
      [userGrant, `/Observation?_sort=date&_count=8`],
    ];
    for (const [g, url] of byParams) {
      const fullSet = matches(await fullWalk(url));
      const pages = await walk(g.agent, url, rep, g.name);
      if (pages) rep.same(`GET ${url} [${g.name}]`, matches(pages), fullSet.filter((k) => g.inside(current.get(k)!)));
    }
    // _has looks at Observations: only those inside the grant may decide which Patients match, or the
    // answer tells the token about Observations it may not see (Patient P has vital-signs Observations).
    for (const [cat, pred] of [
      [VITALS, (r: Res) => hasCategory(r, OBS_CAT, 'vital-signs')],
      [LAB, (r: Res) => hasCategory(r, OBS_CAT, 'laboratory')],
    ] as const) {
      const url = `/Patient?_has:Observation:subject:category=${enc(cat)}`;
      const fullSet = matches(await fullWalk(url));
      rep.ok(fullSet.includes(`Patient/${P}`), `GET ${url} with the full-access token: Patient/${P} expected`);
      for (const g of patientGrants()) {
        const want = insideKeys(g, 'Patient').filter((pk) => currentOf('Observation').some((o) => g.inside(o) && pred(o) && refTo(o.subject, 'Patient', pk.slice('Patient/'.length))));
        const pages = await walk(g.agent, url, rep, g.name);
        if (pages) rep.same(`GET ${url} [${g.name}] (only Observations inside the grant may decide)`, matches(pages), want, { extra: 'wrongly matched', extraWhy: 'the match was decided by resources outside the grant', missingWhy: 'inside the grant, not returned' });
      }
    }
    rep.done();
  });

  test('system search, with and without _type, returns exactly the grant', async () => {
    const rep = new Report();
    for (const g of grants()) {
      for (const url of ['/?_count=9', `/?_type=${g.types.join(',')}&_count=9`, '/?_type=Observation&_count=9']) {
        const types = url.includes('_type=') ? new URLSearchParams(url.slice(2)).get('_type')!.split(',') : g.types;
        const pages = await walk(g.agent, url, rep, g.name);
        if (pages) rep.same(`GET ${url} [${g.name}]`, matches(pages), types.flatMap((ty) => insideKeys(g, ty)));
      }
    }
    rep.done();
  });

  test('read: every resource inside is 200, every current resource outside of the granted types is 404 (not 403)', async () => {
    const rep = new Report();
    for (const g of grants()) {
      const all = currentOf().filter((r) => g.types.includes(r.resourceType));
      await pool(all, 8, async (r) => {
        const inside = g.inside(r);
        const res = await g.agent.get(`/${key(r)}`);
        if (rep.status(`GET /${key(r)} [${g.name}] (${inside ? 'inside' : 'outside'} the grant)`, res, inside ? 200 : 404) && inside) {
          const body = res.body as Res;
          rep.ok(key(body) === key(r) && body.meta?.versionId === r.meta?.versionId, `GET /${key(r)} [${g.name}]: got ${key(body)} version ${body.meta?.versionId}, expected version ${r.meta?.versionId}`);
        }
      });
    }
    rep.done();
  });

  test('vread and instance history: judged per version; instance history needs the current version inside', async () => {
    const rep = new Report();
    for (const g of grants()) {
      const all = currentOf().filter((r) => g.types.includes(r.resourceType));
      await pool(all, 8, async (r) => {
        const mine = [...versions.values()].filter((v) => key(v) === key(r));
        const h = await g.agent.get(`/${key(r)}/_history`);
        if (g.inside(r)) {
          if (rep.status(`GET /${key(r)}/_history [${g.name}] (current inside)`, h, 200)) {
            rep.same(`GET /${key(r)}/_history [${g.name}]`, historyKeys([h.body as Bundle]), mine.filter((v) => g.inside(v)).map(vkey));
          }
        } else rep.status(`GET /${key(r)}/_history [${g.name}] (current outside)`, h, 404);
        for (const v of mine) {
          const res = await g.agent.get(`/${vkey(v)}`);
          if (rep.status(`GET /${vkey(v)} [${g.name}] (version ${g.inside(v) ? 'inside' : 'outside'}, current ${g.inside(r) ? 'inside' : 'outside'})`, res, g.inside(v) ? 200 : 404) && g.inside(v)) {
            rep.ok(vkey(res.body as Res) === vkey(v), `GET /${vkey(v)} [${g.name}]: got ${vkey(res.body as Res)}`);
          }
        }
      });
      // The three probes are exercised on the patient token's own patient.
      if (g !== userGrant) {
        rep.ok(g.inside(current.get(`Observation/${moved.movedIn}`)!) && !g.inside(versions.get(`Observation/${moved.movedIn}/_history/1`)!), 'movedIn probe shape');
        rep.ok(!g.inside(current.get(`Observation/${moved.movedOut}`)!) && g.inside(versions.get(`Observation/${moved.movedOut}/_history/1`)!), 'movedOut probe shape');
      }
    }
    rep.done();
  });

  test('type and system history (paged) hold exactly the versions inside the grant', async () => {
    const rep = new Report();
    for (const g of grants()) {
      for (const type of g.types) {
        const url = `/${type}/_history?_count=10`;
        const pages = await walk(g.agent, url, rep, g.name);
        if (pages) rep.same(`GET ${url} [${g.name}]`, historyKeys(pages), versionsInside(g, type));
      }
      const url = '/_history?_count=25';
      const pages = await walk(g.agent, url, rep, g.name);
      if (pages) rep.same(`GET ${url} [${g.name}]`, historyKeys(pages), versionsInside(g));
    }
    rep.done();
  });

  test('compartment search (one type and *) returns the compartment within the grant', async () => {
    const rep = new Report();
    const cases: [string, string][] = [
      [P, 'Observation'],
      [P, 'Condition'],
      [P, '*'],
      [others[0], 'Observation'],
      [others[0], '*'],
    ];
    for (const [pid, type] of cases) {
      const fullSet = matches(await fullWalk(`/Patient/${pid}/${type}?_count=500`));
      rep.ok(fullSet.length > 0, `GET /Patient/${pid}/${type} with the full-access token found nothing`);
      for (const g of grants()) {
        // `*` covers the member types the token may search; a single type must be one it may search.
        if (type !== '*' && !g.types.includes(type)) continue;
        const want = fullSet.filter((k) => g.inside(current.get(k)!));
        const url = `/Patient/${pid}/${type}?_count=6`;
        const pages = await walk(g.agent, url, rep, g.name);
        if (pages) rep.same(`GET ${url} [${g.name}]`, matches(pages), want);
      }
    }
    rep.done();
  });

  test('_include: included resources outside the grant are left out and reported as suppressed', async () => {
    const rep = new Report();
    const insideOf = (g: Grant, type: string, pid?: string) => insideKeys(g, type).filter((k) => !pid || refTo(current.get(k)!.subject, 'Patient', pid));

    // Encounter has no scope: included Encounters are all withheld, every page says so.
    const url1 = '/Observation?_include=Observation:encounter&_count=7';
    const fullPages = await fullWalk(url1);
    rep.ok(included(fullPages).length > 0 && fullPages.every((b) => !outcomeCodes(b).includes('suppressed')), `GET ${url1} with the full-access token: expected Encounters included and no suppressed`);
    for (const g of grants()) {
      const pages = await walk(g.agent, url1, rep, g.name);
      if (!pages) continue;
      rep.same(`GET ${url1} [${g.name}] matches`, matches(pages), insideKeys(g, 'Observation'));
      rep.same(`GET ${url1} [${g.name}] included`, included(pages), []);
      pages.forEach((b, i) => rep.ok(outcomeCodes(b).includes('suppressed'), `GET ${url1} [${g.name}] page ${i + 1}: no OperationOutcome with code suppressed (outcome codes: ${outcomeCodes(b).join(',') || 'none'})`));
    }

    // Patient is granted to the patient token (its own Patient only), not to the user token.
    const url2 = '/Observation?_include=Observation:subject&_count=7';
    {
      for (const g of patientGrants()) {
        const pages = await walk(g.agent, url2, rep, g.name);
        if (!pages) continue;
        rep.same(`GET ${url2} [${g.name}] matches`, matches(pages), insideKeys(g, 'Observation'));
        rep.same(`GET ${url2} [${g.name}] included`, [...new Set(included(pages))], [`Patient/${P}`]);
        pages.forEach((b, i) => rep.ok(included([b]).includes(`Patient/${P}`) && !outcomeCodes(b).includes('suppressed'), `GET ${url2} [${g.name}] page ${i + 1}: expected Patient/${P} included and nothing suppressed; included ${included([b]).join(',') || 'none'}, outcome codes ${outcomeCodes(b).join(',') || 'none'}`));
      }
      const u = await walk(userGrant.agent, url2, rep, userGrant.name);
      if (u) {
        rep.same(`GET ${url2} [${userGrant.name}] included`, included(u), []);
        u.forEach((b, i) => rep.ok(outcomeCodes(b).includes('suppressed'), `GET ${url2} [${userGrant.name}] page ${i + 1}: no suppressed outcome`));
      }
    }

    // Several includes from Condition: the subject (granted) stays, encounters (not granted) go.
    const url3 = '/Condition?_include=Condition:subject&_include=Condition:encounter';
    for (const g of patientGrants()) {
      const pages = await walk(g.agent, url3, rep, g.name);
      if (pages) {
        rep.same(`GET ${url3} [${g.name}] matches`, matches(pages), insideKeys(g, 'Condition'));
        rep.same(`GET ${url3} [${g.name}] included`, included(pages), [`Patient/${P}`]);
        rep.ok(pages.some((b) => outcomeCodes(b).includes('suppressed')), `GET ${url3} [${g.name}]: no suppressed outcome`);
      }
    }

    // :iterate walks on from included resources: what it reaches is judged again.
    const url4 = '/Observation?_include=Observation:subject&_revinclude:iterate=Condition:subject&_count=500';
    {
      const f = await fullWalk(url4);
      rep.ok(included(f).filter((k) => k.startsWith('Condition/')).length > insideOf(patientGrant, 'Condition', P).length, `GET ${url4} with the full-access token: expected more Conditions than the grant's`);
      for (const g of patientGrants()) {
        const pages = await walk(g.agent, url4, rep, g.name);
        if (pages) rep.same(`GET ${url4} [${g.name}] included`, included(pages), [`Patient/${P}`, ...insideOf(g, 'Condition', P)]);
      }
    }
    const url5 = `/Observation?_id=${moved.noted}&_include=Observation:encounter&_revinclude:iterate=Observation:encounter`;
    for (const g of grants()) {
      const pages = await walk(g.agent, url5, rep, g.name);
      // The Encounter is withheld, so nothing is reached through it (and certainly nothing outside).
      if (pages) rep.same(`GET ${url5} [${g.name}] included (through a withheld Encounter)`, included(pages).filter((k) => !g.inside(current.get(k) ?? ({ resourceType: '?', id: k } as Res))), []);
    }
    rep.done();
  });

  test('_revinclude: only the referring resources inside the grant are included', async () => {
    const rep = new Report();
    const ofP = (g: Grant, type: string) => insideKeys(g, type).filter((k) => refTo(current.get(k)!.subject, 'Patient', P));
    const url1 = '/Patient?_revinclude=Observation:subject&_revinclude=Condition:subject';
    const f = await fullWalk(url1);
    rep.ok(included(f).length > ofP(patientGrant, 'Observation').length + ofP(patientGrant, 'Condition').length, `GET ${url1} with the full-access token: expected more than the grant's`);
    const url2 = `/Patient?_id=${others[0]}&_revinclude=Observation:subject&_revinclude=Condition:subject`;
    const url3 = `/Patient?_revinclude=Encounter:subject&_revinclude=DiagnosticReport:subject`;
    for (const g of patientGrants()) {
      const pages = await walk(g.agent, url1, rep, g.name);
      if (pages) {
        rep.same(`GET ${url1} [${g.name}] matches`, matches(pages), [`Patient/${P}`]);
        rep.same(`GET ${url1} [${g.name}] included`, included(pages), [...ofP(g, 'Observation'), ...ofP(g, 'Condition')]);
        const codes = pages.flatMap(outcomeCodes);
        rep.ok(codes.includes('suppressed') && !codes.includes('too-costly'), `GET ${url1} [${g.name}]: expected suppressed (the patient's other Observations and Conditions are withheld) and not too-costly; outcome codes ${codes.join(',') || 'none'}`);
      }
      // Another patient: not reachable, so nothing to include from.
      const p2 = await walk(g.agent, url2, rep, g.name);
      if (p2) rep.same(`GET ${url2} [${g.name}]`, [...matches(p2), ...included(p2)], []);
      // Reverse includes of types without a scope: withheld.
      const p3 = await walk(g.agent, url3, rep, g.name);
      if (p3) {
        rep.same(`GET ${url3} [${g.name}]`, [...matches(p3), ...included(p3)], [`Patient/${P}`]);
        rep.ok(p3.flatMap(outcomeCodes).includes('suppressed'), `GET ${url3} [${g.name}]: no suppressed outcome`);
      }
    }
    rep.done();
  });

  test('_has and chains decide only by resources inside the grant (no oracle on what the token may not see)', async () => {
    // The answer under a token should be the answer over the resources that token can see: a _has or a
    // chain evaluated over resources outside the grant tells the token about them (that Patient P has
    // vital-signs Observations, which the token may not read; the gender of a Patient it may not read).
    const rep = new Report();
    const oracle = { extra: 'wrongly matched', extraWhy: 'the match was decided by resources outside the grant', missingWhy: 'should match on visible resources alone' };
    const lab = (r: Res) => r.resourceType === 'Observation' && hasCategory(r, OBS_CAT, 'laboratory');
    const hasScope = `user/Patient.rs user/Observation.rs?category=${LAB}`;
    const hasAgent = authed(t, await tokenFor(t.url, { scope: hasScope }));
    const allPatients = currentOf('Patient').map(key);
    for (const [cat, want] of [
      [VITALS, []],
      [LAB, allPatients],
    ] as const) {
      const url = `/Patient?_has:Observation:subject:category=${enc(cat)}`;
      rep.same(`GET ${url} [full-access token] (sanity)`, matches(await fullWalk(url)), allPatients);
      const pages = await walk(hasAgent, url, rep, hasScope);
      if (pages) rep.same(`GET ${url} [${hasScope}] (visible Observations are all laboratory)`, matches(pages), want, oracle);
    }
    const chainScope = `user/Observation.rs?category=${LAB} user/Patient.rs?_id=${P}`;
    const chainAgent = authed(t, await tokenFor(t.url, { scope: chainScope }));
    const url = '/Observation?subject:Patient.gender=male&_count=500';
    const fullSet = matches(await fullWalk(url));
    rep.ok(fullSet.length > 0 && others.every((o) => fullSet.some((k) => refTo(current.get(k)!.subject, 'Patient', o))), `GET ${url} [full-access token]: expected Observations of every patient (all are male)`);
    const pages = await walk(chainAgent, url, rep, chainScope);
    if (pages) {
      rep.same(
        `GET ${url} [${chainScope}] (only Patient/${P} is visible, so only its laboratory Observations can satisfy the chain)`,
        matches(pages),
        currentOf('Observation')
          .filter((r) => lab(r) && refTo(r.subject, 'Patient', P))
          .map(key),
        oracle,
      );
    }
    rep.done();
  });

  test('a type without a scope is a 403 naming the missing scope', async () => {
    const rep = new Report();
    const enc1 = currentOf('Encounter')[0];
    const encOfP = currentOf('Encounter').find((r) => refTo(r.subject, 'Patient', P))!;
    const readOnly = await tokenFor(t.url, { scope: `patient/Observation.r?category=${LAB}`, patient: P });
    const noPatient = await tokenFor(t.url, { scope: `patient/Observation.rs?category=${LAB}` });
    const labOfP = insideKeys(patientGrant, 'Observation')[0];
    const cases: [string, string, string, RegExp][] = [
      [patientGrant.token, patientGrant.name, '/Encounter', /Encounter\.s\b/],
      [patientGrant.token, patientGrant.name, `/Encounter/${encOfP.id}`, /Encounter\.r\b/],
      [patientGrant.token, patientGrant.name, `/Encounter/${enc1.id}/_history/1`, /Encounter\.r\b/],
      [patientGrant.token, patientGrant.name, '/Encounter/_history', /Encounter\.s\b/],
      [patientGrant.token, patientGrant.name, `/Patient/${P}/Encounter`, /Encounter\.s\b/],
      [patientGrant.token, patientGrant.name, '/DiagnosticReport?_count=1', /DiagnosticReport\.s\b/],
      [patientGrant.token, patientGrant.name, '/?_type=Observation,Encounter', /Encounter\.s\b/],
      [patientGrant.token, patientGrant.name, '/Observation?encounter.status=finished', /Encounter\.s\b/],
      [patientGrant.token, patientGrant.name, '/Patient?_has:Encounter:subject:status=finished', /Encounter\.s\b/],
      [userGrant.token, userGrant.name, '/Condition', /Condition\.s\b/],
      [userGrant.token, userGrant.name, '/Patient', /Patient\.s\b/],
      [userGrant.token, userGrant.name, `/Patient/${P}`, /Patient\.r\b/],
      [userGrant.token, userGrant.name, '/Observation?subject.gender=male', /Patient\.s\b/],
      [readOnly, 'read-only patient token', '/Observation', /Observation\.s\b/],
      [noPatient, 'patient token without a patient claim', '/Observation', /no patient in context/],
    ];
    for (const [token, name, url, scope] of cases) {
      const res = await authed(t, token).get(url);
      if (rep.status(`GET ${url} [${name}]`, res, 403)) {
        const issue = (res.body as Res).issue?.[0];
        rep.ok(issue?.code === 'forbidden' && scope.test(issue.diagnostics ?? ''), `GET ${url} [${name}]: expected code forbidden and diagnostics matching ${scope}; got ${issue?.code}: ${issue?.diagnostics}`);
      }
    }
    // The read-only token still reads what it reaches.
    rep.status(`GET /${labOfP} [read-only patient token]`, await authed(t, readOnly).get(`/${labOfP}`), 200);
    rep.done();
  });
});
