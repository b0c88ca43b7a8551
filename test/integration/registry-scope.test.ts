// Registry sync under the scopes it is meant to run with (src/jobs/registry/sync.ts): a registry
// whose Backend Services client is granted exactly DEFAULT_REGISTRY_SCOPE (every other registry test
// grants system/*.cruds, which hid the untyped-chain 403 of pull), and the job's own local principal,
// PUSH_SCOPE or PULL_SCOPE, refused what those scopes do not grant.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import type { Resource as FhirResource } from 'fhir/r4.js';
import type { Principal } from '../../src/auth/principal.js';
import type { Auditor } from '../../src/audit/auditor.js';
import { DEFAULT_REGISTRY_SCOPE } from '../../src/jobs/registry/config.js';
import { JOB_NAME, PULL_SCOPE, PUSH_SCOPE, pullOnce, pushOnce, type SyncOptions } from '../../src/jobs/registry/sync.js';
import { audited, newTrail } from '../../src/interactions/audit.js';
import type { RequestContext, Services } from '../../src/interactions/context.js';
import { create } from '../../src/interactions/create.js';
import { read } from '../../src/interactions/read.js';
import { search } from '../../src/interactions/search.js';
import { update } from '../../src/interactions/update.js';
import { getState } from '../../src/storage/registry-store.js';
import { authed, backends } from '../support/backends.js';
import { allAtRegistry, PATIENT_SYSTEM, seedLocal, startRegistryPair, type RegistryPair } from '../support/registry-pair.js';

const IIS_IMM = 'urn:test:iis-immunization';
// Fresh writes are in the window at once.
const now: SyncOptions = { lagMs: 0 };

type Identifier = { system: string; value: string };
const valueIn = (r: object, system: string) => (((r as { identifier?: unknown }).identifier ?? []) as Identifier[]).find((i) => i.system === system)?.value;

/** What the job did locally, as its AuditEvents were built: who (the principal), what, on which type. */
interface Seen {
  principal: Principal;
  interaction: string;
  type?: string;
}

/**
 * The local server's services, unchanged but for the auditor, which notes the principal of every
 * AuditEvent built: every local interaction of a run is audited (interactions/audit.ts), so this is
 * the principal the run really used, not one rebuilt here.
 */
function watched(svc: Services, seen: Seen[]): Services {
  const audit = Object.create(svc.audit) as Auditor;
  audit.event = (origin, trail, status, description) => {
    seen.push({ principal: origin.principal, interaction: trail.interaction, ...(trail.resourceType ? { type: trail.resourceType } : {}) });
    return svc.audit.event(origin, trail, status, description);
  };
  return { ...svc, audit };
}

