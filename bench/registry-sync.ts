// Registry sync throughput (issue 17: "`npm run bench` reports Immunizations per second pushed and
// pulled between two local servers"). Two Vestas, each on its own fresh PostgreSQL database: a local
// one and one acting as the immunization registry, which knows the sync's client (SMART Backend
// Services, an ES384 key registered with `addClient`). The sync runs as a worker would: in this
// process, with its own Services on the local database, through a RegistryClient at the registry.
//   push: N local Patients with an identifier in the registry's patient system and k Immunizations
//         each (posted as transaction Bundles, not timed), then pushOnce (lagMs 0) timed; the
//         registry must then hold exactly `sent` more Immunizations carrying the local identifier.
//   ceiling: the same Immunizations PUT to the registry by conditional update on an identifier, with
//         a token of the same client and scope, over one keep-alive connection one after another
//         (what one client doing nothing else gets from the registry), and over SYNC_CONCURRENCY
//         connections (as many requests in flight as the sync keeps). Push also makes one
//         conditional create per Patient (N of them), which the ceilings do not.
//   pull: N registry Patients with the identifiers of N local ones and M Immunizations, posted to the
//         registry directly; then pullOnce timed; Vesta must then hold exactly `stored` more.
// Each pull round has its own registry id and patient system, so it sees only its own Patients and
// starts from no watermark; all push rounds run before the pull rounds, so no push sees a pulled
// record. An unmeasured warm-up of each direction (JIT, validators, the client's token) comes first. Sizes:
// BENCH_REGISTRY_IMMUNIZATIONS per direction (default 2,000), split evenly over BENCH_ROUNDS rounds,
// 4 per Patient; figures are medians of the rounds. Seeding and checks are not timed.
import { randomBytes, randomUUID } from 'node:crypto';
import type { ChildProcess } from 'node:child_process';
import { Agent } from 'node:http';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { addClient } from '../src/auth-server/admin.js';
import { loadConfig } from '../src/config/config.js';
import type { Services } from '../src/interactions/context.js';
import { RegistryClient, type Resource } from '../src/jobs/registry/client.js';
import { pullOnce, pushOnce, type SyncReport } from '../src/jobs/registry/sync.js';
import { createLogger } from '../src/log/logger.js';
import { buildServices } from '../src/server.js';
import { openDatabase } from '../src/storage/db.js';
import { httpCall, median, procCpuMs } from './load.js';

export interface RegistryBenchDeps {
  start(port: number, env: Record<string, string>): { child: ChildProcess };
  /** The environment `start(port, env)` gives the server: the in-process sync's Services use the same. */
  env(port: number, env: Record<string, string>): Record<string, string>;
  waitReady(url: string, timeoutMs: number): Promise<number>;
  /** A system/*.cruds token of the run's signing ring for the Vesta on `port` (seeding and counting only). */
  bearer(port: number): Promise<Record<string, string>>;
  stop(child: ChildProcess): Promise<void>;
  /** A fresh database; drop() removes it. */
  database(suffix: string): Promise<{ url: string; drop(): Promise<void> }>;
  /** Immunizations per direction in the whole phase, split evenly over the rounds. */
  immunizations: number;
  rounds: number;
  log(m: string): void;
}

export interface RegistryRound {
  immunizations: number;
  seconds: number;
  perSecond: number;
  report?: Omit<SyncReport, 'watermarkBefore' | 'watermarkAfter'>;
  /** How many more the other side holds after the run (the check). */
  held: number;
  /** Requests the sync made to the registry, and the seconds during which at least one was in flight (the rest is local work only). */
  registryCalls?: number;
  registrySeconds?: number;
  /** CPU ms per Immunization of the registry server's process and, for push and pull, of the sync (this process); Linux /proc only. */
  registryCpuMs?: number;
  syncCpuMs?: number;
}


