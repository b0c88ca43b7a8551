// Two Vesta servers for registry-sync tests: the local one, and a second one acting as the
// immunization registry (its own database, SMART Backend Services), reached through the
// fault-injecting proxy (registry-proxy.ts) that is its public address.
import { randomUUID } from 'node:crypto';
import { exportJWK, generateKeyPair, type JWK } from 'jose';
import { pino } from 'pino';
import { addClient } from '../../src/auth-server/admin.js';
import { RegistryClient, type Resource, type SearchBundle } from '../../src/jobs/registry/client.js';
import type { RegistryConfig } from '../../src/jobs/registry/config.js';
import { authed, startTestServer, type BackendName, type TestServer } from './backends.js';
import { RegistryProxy } from './registry-proxy.js';

export const PATIENT_SYSTEM = 'urn:test:iis-patient';

export interface RegistryPair {
  proxy: RegistryProxy;
  registryServer: TestServer;
  local: TestServer;
  /** The registry's FHIR base (the proxy's). */
  base: string;
  /** The identifier system of what the local server pushes. */
  ownSystem: string;
  /** A registry client as the sync uses it (Backend Services through the proxy). */
  client(opts?: { requestTimeoutMs?: number; id?: string }): RegistryClient;
  /** A registry's configuration for the scheduler and runs. */
  registry(id: string, over?: Partial<RegistryConfig>): RegistryConfig;
  close(): Promise<void>;
}

export interface RegistryPairOptions {
  /** The scope the registry grants its sync client, and the one the client asks for (default system/*.cruds). */
  scope?: string;
}

export async function startRegistryPair(backend: BackendName, opts: RegistryPairOptions = {}): Promise<RegistryPair> {
  const scope = opts.scope ?? 'system/*.cruds';
  const proxy = await RegistryProxy.start();
  const base = `${proxy.url}/fhir`;
  const registryServer = await startTestServer(backend, { BASE_URL: base });
  proxy.target = registryServer.url;
  const local = await startTestServer(backend);
  const { privateKey, publicKey } = await generateKeyPair('ES384', { extractable: true });
  const kid = `ES384-${randomUUID().slice(0, 8)}`;
  const clientId = 'iis-sync';
  await addClient(
    registryServer.svc.db.knex,
    { client_id: clientId, type: 'confidential-asymmetric', redirect_uris: [], scope, jwks: { keys: [{ ...(await exportJWK(publicKey)), kid, alg: 'ES384', use: 'sig' }] } },
    { allowLoopbackJwksUri: false },
  );
  const jwk: JWK = { ...(await exportJWK(privateKey)), kid, alg: 'ES384' };
  const auth = { type: 'backend-services' as const, tokenUrl: `${base}/auth/token`, clientId, privateKey: jwk, alg: 'ES384', scope };
  return {
    proxy,
    registryServer,
    local,
    base,
    ownSystem: `${local.svc.config.baseUrl}/Immunization`,
    client: (o = {}) =>
      new RegistryClient({ id: o.id ?? 'test-iis', baseUrl: base, auth, requestTimeoutMs: o.requestTimeoutMs ?? 5000, rateLimit: { requests: 10_000, perSeconds: 1 }, pageSize: 50, log: pino({ level: 'silent' }) }),
    registry: (id, over = {}) =>
      ({
        id,
        baseUrl: base,
        auth: { type: 'none' },
        direction: 'both',
        schedule: { everySeconds: 1 },
        pageSize: 50,
        requestTimeoutMs: 5000,
        rateLimit: { requests: 10_000, perSeconds: 1 },
        patientIdentifierSystem: PATIENT_SYSTEM,
        breaker: { failures: 1000, cooldownSeconds: 60 },
        retry: { attempts: 3, baseDelayMs: 5, maxDelayMs: 40 },
        deadLetterAfter: 3,
        ...over,
      }) as RegistryConfig,
    close: async () => {
      await proxy.close();
      await registryServer.close();
      await local.close();
    },
  };
}

/** Every resource of a registry search, through all its pages. */
export async function allAtRegistry(client: RegistryClient, type: string, params: Record<string, string>): Promise<Resource[]> {
  const out: Resource[] = [];
  let page: SearchBundle | undefined = await client.search(type, { ...params, _count: '200' });
  while (page) {
    out.push(...(page.entry ?? []).map((e) => e.resource!).filter((r) => r.resourceType === type));
    page = await client.nextPage(page);
  }
  return out;
}

/** Creates a local Patient with the registry identifier `value` and `n` Immunizations for it (one transaction). */
export async function seedLocal(server: TestServer, value: string, n: number, lotPrefix = 'LOT'): Promise<{ patient: string; immunizations: string[] }> {
  const pid = `urn:uuid:${randomUUID()}`;
  const entry = [
    { fullUrl: pid, resource: { resourceType: 'Patient', identifier: [{ system: PATIENT_SYSTEM, value }], name: [{ family: 'Queue', given: ['Quinn'] }], birthDate: '2019-05-05' }, request: { method: 'POST', url: 'Patient' } },
    ...Array.from({ length: n }, (_, i) => ({
      resource: {
        resourceType: 'Immunization',
        status: 'completed',
        vaccineCode: { coding: [{ system: 'http://hl7.org/fhir/sid/cvx', code: '08' }] },
        patient: { reference: pid },
        occurrenceDateTime: '2024-03-01',
        lotNumber: `${lotPrefix}-${value}-${i}`,
      },
      request: { method: 'POST', url: 'Immunization' },
    })),
  ];
  const r = await authed(server).post('/').send({ resourceType: 'Bundle', type: 'transaction', entry });
  if (r.status !== 200) throw new Error(`seeding answered ${r.status}: ${JSON.stringify(r.body).slice(0, 300)}`);
  const ids = (r.body as { entry: { response: { location: string } }[] }).entry.map((e) => e.response.location.split('/')[1]);
  return { patient: ids[0], immunizations: ids.slice(1) };
}
