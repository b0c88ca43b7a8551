// Every resource of the official R4 examples package round-trips (https://hl7.org/fhir/R4/validation.html):
// stored with its own id through the update interaction (PUT [type]/[id], called directly: the largest
// examples exceed the HTTP body limit) and read back equal apart from meta; the files the
// specification ships invalid (test/fixtures/known-invalid-examples.json, a reason each) are rejected.
// One backend (real PostgreSQL when TEST_DATABASE_URL names one, as in CI; else the embedded one): the
// package holds 5,306 resources, 188 MB, and the embedded database takes several times longer over it.
import { AuditTrail } from '../../src/audit/trail.js';
import { OPEN } from '../../src/auth/principal.js';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type { Resource } from 'fhir/r4.js';
import { isFhirError } from '../../src/fhir/errors.js';
import { findPackageRoot } from '../../src/fhir/package-root.js';
import type { RequestContext } from '../../src/interactions/context.js';
import { create } from '../../src/interactions/create.js';
import { read } from '../../src/interactions/read.js';
import { update } from '../../src/interactions/update.js';
import { concurrencyBackends, startTestServer, type TestServer } from '../support/backends.js';

const dir = dirname(createRequire(import.meta.url).resolve('hl7.fhir.r4.examples/package.json'));
const known = JSON.parse(readFileSync(join(findPackageRoot(), 'test', 'fixtures', 'known-invalid-examples.json'), 'utf8')) as { invalid: Record<string, string> };
const files = readdirSync(dir).filter((f) => f.endsWith('.json') && f !== 'package.json').sort();

function withoutMeta(r: unknown): unknown {
  const { meta, ...rest } = r as Record<string, unknown>;
  void meta;
  return rest;
}

const backend = concurrencyBackends()[0];

describe(`the official R4 examples round-trip (${backend})`, () => {
  let t: TestServer;
  // Called directly, as interactions (each update records its AuditEvent in its transaction).
  const ctx = (): RequestContext => ({ requestId: 'examples', principal: OPEN, clock: () => new Date(), baseUrl: 'http://localhost', preferReturn: 'minimal', audit: new AuditTrail('create') });
  beforeAll(async () => {
    t = await startTestServer(backend);
  });
  afterAll(async () => {
    await t.close();
  });

  test('the known-invalid list names files of the package, each with a reason', () => {
    for (const [f, reason] of Object.entries(known.invalid)) {
      expect([f, files.includes(f)]).toEqual([f, true]);
      expect(reason.length).toBeGreaterThan(20);
    }
  });

  // Chunks keep each test under a few minutes and name the files that misbehave.
  const chunks = 8;
  const size = Math.ceil(files.length / chunks);
  test.each(Array.from({ length: chunks }, (_, i) => [i + 1, files.slice(i * size, (i + 1) * size)] as const))('chunk %i: accepted and read back equal apart from meta, or listed as invalid', async (_n, chunk) => {
    const unexpected: string[] = [];
    for (const f of chunk) {
      const resource = JSON.parse(readFileSync(join(dir, f), 'utf8')) as Resource & { id: string };
      const listed = f in known.invalid;
      const errors = () => t.svc.validator.validate(resource).filter((i) => i.severity === 'error');
      let rejected: string | undefined;
      // AuditEvents are appended to the audit ledger (never PUT): created, then read back by the id given.
      let id = resource.id;
      try {
        if (resource.resourceType === 'AuditEvent') {
          const created = await create(t.svc, { ...ctx(), preferReturn: 'representation' }, { type: 'AuditEvent', body: resource });
          id = String((created.body as Resource).id);
        } else await update(t.svc, ctx(), { type: resource.resourceType, id: resource.id, body: resource });
      } catch (e) {
        if (!isFhirError(e)) throw e;
        rejected = `${e.status} ${e.message}`;
      }
      if (listed) {
        if (!rejected || errors().length === 0) unexpected.push(`${f}: listed as invalid but accepted`);
        continue;
      }
      if (rejected) {
        unexpected.push(`${f}: rejected (${rejected}): ${errors().slice(0, 3).map((i) => `${i.expression?.[0]} ${i.diagnostics}`).join('; ')}`);
        continue;
      }
      const back = await read(t.svc, ctx(), { type: resource.resourceType, id });
      try {
        expect(withoutMeta(back.body)).toEqual(withoutMeta(resource.resourceType === 'AuditEvent' ? { ...resource, id } : resource));
      } catch {
        unexpected.push(`${f}: read back differs`);
      }
    }
    expect(unexpected).toEqual([]);
  }, 600_000);
});