/** CPU ms per Immunization spent by the registry server and by this process while `body` ran. */
async function withCpu<T>(registryPid: number | undefined, n: number, body: () => Promise<T>): Promise<{ value: T; registryCpuMs?: number; syncCpuMs: number }> {
  const r0 = procCpuMs(registryPid);
  const s0 = process.cpuUsage();
  const value = await body();
  const s = process.cpuUsage(s0);
  const rEnd = procCpuMs(registryPid);
  return { value, ...(r0 !== undefined && rEnd !== undefined ? { registryCpuMs: r3((rEnd - r0) / n) } : {}), syncCpuMs: r3((s.user + s.system) / 1000 / n) };
}

type Timed = { calls: number; ms: number; inFlight: number; since: number };
const timed = (): Timed => ({ calls: 0, ms: 0, inFlight: 0, since: 0 });
const CALLS = ['read', 'search', 'nextPage', 'conditionalCreate', 'conditionalUpdate', 'delete', 'request'] as const;

/** The client with each call counted into `t`, and the time with at least one call in flight (the sync runs several at once). */
function timedClient(client: RegistryClient, t: Timed): RegistryClient {
  const wrapped = Object.create(client) as Record<(typeof CALLS)[number], (...a: unknown[]) => Promise<unknown>>;
  for (const name of CALLS) {
    const real = (client[name] as (...a: unknown[]) => Promise<unknown>).bind(client);
    wrapped[name] = async (...a: unknown[]) => {
      if (t.inFlight++ === 0) t.since = performance.now();
      let made = true;
      try {
        const out = await real(...a);
        // nextPage on a last page answers undefined without a request.
        made = !(name === 'nextPage' && out === undefined);
        return out;
      } finally {
        if (made) t.calls++;
        if (--t.inFlight === 0) t.ms += performance.now() - t.since;
      }
    };
  }
  return wrapped as unknown as RegistryClient;
}

export interface Direction {
  perSecond: number;
  /** Medians over the rounds: registry requests per Immunization, and the share of the run with one in flight. */
  registryCallsPerImmunization: number;
  registryShare: number;
  registryCpuMs?: number;
  syncCpuMs?: number;
  rounds: RegistryRound[];
}

export interface RegistryBenchResult {
  immunizationsPerDirection: number;
  immunizationsPerRound: number;
  patientsPerRound: number;
  perPatient: number;
  rounds: number;
  warmUpImmunizations: number;
  client: string;
  push: Direction;
  pull: Direction;
  concurrency: number;
  ceiling: { what: string; perSecond: number; registryCpuMs?: number; rounds: RegistryRound[] };
  ceilingConcurrent: { what: string; perSecond: number; registryCpuMs?: number; rounds: RegistryRound[] };
  /** push and pull over the sequential ceiling, and over the concurrent one. */
  ratios: { push: number; pull: number; pushConcurrent: number; pullConcurrent: number };
  /** Every check that failed (empty when the counts were exact). */
  failures: string[];
}

const PORT = { registry: 18320 + Number(process.env.BENCH_PORT_OFFSET ?? 0), local: 18321 + Number(process.env.BENCH_PORT_OFFSET ?? 0) };
const PER_PATIENT = 4;
/** Records the sync handles at once: SyncOptions.concurrency, passed explicitly (its default, 8) so the concurrent ceiling matches it. */
const SYNC_CONCURRENCY = 8;
const WARM = 40;
const BUNDLE_PATIENTS = 50;
const CLIENT_ID = 'vesta-bench-registry';
const IIS_IMMUNIZATION = 'urn:bench:iis-immunization';
// Not the registry file's default scope (DEFAULT_REGISTRY_SCOPE, system/Immunization.cruds
// system/Patient.crus): the pull's untyped chain Immunization?patient.identifier= needs "s" on every
// target of Immunization's `patient` parameter (Patient and Group, R4 clinical-patient) at a registry
// enforcing SMART scopes as Vesta does, and with the default scope every pull stops on a 403.
const SCOPE = 'system/Immunization.cruds system/Patient.cruds system/Group.s';
const r1 = (x: number) => Math.round(x * 10) / 10;
const r3 = (x: number) => Math.round(x * 1000) / 1000;