describe.each(backends())('registry sync with the default registry scope and the job scopes (%s)', (backend) => {
  let pair: RegistryPair;

  beforeAll(async () => {
    pair = await startRegistryPair(backend, { scope: DEFAULT_REGISTRY_SCOPE });
  }, 120_000);

  afterAll(async () => {
    await pair?.close();
  });

  // What the runs of the first test did locally, for the second.
  const runs: { push: Seen[]; pull: Seen[] } = { push: [], pull: [] };
  let pulledId: string | undefined;
  let patientId: string | undefined;

  test(`a registry granting only "${DEFAULT_REGISTRY_SCOPE}": push and pull complete, each record crosses once, the registry refuses nothing`, async () => {
    const id = 'scope-iis';
    const tag = randomUUID().slice(0, 8);
    // A small page, so the pull's search of the registry is followed through its next links too.
    const registry = pair.registry(id, { pageSize: 2 });
    const client = pair.client({ id });
    const seeded = [await seedLocal(pair.local, `${tag}-a`, 3), await seedLocal(pair.local, `${tag}-b`, 2), await seedLocal(pair.local, `${tag}-c`, 0)];
    const pushedIds = seeded.flatMap((s) => s.immunizations).sort();
    patientId = seeded[0].patient;

    const push = await pushOnce(watched(pair.local.svc, runs.push), registry, client, now);
    // Why a run stopped first (a refusal by the registry is named there), then what it did.
    expect(push.stopped).toBeUndefined();
    expect(push).toMatchObject({ direction: 'push', sent: pushedIds.length, rejected: 0, deadLettered: 0, unmatched: 0, watermarkBefore: null });

    // The registry's own records: for a and b (their Patients made present there by the push) and for
    // c, whose Patient the registry knows without Vesta having sent it.
    // Straight to the registry server (not through the proxy, which is to see only what the sync sends).
    const atRegistry = authed({ url: `${pair.registryServer.url}${new URL(pair.base).pathname}`, token: pair.registryServer.token });
    const registryPatient = async (value: string): Promise<string> => {
      const found = await atRegistry.get('/Patient').query({ identifier: `${PATIENT_SYSTEM}|${value}` });
      expect(found.status).toBe(200);
      const ids = ((found.body as { entry?: { resource: FhirResource }[] }).entry ?? []).map((e) => e.resource.id!);
      if (ids.length) {
        expect(ids).toHaveLength(1);
        return ids[0];
      }
      const made = await atRegistry.post('/Patient').send({ resourceType: 'Patient', identifier: [{ system: PATIENT_SYSTEM, value }], name: [{ family: 'Registry' }] });
      expect(made.status).toBe(201);
      return (made.body as FhirResource).id!;
    };
    const remoteIds: string[] = [];
    for (const [value, n] of [[`${tag}-a`, 2], [`${tag}-c`, 3]] as const) {
      const remote = await registryPatient(value);
      for (let i = 0; i < n; i++) {
        const made = await atRegistry.post('/Immunization').send({
          resourceType: 'Immunization',
          identifier: [{ system: IIS_IMM, value: `${tag}-${value}-${i}` }],
          status: 'completed',
          vaccineCode: { coding: [{ system: 'http://hl7.org/fhir/sid/cvx', code: '08' }] },
          patient: { reference: `Patient/${remote}` },
          occurrenceDateTime: '2024-04-01',
          lotNumber: `IIS-${value}-${i}`,
        });
        expect(made.status).toBe(201);
        remoteIds.push((made.body as FhirResource).id!);
      }
    }
    expect(await registryPatient(`${tag}-b`)).toBeTruthy();

    const pull = await pullOnce(watched(pair.local.svc, runs.pull), registry, client, now);
    expect(pull.stopped).toBeUndefined();
    // The pushed records come back in the search and are passed over as Vesta's own.
    expect(pull).toMatchObject({ direction: 'pull', stored: remoteIds.length, skipped: pushedIds.length, rejected: 0, deadLettered: 0, unmatched: 0, watermarkBefore: null });
    for (const direction of ['push', 'pull'] as const) {
      expect(await getState(pair.local.svc.db.knex, id, direction)).toMatchObject({ lastOutcome: 'completed', lastError: null, runHolder: null });
    }

    // Every local Immunization is at the registry once (the check itself runs under the default scope).
    const sent = await allAtRegistry(client, 'Immunization', { identifier: `${pair.ownSystem}|` });
    expect(sent.map((r) => valueIn(r, pair.ownSystem)).sort()).toEqual(pushedIds);
    // Every registry Immunization is here once, for the right Patient.
    const here = await authed(pair.local).get('/Immunization').query({ identifier: `${pair.base}/Immunization|`, _count: '100' });
    expect(here.status).toBe(200);
    const stored = ((here.body as { entry?: { resource: FhirResource & { patient: { reference: string } } }[] }).entry ?? []).map((e) => e.resource);
    expect(stored.map((r) => valueIn(r, `${pair.base}/Immunization`)).sort()).toEqual([...remoteIds].sort());
    const byPatient = (p: string) => stored.filter((r) => r.patient.reference === `Patient/${p}`).length;
    expect([byPatient(seeded[0].patient), byPatient(seeded[1].patient), byPatient(seeded[2].patient)]).toEqual([2, 0, 3]);
    pulledId = stored[0].id;

    // No request the sync (or the checks) sent was refused; a 403 would say the default scope is short.
    const refused = pair.proxy.seen.filter((s) => s.status >= 400).map((s) => `${s.status} ${s.method} ${s.path}`);
    expect(refused).toEqual([]);
    expect(pair.proxy.count('/auth/token', 'POST')).toBeGreaterThan(0);
    expect(pair.proxy.seen.every((s) => s.path.endsWith('/auth/token') || s.path.includes('/.well-known/') || s.authorized)).toBe(true);
    // Not vacuous: the token really is narrowed to the default scope (no Group search in it).
    await expect(client.search('Group', { _count: '1' })).rejects.toMatchObject({ name: 'RegistryError', code: 'http', status: 403 });
  }, 120_000);

  /** The context a run gives its local interactions (Run.local in sync.ts), for the principal the run used. */
  function contextOf(principal: Principal, interaction: string, type: string): RequestContext {
    return { requestId: randomUUID(), principal, clock: () => new Date(), baseUrl: pair.local.svc.config.baseUrl, audit: newTrail(interaction, type) };
  }

  function principalOf(direction: 'push' | 'pull'): Principal {
    const seen = runs[direction];
    expect(seen.length).toBeGreaterThan(0);
    // One principal for the whole run: the job's, with its direction's scope and no more.
    const scopes = new Set(seen.map((s) => `${s.principal.kind} ${s.principal.clientId} ${s.principal.scope}`));
    expect([...scopes]).toEqual([`job vesta-job:${JOB_NAME} ${direction === 'push' ? PUSH_SCOPE : PULL_SCOPE}`]);
    return seen[0].principal;
  }

  test('the runs used the job principal for every local interaction, with their direction scope: push read, pull searched and updated', () => {
    const kinds = (d: 'push' | 'pull') => [...new Set(runs[d].map((s) => `${s.interaction} ${s.type ?? ''}`.trim()))].sort();
    principalOf('push');
    principalOf('pull');
    expect(kinds('push')).toEqual(expect.arrayContaining(['read Immunization', 'read Patient']));
    expect(kinds('pull')).toEqual(expect.arrayContaining(['search-type Patient', 'update Immunization']));
  });

  const hopeless = (svc: Services) => ({
    // Pull may search Patients and create or update Immunizations: it may not write a Patient.
    'pull creates a Patient': {
      direction: 'pull' as const,
      interaction: 'create',
      type: 'Patient',
      rule: /^create on Patient needs a scope granting "c" \(create\) on Patient, such as .*; the token has none$/,
      run: (ctx: RequestContext) => create(svc, ctx, { type: 'Patient', body: { resourceType: 'Patient', identifier: [{ system: PATIENT_SYSTEM, value: `never-${randomUUID()}` }] } }),
    },
    // ... nor read an Immunization back (search and conditional update only).
    'pull reads an Immunization': {
      direction: 'pull' as const,
      interaction: 'read',
      type: 'Immunization',
      rule: /^read on Immunization needs a scope granting "r" \(read\) on Immunization, such as .*; the token has none$/,
      run: (ctx: RequestContext) => read(svc, ctx, { type: 'Immunization', id: pulledId! }),
    },
    // Push only reads: it may not create an Immunization ...
    'push creates an Immunization': {
      direction: 'push' as const,
      interaction: 'create',
      type: 'Immunization',
      rule: /^create on Immunization needs a scope granting "c" \(create\) on Immunization, such as .*; the token has none$/,
      run: (ctx: RequestContext) =>
        create(svc, ctx, { type: 'Immunization', body: { resourceType: 'Immunization', status: 'completed', vaccineCode: { text: 'never' }, patient: { reference: `Patient/${patientId!}` }, occurrenceDateTime: '2024-05-01' } }),
    },
    // ... nor change a Patient.
    'push updates a Patient': {
      direction: 'push' as const,
      interaction: 'update',
      type: 'Patient',
      rule: /^update on Patient needs a scope granting "u" \(update\) on Patient, such as .*; the token has none$/,
      run: (ctx: RequestContext) => update(svc, ctx, { type: 'Patient', id: patientId!, body: { resourceType: 'Patient', id: patientId!, name: [{ family: 'Never' }] } }),
    },
  });

  test.each(['pull creates a Patient', 'pull reads an Immunization', 'push creates an Immunization', 'push updates a Patient'] as const)(
    'the job principal is held to its scope: %s is refused 403 naming the rule, audited, and writes nothing',
    async (name) => {
      const svc = pair.local.svc;
      const c = hopeless(svc)[name];
      const principal = principalOf(c.direction);
      const count = async (type: string) => ((await authed(pair.local).get(`/${type}`).query({ _summary: 'count' })).body as { total: number }).total;
      const patientVersion = async () => ((await authed(pair.local).get(`/Patient/${patientId!}`)).body as FhirResource).meta!.versionId;
      const before = { patients: await count('Patient'), immunizations: await count('Immunization'), version: await patientVersion() };

      // As the run does it: the interaction inside audited(), with the run's principal.
      const ctx = contextOf(principal, c.interaction, c.type);
      const refused = audited(svc, () => ctx, () => c.run(ctx));
      await expect(refused).rejects.toMatchObject({ name: 'FhirError', code: 'forbidden', status: 403, message: expect.stringMatching(c.rule) });

      // The same principal and path are allowed what its scope grants (the refusal is the scope's).
      const ok = contextOf(principal, c.direction === 'pull' ? 'search-type' : 'read', 'Patient');
      const allowed = await audited(svc, () => ok, () => (c.direction === 'pull' ? search(svc, ok, { type: 'Patient', query: [['_id', patientId!]] }) : read(svc, ok, { type: 'Patient', id: patientId! })));
      expect(allowed.status).toBe(200);

      // Its failure is in the ledger: the job as agent, 403 and the code.
      const rows = ((await svc.db.knex.raw('select canonical from audit_ledger where canonical like ?', [`%${ctx.requestId}%`])) as { rows: { canonical: string }[] }).rows;
      const events = rows.map((r) => JSON.parse(r.canonical) as { outcomeDesc?: string; agent: { who?: { display?: string } }[] });
      expect(events.map((e) => [e.agent[0].who?.display, e.outcomeDesc])).toEqual([[`vesta-job:${JOB_NAME}`, '403 forbidden']]);

      expect({ patients: await count('Patient'), immunizations: await count('Immunization'), version: await patientVersion() }).toEqual(before);
    },
    60_000,
  );
});