/** Medians of the rounds' CPU ms per Immunization, when measured. */
function cpuMedians(rounds: RegistryRound[]): { registryCpuMs?: number; syncCpuMs?: number } {
  const of = (k: 'registryCpuMs' | 'syncCpuMs') => (rounds.every((x) => x[k] !== undefined) ? { [k]: r3(median(rounds.map((x) => x[k]!))) } : {});
  return { ...of('registryCpuMs'), ...of('syncCpuMs') };
}

function direction(perSecond: number, rounds: RegistryRound[]): Direction {
  return {
    perSecond: r1(perSecond),
    registryCallsPerImmunization: r3(median(rounds.map((x) => (x.registryCalls ?? 0) / x.immunizations))),
    registryShare: r3(median(rounds.map((x) => (x.registrySeconds ?? 0) / x.seconds))),
    ...cpuMedians(rounds),
    rounds,
  };
}

function immunization(patientRef: string, lot: string, extra: Record<string, unknown> = {}) {
  return {
    resourceType: 'Immunization',
    status: 'completed',
    vaccineCode: { coding: [{ system: 'http://hl7.org/fhir/sid/cvx', code: '08', display: 'Hep B, adolescent or pediatric' }] },
    patient: { reference: patientRef },
    occurrenceDateTime: '2024-03-01',
    primarySource: true,
    lotNumber: lot,
    ...extra,
  };
}

function patient(system: string, value: string, family: string) {
  return { resourceType: 'Patient', name: [{ family, given: ['Sync'] }], gender: 'female', birthDate: '2018-04-02', identifier: [{ system, value }] };
}

type Seeded = { patients: { value: string }[]; immunizations: { id: string; body: Record<string, unknown>; patientValue: string }[] };

/**
 * Posts `patients` Patients (identifier `system|value`) with `perPatient` Immunizations each as
 * transaction Bundles; returns the Immunizations' ids with the bodies sent.
 */
async function seed(agent: Agent, base: URL, headers: Record<string, string>, o: { system: string; tag: string; patients: number; perPatient: number; total: number; immunizationExtra?: (i: number) => Record<string, unknown> }): Promise<Seeded> {
  const out: Seeded = { patients: [], immunizations: [] };
  let made = 0;
  for (let p0 = 0; p0 < o.patients; p0 += BUNDLE_PATIENTS) {
    const entry: { fullUrl: string; resource: Record<string, unknown>; request: { method: string; url: string } }[] = [];
    const imms: { body: Record<string, unknown>; patientValue: string }[] = [];
    for (let p = p0; p < Math.min(o.patients, p0 + BUNDLE_PATIENTS); p++) {
      const value = `${o.tag}-p${p}`;
      const urn = `urn:uuid:${randomUUID()}`;
      out.patients.push({ value });
      entry.push({ fullUrl: urn, resource: patient(o.system, value, `Bench${p}`), request: { method: 'POST', url: 'Patient' } });
      for (let k = 0; k < o.perPatient && made < o.total; k++, made++) {
        const body = immunization(urn, `${o.tag}-LOT-${made}`, o.immunizationExtra?.(made) ?? {});
        imms.push({ body, patientValue: value });
        entry.push({ fullUrl: `urn:uuid:${randomUUID()}`, resource: body, request: { method: 'POST', url: 'Immunization' } });
      }
    }
    const r = await httpCall(agent, base, 'POST', '/', { resourceType: 'Bundle', type: 'transaction', entry }, { Prefer: 'return=minimal', ...headers });
    if (r.status !== 200) throw new Error(`registry bench: seeding ${base.port} answered ${r.status}: ${r.body.slice(0, 300)}`);
    const answered = (JSON.parse(r.body) as { entry: { response: { location?: string } }[] }).entry;
    let j = 0;
    entry.forEach((e, i) => {
      if (e.resource.resourceType !== 'Immunization') return;
      const id = /^Immunization\/([^/]+)/.exec(answered[i]?.response.location ?? '')?.[1];
      if (!id) throw new Error(`registry bench: no location for a seeded Immunization (${answered[i]?.response.location})`);
      out.immunizations.push({ id, ...imms[j++] });
    });
  }
  return out;
}

/** Bundle.total of `[type]?identifier=<system>|&_summary=count`: resources with any identifier in the system. */
async function count(agent: Agent, base: URL, headers: Record<string, string>, type: string, system: string): Promise<number> {
  const r = await httpCall(agent, base, 'GET', `/${type}?identifier=${encodeURIComponent(`${system}|`)}&_summary=count`, undefined, headers);
  if (r.status !== 200) throw new Error(`registry bench: counting ${type} at ${base.port} answered ${r.status}: ${r.body.slice(0, 300)}`);
  const total = (JSON.parse(r.body) as { total?: number }).total;
  if (typeof total !== 'number') throw new Error(`registry bench: counting ${type} at ${base.port}: no total`);
  return total;
}

export async function registryBench(d: RegistryBenchDeps): Promise<RegistryBenchResult> {
  // The phase's Immunizations per direction, split over the rounds (a round of 2,000 each way takes minutes).
  const total = Math.ceil(d.immunizations / d.rounds);
  const nPatients = Math.ceil(total / PER_PATIENT);
  const regBase = `http://127.0.0.1:${PORT.registry}`;
  const localBase = `http://127.0.0.1:${PORT.local}`;
  const reg = new URL(regBase);
  const loc = new URL(localBase);
  const run = randomBytes(3).toString('hex');
  const failures: string[] = [];
  const children: ChildProcess[] = [];
  const dbs: { drop(): Promise<void> }[] = [];
  const agent = new Agent({ keepAlive: true, maxSockets: 4 });
  // The ceilings' connections: one, and as many as the sync has records in flight.
  const one = new Agent({ keepAlive: true, maxSockets: 1 });
  const many = new Agent({ keepAlive: true, maxSockets: SYNC_CONCURRENCY });
  let svc: Services | undefined;
  try {
    const regDb = await d.database('registry_iis');
    dbs.push(regDb);
    const locDb = await d.database('registry_local');
    dbs.push(locDb);
    const env = { registry: { DATABASE_URL: regDb.url, DATABASE_POOL_MAX: '10' }, local: { DATABASE_URL: locDb.url, DATABASE_POOL_MAX: '10' } };
    const registryChild = d.start(PORT.registry, env.registry).child;
    children.push(registryChild, d.start(PORT.local, env.local).child);
    await d.waitReady(`${regBase}/readyz`, 60000);
    await d.waitReady(`${localBase}/readyz`, 60000);
    const regH = await d.bearer(PORT.registry);
    const locH = await d.bearer(PORT.local);

    // The registry knows the sync's client by its public key (SMART Backend Services).
    const { privateKey, publicKey } = await generateKeyPair('ES384', { extractable: true });
    const kid = `bench-${randomBytes(4).toString('hex')}`;
    const regKnex = openDatabase({ databaseUrl: regDb.url, poolMax: 1 });
    try {
      await addClient(regKnex.knex, { client_id: CLIENT_ID, type: 'confidential-asymmetric', redirect_uris: [], scope: SCOPE, jwks: { keys: [{ ...(await exportJWK(publicKey)), kid, alg: 'ES384', use: 'sig' }] } }, { allowLoopbackJwksUri: false });
    } finally {
      await regKnex.close();
    }
    const tokenUrl = `${regBase}/auth/token`;
    // The registry file's defaults (config.ts) but the rate limit, which would cap every figure at 10 requests/s.
    const settings = { pageSize: 100, retry: { attempts: 5, baseDelayMs: 500, maxDelayMs: 60000 }, deadLetterAfter: 5, breaker: { failures: 5, cooldownSeconds: 60 } };
    const client = new RegistryClient({
      id: 'bench-iis',
      baseUrl: regBase,
      auth: { type: 'backend-services', tokenUrl, clientId: CLIENT_ID, privateKey: { ...(await exportJWK(privateKey)), kid, alg: 'ES384' }, alg: 'ES384', scope: SCOPE },
      requestTimeoutMs: 10000,
      rateLimit: { requests: 10000, perSeconds: 1 },
      pageSize: settings.pageSize,
      log: createLogger('silent'),
    });

    // The worker: Services of its own on the local database, configured as the local server is.
    svc = await buildServices(loadConfig(d.env(PORT.local, env.local)), createLogger('silent'));
    const ownSystem = `${svc.config.baseUrl}/Immunization`;
    if (svc.config.baseUrl !== localBase) throw new Error(`registry bench: the worker's BASE_URL is ${svc.config.baseUrl}, not ${localBase}`);
    const pushRegistry = { id: 'bench-push', baseUrl: regBase, patientIdentifierSystem: `urn:bench:iis-patient:${run}:push`, ...settings };

    /** A token of the same client and scope for the ceiling's PUTs, as the sync's client gets one (fetched per round: tokens expire). */
    const ceilingHeaders = async (): Promise<Record<string, string>> => {
      const assertion = await new SignJWT({})
        .setProtectedHeader({ alg: 'ES384', kid, typ: 'JWT' })
        .setIssuer(CLIENT_ID)
        .setSubject(CLIENT_ID)
        .setAudience(tokenUrl)
        .setJti(randomBytes(16).toString('base64url'))
        .setIssuedAt()
        .setExpirationTime('4m')
        .sign(privateKey);
      const form = new URLSearchParams({ grant_type: 'client_credentials', scope: SCOPE, client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: assertion });
      const tr = await fetch(tokenUrl, { method: 'POST', headers: { 'Content-Type': 'application/x-www-form-urlencoded' }, body: form });
      if (tr.status !== 200) throw new Error(`registry bench: the token endpoint answered ${tr.status}: ${(await tr.text()).slice(0, 300)}`);
      return { Authorization: `Bearer ${((await tr.json()) as { access_token: string }).access_token}` };
    };

    /** The registry's Patient id of each identifier value in `system` (after a push made them present). */
    const remotePatients = async (system: string): Promise<Map<string, string>> => {
      const ids = new Map<string, string>();
      let page = await client.search('Patient', { identifier: `${system}|`, _count: 500, _elements: 'identifier' });
      for (;;) {
        for (const e of page.entry ?? []) {
          const p = e.resource as Resource & { identifier?: { system?: string; value?: string }[] };
          const v = p.identifier?.find((i) => i.system === system)?.value;
          if (v && p.id) ids.set(v, p.id);
        }
        const next = await client.nextPage(page);
        if (!next) return ids;
        page = next;
      }
    };

    /** One push round of `size` Immunizations, then the ceiling over the same Immunizations. */
    const pushRound = async (tag: string, size: number): Promise<{ push: RegistryRound; ceiling: RegistryRound; ceilingConcurrent: RegistryRound }> => {
      const seeded = await seed(agent, loc, locH, { system: pushRegistry.patientIdentifierSystem, tag: `${run}-${tag}`, patients: Math.ceil(size / PER_PATIENT), perPatient: PER_PATIENT, total: size });
      const before = await count(agent, reg, regH, 'Immunization', ownSystem);
      const calls = timed();
      const t0 = performance.now();
      const { value: report, ...cpu } = await withCpu(registryChild.pid, size, () => pushOnce(svc!, pushRegistry, timedClient(client, calls), { lagMs: 0, concurrency: SYNC_CONCURRENCY }));
      const seconds = (performance.now() - t0) / 1000;
      const held = (await count(agent, reg, regH, 'Immunization', ownSystem)) - before;
      const { watermarkBefore: _b, watermarkAfter: _a, ...rest } = report;
      const push = { immunizations: size, seconds: r3(seconds), perSecond: r1(report.sent / seconds), report: rest, held, registryCalls: calls.calls, registrySeconds: r3(calls.ms / 1000), ...cpu };
      if (report.sent !== size || held !== size || report.rejected || report.stopped) {
        failures.push(`push ${tag}: ${size} seeded, sent ${report.sent}, the registry holds ${held} more, rejected ${report.rejected}${report.stopped ? `, stopped: ${report.stopped}` : ''}`);
      }

      // Ceilings: the same bodies as the sync sends (patient: the registry's Patient), under an identifier of their own.
      const ids = await remotePatients(pushRegistry.patientIdentifierSystem);
      const ceilingRun = async (name: string, via: Agent, lanes: number): Promise<RegistryRound> => {
        const system = `urn:bench:ceiling:${run}:${tag}:${name}`;
        const bodies = seeded.immunizations.map((x) => {
          const rid = ids.get(x.patientValue);
          if (!rid) throw new Error(`registry bench: the registry has no Patient for ${x.patientValue} after the push`);
          return { criteria: `${system}|${x.id}`, body: { ...x.body, identifier: [{ system, value: x.id }], patient: { reference: `Patient/${rid}` } } };
        });
        const h = await ceilingHeaders();
        let created = 0;
        let firstBad = '';
        let next = 0;
        const c0 = performance.now();
        const r0 = procCpuMs(registryChild.pid);
        await Promise.all(
          Array.from({ length: lanes }, async () => {
            while (next < bodies.length) {
              const b = bodies[next++];
              const r = await httpCall(via, reg, 'PUT', `/Immunization?identifier=${encodeURIComponent(b.criteria)}`, b.body, { Prefer: 'return=representation', ...h });
              if (r.status === 201) created++;
              else firstBad ||= `${r.status} ${r.body.slice(0, 200)}`;
            }
          }),
        );
        const cs = (performance.now() - c0) / 1000;
        const rc = procCpuMs(registryChild.pid);
        const held = await count(agent, reg, regH, 'Immunization', system);
        if (created !== size || held !== size) failures.push(`ceiling ${tag} (${name}): ${size} PUT, ${created} created, the registry holds ${held}${firstBad ? `; first other answer: ${firstBad}` : ''}`);
        return { immunizations: size, seconds: r3(cs), perSecond: r1(created / cs), held, ...(r0 !== undefined && rc !== undefined ? { registryCpuMs: r3((rc - r0) / size) } : {}) };
      };
      const ceiling = await ceilingRun('seq', one, 1);
      const ceilingConcurrent = await ceilingRun(`c${SYNC_CONCURRENCY}`, many, SYNC_CONCURRENCY);
      return { push, ceiling, ceilingConcurrent };
    };

    /** One pull round: its own registry id and patient system, so it starts from no watermark and sees only its Patients. */
    const pullRound = async (tag: string, size: number): Promise<RegistryRound> => {
      const registry = { id: `bench-pull-${tag}`, baseUrl: regBase, patientIdentifierSystem: `urn:bench:iis-patient:${run}:pull-${tag}`, ...settings };
      const patients = Math.ceil(size / PER_PATIENT);
      // The registry's Patients and Immunizations, posted to it directly; Vesta's Patients with the same identifiers.
      await seed(agent, reg, regH, { system: registry.patientIdentifierSystem, tag: `${run}-${tag}`, patients, perPatient: PER_PATIENT, total: size, immunizationExtra: (i) => ({ identifier: [{ system: IIS_IMMUNIZATION, value: `${run}-${tag}-${i}` }] }) });
      await seed(agent, loc, locH, { system: registry.patientIdentifierSystem, tag: `${run}-${tag}`, patients, perPatient: 0, total: 0 });
      const theirs = `${regBase}/Immunization`;
      const before = await count(agent, loc, locH, 'Immunization', theirs);
      const calls = timed();
      const t0 = performance.now();
      const { value: report, ...cpu } = await withCpu(registryChild.pid, size, () => pullOnce(svc!, registry, timedClient(client, calls), { lagMs: 0, concurrency: SYNC_CONCURRENCY }));
      const seconds = (performance.now() - t0) / 1000;
      const held = (await count(agent, loc, locH, 'Immunization', theirs)) - before;
      const { watermarkBefore: _b, watermarkAfter: _a, ...rest } = report;
      if (report.stored !== size || held !== size || report.rejected || report.unmatched || report.stopped) {
        failures.push(`pull ${tag}: ${size} at the registry, stored ${report.stored}, Vesta holds ${held} more, rejected ${report.rejected}, unmatched ${report.unmatched}${report.stopped ? `, stopped: ${report.stopped}` : ''}`);
      }
      return { immunizations: size, seconds: r3(seconds), perSecond: r1(report.stored / seconds), report: rest, held, registryCalls: calls.calls, registrySeconds: r3(calls.ms / 1000), ...cpu };
    };

    const push: RegistryRound[] = [];
    const ceiling: RegistryRound[] = [];
    const ceilingConcurrent: RegistryRound[] = [];
    const pull: RegistryRound[] = [];
    d.log(`bench: registry push warm-up (${WARM} Immunizations)\n`);
    await pushRound('warm', WARM);
    for (let r = 0; r < d.rounds; r++) {
      const x = await pushRound(`r${r + 1}`, total);
      push.push(x.push);
      ceiling.push(x.ceiling);
      ceilingConcurrent.push(x.ceilingConcurrent);
      d.log(`bench: registry push round ${r + 1}: ${x.push.perSecond} Immunizations/s (${x.push.report?.sent} sent in ${x.push.seconds} s); ceilings ${x.ceiling.perSecond}/s sequential, ${x.ceilingConcurrent.perSecond}/s at ${SYNC_CONCURRENCY}\n`);
    }
    // After every push round: a pushed record never meets a pulled one.
    d.log(`bench: registry pull warm-up (${WARM} Immunizations)\n`);
    await pullRound('warm', WARM);
    for (let r = 0; r < d.rounds; r++) {
      const x = await pullRound(`r${r + 1}`, total);
      pull.push(x);
      d.log(`bench: registry pull round ${r + 1}: ${x.perSecond} Immunizations/s (${x.report?.stored} stored in ${x.seconds} s)\n`);
    }
    const pushed = median(push.map((x) => x.perSecond));
    const pulled = median(pull.map((x) => x.perSecond));
    const ceil = median(ceiling.map((x) => x.perSecond));
    const ceilC = median(ceilingConcurrent.map((x) => x.perSecond));
    return {
      immunizationsPerDirection: total * d.rounds,
      immunizationsPerRound: total,
      patientsPerRound: nPatients,
      perPatient: PER_PATIENT,
      rounds: d.rounds,
      warmUpImmunizations: WARM,
      client: `RegistryClient, SMART Backend Services (ES384), scope ${SCOPE}; registry-file defaults (pageSize ${settings.pageSize}, retry ${settings.retry.attempts} attempts) but rateLimit 10000/s (default 10/s); sync in the bench process with its own Services on the local database; lagMs 0, concurrency ${SYNC_CONCURRENCY}`,
      concurrency: SYNC_CONCURRENCY,
      push: direction(pushed, push),
      pull: direction(pulled, pull),
      ceiling: { what: 'conditional-update PUTs of the same Immunizations to the registry, one after another over one keep-alive connection, a token of the same client and scope', perSecond: r1(ceil), ...cpuMedians(ceiling), rounds: ceiling },
      ceilingConcurrent: { what: `the same PUTs over ${SYNC_CONCURRENCY} keep-alive connections`, perSecond: r1(ceilC), ...cpuMedians(ceilingConcurrent), rounds: ceilingConcurrent },
      ratios: { push: r3(pushed / ceil), pull: r3(pulled / ceil), pushConcurrent: r3(pushed / ceilC), pullConcurrent: r3(pulled / ceilC) },
      failures,
    };
  } finally {
    agent.destroy();
    one.destroy();
    many.destroy();
    if (svc) {
      svc.auth.close();
      await svc.audit.drain();
      await svc.db.close();
    }
    for (const c of children) await d.stop(c);
    for (const db of dbs) await db.drop();
  }
}
