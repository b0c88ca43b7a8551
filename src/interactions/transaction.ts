// transaction and batch: POST [base] with a Bundle (https://hl7.org/fhir/R4/http.html#transaction,
// https://hl7.org/fhir/R4/bundle.html#transaction). A transaction is one database transaction:
// all entries succeed or none do; a batch processes each entry on its own.
import { randomUUID } from 'node:crypto';
import type { AuditEvent, Bundle, BundleEntry, OperationOutcome, Resource } from 'fhir/r4.js';
import { FhirError, isFhirError } from '../fhir/errors.js';
import { operationOutcome, outcomeId } from '../fhir/outcome.js';
import { due, pace, pause } from '../fhir/pacer.js';
import { conditionalReferences, rewriteReferences } from '../fhir/references.js';
import { isResourceType } from '../fhir/definitions.js';
import { advisoryXactLocks, type Tx } from '../storage/db.js';
import { audited, auditedTransaction, entryContext, recordedEntries, trailRecorder, type Audited } from './audit.js';
import type { AuditTrail } from '../audit/trail.js';
import { parseEntry, statusText, type ParsedEntry } from './bundle-entry.js';
import { lockKey, onlyOnce, parseIfMatch, writeResult } from './common.js';
import { checkResourceShape } from '../validation/shape.js';
import { prepareNew } from './write.js';
import type { NewVersion } from '../storage/resource-store.js';
import { lockAndMatch } from './conditional.js';
import type { InteractionResult, RequestContext, Services } from './context.js';
import { create } from './create.js';
import { conditionalDelete, deleted, remove } from './delete.js';
import { history } from './history.js';
import { conditionalPatch, patch } from './patch.js';
import { read } from './read.js';
import { search } from './search.js';
import { conditionalUpdate, update } from './update.js';
import { vread } from './vread.js';
import { isKeyedWrite, writeKeyedEntries } from './transaction-writes.js';
import { allow, hopScope, narrowing, requireNewVersions } from './authorize.js';
import { matchScope } from './conditional.js';
import type { Letter } from '../auth/scopes.js';

/**
 * The type-level authorization of one entry (interactions/authorize.ts), before anything runs: the
 * letters its request needs on its type, and "s" on the types of its conditional references.
 */
function authorizeEntry(ctx: RequestContext, e: ParsedEntry): void {
  const need: [Letter, string][] = [];
  const conditional = e.id === undefined;
  switch (e.method) {
    case 'POST':
      if (e.id === '_search') need.push(['s', 'search']);
      else {
        need.push(['c', 'create']);
        if (e.ifNoneExist !== undefined) need.push(['s', 'conditional create (its criteria are a search)']);
      }
      break;
    case 'PUT':
    case 'PATCH':
      need.push(['u', e.method === 'PUT' ? 'update' : 'patch']);
      if (conditional) need.push(['s', `conditional ${e.method === 'PUT' ? 'update' : 'patch'} (its criteria are a search)`]);
      break;
    case 'DELETE':
      need.push(['d', 'delete']);
      if (conditional) need.push(['s', 'conditional delete (its criteria are a search)']);
      break;
    default:
      if (e.id === undefined || e.id === '_history') need.push(['s', e.id === undefined ? 'search' : 'type history']);
      else need.push(['r', e.tail === '_history' && e.vid === undefined ? 'instance history' : e.vid !== undefined ? 'vread' : 'read']);
  }
  for (const [l, what] of need) allow(ctx, e.type, l, what);
  if (e.resource) {
    for (const ref of conditionalReferences(e.resource)) {
      const type = ref.slice(0, ref.indexOf('?'));
      if (isResourceType(type)) allow(ctx, type, 's', 'a conditional reference (its criteria are a search)');
    }
  }
}

/** The restful interaction an entry's request is (its AuditEvent subtype). */
function entryInteraction(e: ParsedEntry): string {
  switch (e.method) {
    case 'POST':
      return e.id === '_search' ? 'search-type' : 'create';
    case 'PUT':
      return 'update';
    case 'PATCH':
      return 'patch';
    case 'DELETE':
      return 'delete';
    default:
      if (e.id === undefined) return 'search-type';
      if (e.id === '_history') return 'history-type';
      if (e.tail === '_history') return e.vid !== undefined ? 'vread' : 'history-instance';
      return 'read';
  }
}

/** Processing order within a transaction (http.html#trules): DELETE, POST, PUT/PATCH, GET/HEAD. */
const ORDER: Record<string, number> = { DELETE: 0, POST: 1, PUT: 2, PATCH: 2, GET: 3, HEAD: 3 };

function patchOps(e: ParsedEntry): unknown {
  const r = e.resource!;
  if (r.resourceType === 'Binary') {
    if (r.contentType !== 'application/json-patch+json' || typeof r.data !== 'string') {
      throw new FhirError('invalid-request', `entry ${e.index}: PATCH needs a Binary with contentType application/json-patch+json`);
    }
    try {
      return JSON.parse(Buffer.from(r.data, 'base64').toString('utf8')) as unknown;
    } catch {
      throw new FhirError('invalid-request', `entry ${e.index}: the Binary does not hold a JSON Patch document`);
    }
  }
  throw new FhirError('unsupported-media-type', `entry ${e.index}: only JSON Patch (as Binary) is supported in Bundles; FHIRPath Patch is not`);
}

/** Runs one entry as the matching interaction. `svc` may be bound to an open transaction. */
async function runEntry(svc: Services, ctx: RequestContext, e: ParsedEntry, assignedId?: string): Promise<InteractionResult> {
  const ifMatch = parseIfMatch(e.ifMatch);
  const opt = ifMatch === undefined ? {} : { ifMatch };
  const pairs = (q?: string): [string, string][] => (q ? [...new URLSearchParams(q)] : []);
  switch (e.method) {
    case 'POST':
      if (e.id === '_search') return search(svc, ctx, { type: e.type, query: pairs(e.query) });
      if (e.id !== undefined) throw new FhirError('not-implemented', `entry ${e.index}: operations are not supported in Bundles`);
      return create(svc, ctx, { type: e.type, body: e.resource, ...(e.ifNoneExist !== undefined && !assignedId ? { ifNoneExist: e.ifNoneExist } : {}), ...(assignedId ? { assignedId } : {}) });
    case 'PUT':
      if (e.id !== undefined) return update(svc, ctx, { type: e.type, id: e.id, body: e.resource, ...opt });
      if (assignedId) return update(svc, ctx, { type: e.type, id: assignedId, body: { ...e.resource, id: assignedId }, ...opt });
      return conditionalUpdate(svc, ctx, { type: e.type, criteria: e.query!, body: e.resource, ...opt });
    case 'PATCH':
      if (e.id !== undefined) return patch(svc, ctx, { type: e.type, id: e.id, body: patchOps(e), ...opt });
      return conditionalPatch(svc, ctx, { type: e.type, criteria: e.query!, body: patchOps(e), ...opt });
    case 'DELETE':
      if (e.id !== undefined) return remove(svc, ctx, { type: e.type, id: e.id, ...opt });
      return conditionalDelete(svc, ctx, { type: e.type, criteria: e.query!, ...opt });
    case 'GET':
    case 'HEAD': {
      if (e.id === undefined) return search(svc, ctx, { type: e.type, query: pairs(e.query) });
      if (e.id === '_history') return history(svc, ctx, { type: e.type, query: pairs(e.query) });
      // _summary and _elements shape a read or vread entry as they do over HTTP.
      const once = (name: string): Record<string, string> => {
        const value = onlyOnce(pairs(e.query), `_${name}`, `entry ${e.index}: `);
        return value === undefined ? {} : { [name]: value };
      };
      if (e.tail === undefined) {
        return read(svc, ctx, { type: e.type, id: e.id, ...(e.ifNoneMatch ? { ifNoneMatch: e.ifNoneMatch } : {}), ...(e.ifModifiedSince ? { ifModifiedSince: e.ifModifiedSince } : {}), ...once('summary'), ...once('elements') });
      }
      if (e.tail === '_history' && e.vid !== undefined) return vread(svc, ctx, { type: e.type, id: e.id, vid: e.vid, ...once('summary'), ...once('elements') });
      if (e.tail === '_history') return history(svc, ctx, { type: e.type, id: e.id, query: pairs(e.query) });
      throw new FhirError('not-implemented', `entry ${e.index}: this request is not supported in Bundles`);
    }
  }
}

function responseEntry(ctx: RequestContext, r: Audited<InteractionResult>, e: ParsedEntry): BundleEntry {
  const h = r.headers ?? {};
  const lastModified = h['Last-Modified'] ? new Date(h['Last-Modified']).toISOString() : undefined;
  const isOutcome = r.body?.resourceType === 'OperationOutcome' && !(e.method === 'GET' && e.type === 'OperationOutcome');
  const resource = r.body && !isOutcome ? r.body : undefined;
  return {
    ...(resource && resource.id ? { fullUrl: `${ctx.baseUrl}/${resource.resourceType}/${resource.id}` } : {}),
    ...(resource ? { resource } : {}),
    response: {
      status: statusText(r.status),
      ...(h.Location ? { location: h.Location.slice(ctx.baseUrl.length + 1) } : {}),
      ...(h.ETag ? { etag: h.ETag } : {}),
      ...(lastModified ? { lastModified } : {}),
      ...(isOutcome ? { outcome: r.body as OperationOutcome } : {}),
    },
  };
}

function failure(e: unknown, entry: ParsedEntry): FhirError {
  const where = `entry ${entry.index}${entry.fullUrl ? ` (${entry.fullUrl.slice(0, 120)})` : ''}`;
  if (isFhirError(e)) return new FhirError(e.code, `${where}: ${e.message}`, { issues: e.issues, cause: e });
  return e as FhirError;
}

function checkBundle(svc: Services, body: unknown): { bundle: Bundle; entries: unknown[] } {
  if (!body || typeof body !== 'object' || Array.isArray(body) || (body as Resource).resourceType !== 'Bundle') {
    throw new FhirError('invalid-resource', 'POST to the base needs a Bundle of type transaction or batch');
  }
  const bundle = body as Bundle;
  if (bundle.type !== 'transaction' && bundle.type !== 'batch') {
    throw new FhirError('invalid-resource', `Bundle.type must be transaction or batch, not ${String(bundle.type).slice(0, 30)}`);
  }
  const entries = (bundle.entry ?? []) as unknown[];
  if (!Array.isArray(entries)) throw new FhirError('invalid-resource', 'Bundle.entry must be an array');
  if (entries.length > svc.config.maxBundleEntries) {
    throw new FhirError('too-large', `the Bundle has ${entries.length} entries; the maximum is ${svc.config.maxBundleEntries}`);
  }
  return { bundle, entries };
}

/** POST [base] with a transaction or batch Bundle. */
export async function transactionOrBatch(svc: Services, ctx: RequestContext, body: unknown): Promise<InteractionResult> {
  const { bundle, entries } = checkBundle(svc, body);
  ctx.audit.interaction = bundle.type;
  return bundle.type === 'batch' ? batch(svc, ctx, entries) : transaction(svc, ctx, entries);
}

async function batch(svc: Services, ctx: RequestContext, raw: unknown[]): Promise<InteractionResult> {
  const out: BundleEntry[] = [];
  for (let i = 0; i < raw.length; i++) {
    await pace();
    // Each entry is an interaction of its own, with its own record (written with its write, or
    // appended before its answer is added), success or failure.
    const ectx = entryContext(ctx, 'batch-entry', undefined, false);
    try {
      let parsed: ParsedEntry | undefined;
      const r = await audited(svc, () => ectx, async () => {
        const e = parseEntry(raw[i], i, ctx.baseUrl);
        parsed = e;
        ectx.audit.interaction = entryInteraction(e);
        ectx.audit.resourceType = e.type;
        if (!isResourceType(e.type)) throw new FhirError('unknown-type', `entry ${i}: unknown resource type`);
        try {
          authorizeEntry(ectx, e);
        } catch (err) {
          throw failure(err, e);
        }
        return runEntry(svc, ectx, e);
      });
      out.push(responseEntry(ctx, r, parsed!));
    } catch (err) {
      const fe = isFhirError(err) ? err : new FhirError('internal', `entry ${i}: internal error (request ${ctx.requestId})`);
      if (!isFhirError(err)) svc.log.error({ requestId: ctx.requestId, entry: i, err: { message: (err as Error)?.message } }, 'batch entry failed');
      out.push({ response: { status: statusText(fe.status), outcome: operationOutcome([{ severity: 'error', code: 'processing', diagnostics: fe.message }, ...fe.issues], outcomeId(fe.code, fe.status)) } });
    }
  }
  const response: Bundle = { resourceType: 'Bundle', type: 'batch-response', entry: out };
  return { status: 200, body: response };
}

async function transaction(svc: Services, ctx: RequestContext, raw: unknown[]): Promise<InteractionResult> {
  // Every per-entry loop below paces itself (fhir/pacer.ts): a Bundle of thousands of entries must not
  // hold the event loop for the whole of one step.
  const entries: ParsedEntry[] = [];
  for (let i = 0; i < raw.length; i++) {
    if (due()) await pause();
    entries.push(parseEntry(raw[i], i, ctx.baseUrl));
  }
  // One record per entry, appended with the Bundle's own in its database transaction (or, if it
  // rolls back, as failures after it).
  const trails: AuditTrail[] = entries.map((e) => ctx.audit.entry(entryInteraction(e), e.type, true));
  const entryCtx = (e: ParsedEntry): RequestContext => ({ ...ctx, audit: trails[e.index] });
  const seenFullUrls = new Set<string>();
  for (const e of entries) {
    if (!isResourceType(e.type)) throw new FhirError('unknown-type', `entry ${e.index}: unknown resource type`);
    if (e.fullUrl) {
      if (seenFullUrls.has(e.fullUrl)) throw new FhirError('invalid-request', `entry ${e.index}: fullUrl ${e.fullUrl.slice(0, 120)} appears twice`);
      seenFullUrls.add(e.fullUrl);
    }
  }
  // Every entry is authorized before anything is written: one forbidden entry refuses the Bundle.
  for (const e of entries) {
    if (due()) await pause();
    try {
      authorizeEntry(ctx, e);
    } catch (err) {
      throw failure(err, e);
    }
  }
  // What each entry's criteria may match: only what the token may search.
  const scopes = new Map<string, ReturnType<typeof matchScope>>();
  const scopeOf = (type: string, what: string) => {
    if (!scopes.has(type)) scopes.set(type, matchScope(svc, ctx, type, what));
    return scopes.get(type)!;
  };
  const parsed = entries;
  // Reference rewrites of an attempt that is retried (serialization failure, deadlock, id collision)
  // are undone first, so the retry resolves every reference afresh.
  const undo: [Record<string, unknown>, string, unknown][] = [];
  // Versions written by the batched paths below go to the trail of the entry that targets them.
  let targetsOfAttempt = new Map<string, number>();
  const entryRecorders = trails.map(trailRecorder);
  const recorder = {
    wrote(v: NewVersion) {
      const i = targetsOfAttempt.get(`${v.resourceType}/${v.id}`);
      if (i !== undefined) entryRecorders[i].wrote(v);
    },
  };
  // Each resource's conditional references, found once (a walk of the resource): they decide whether
  // the Bundle needs lookups, and step 2 resolves them. A retried attempt sees the same ones (the
  // rewrites of an attempt are undone first).
  const conditionalRefs = parsed.map((e) => (e.resource ? conditionalReferences(e.resource) : []));
  // 1-3 below: identities, conditional references and the rewrite of references. They need the
  // database only for conditional entries and conditional references (searches under the lock); a
  // Bundle with neither (plain creates with fresh ids, PUT/PATCH/DELETE by id: a typical ingest) is
  // resolved once, before the transaction, and its creates are validated, indexed and sealed there too
  // (design.md: CPU work before BEGIN), so a retried attempt repeats none of it.
  const resolve = async (tx: Tx | undefined) => {
    const lookup = (): Tx => {
      if (!tx) throw new Error('a conditional entry resolved outside the transaction');
      return tx;
    };
    // Entries resolved in this attempt (conditional patch/delete get their target's id) stay local to it.
    const entries = [...parsed];
    const map = new Map<string, string>();
    const assigned = new Map<number, string>();
    const targets = new Map<string, number>();
    const claim = (e: ParsedEntry, ref: string) => {
      const prev = targets.get(ref);
      if (prev !== undefined) throw new FhirError('invalid-request', `entries ${prev} and ${e.index} resolve to the same resource ${ref}`);
      targets.set(ref, e.index);
    };
    const preExisting = new Map<number, string>();
    // Targets that may already exist (not freshly generated ids): these need the ordered lock.
    const lockTargets = new Set<string>();
    // Conditional deletes whose criteria match nothing: answered as a no-op, as outside a Bundle.
    const unmatchedDeletes = new Set<number>();
    // 1. Resolve identities: server ids for POST, criteria matches for conditional create/update.
    for (const e of entries) {
      try {
        if (e.method === 'POST' && e.id === undefined) {
          let id: string | undefined;
          if (e.ifNoneExist !== undefined) {
            const m = await lockAndMatch(lookup(), e.type, e.ifNoneExist, svc.store.phiIndexMode, scopeOf(e.type, 'conditional create'));
            if (m.length > 1) throw new FhirError('multiple-matches', 'ifNoneExist matches more than one resource');
            if (m.length === 1) {
              id = m[0];
              preExisting.set(e.index, id);
            }
          }
          if (id !== undefined) lockTargets.add(`${e.type}/${id}`);
          id ??= randomUUID();
          assigned.set(e.index, id);
          if (e.fullUrl) map.set(e.fullUrl, `${e.type}/${id}`);
          claim(e, `${e.type}/${id}`);
        } else if (e.method === 'PUT' && e.id === undefined) {
          const m = await lockAndMatch(lookup(), e.type, e.query!, svc.store.phiIndexMode, scopeOf(e.type, 'conditional update'));
          if (m.length > 1) throw new FhirError('multiple-matches', 'the criteria match more than one resource');
          const bodyId = typeof e.resource?.id === 'string' ? e.resource.id : undefined;
          if (m.length === 1 && bodyId !== undefined && bodyId !== m[0]) throw new FhirError('invalid-resource', 'the resource id differs from the matching resource');
          const id = m[0] ?? bodyId ?? randomUUID();
          if (m[0] !== undefined || bodyId !== undefined) lockTargets.add(`${e.type}/${id}`);
          assigned.set(e.index, id);
          if (e.fullUrl) map.set(e.fullUrl, `${e.type}/${id}`);
          claim(e, `${e.type}/${id}`);
        } else if ((e.method === 'PATCH' || e.method === 'DELETE') && e.id === undefined) {
          // Conditional patch and delete resolve here too, so that their targets take part in the
          // overlap rule (bundle.html#transaction: resolved identities of conditional update/delete
          // that overlap fail the transaction) and in the ordered locks; they then run as keyed entries.
          const m = await lockAndMatch(lookup(), e.type, e.query!, svc.store.phiIndexMode, scopeOf(e.type, `conditional ${e.method === 'DELETE' ? 'delete' : 'patch'}`));
          if (m.length > 1) throw new FhirError('multiple-matches', e.method === 'DELETE' ? 'the criteria match more than one resource; only single deletes are supported' : 'the criteria match more than one resource');
          if (m.length === 0) {
            if (e.method === 'PATCH') throw new FhirError('not-found', 'no resource matches the criteria');
            unmatchedDeletes.add(e.index);
            continue;
          }
          entries[e.index] = { ...e, id: m[0] };
          if (e.fullUrl) map.set(e.fullUrl, `${e.type}/${m[0]}`);
          claim(e, `${e.type}/${m[0]}`);
          lockTargets.add(`${e.type}/${m[0]}`);
        } else if ((e.method === 'PUT' || e.method === 'PATCH' || e.method === 'DELETE') && e.id !== undefined) {
          if (e.fullUrl) map.set(e.fullUrl, `${e.type}/${e.id}`);
          claim(e, `${e.type}/${e.id}`);
          lockTargets.add(`${e.type}/${e.id}`);
        }
      } catch (err) {
        throw failure(err, e);
      }
    }
    // 2. Conditional references (Type?criteria) resolve through search: exactly one match.
    for (const e of entries) {
      if (!e.resource) continue;
      if (due()) await pause();
      for (const ref of conditionalRefs[e.index]) {
        if (map.has(ref)) continue;
        const q = ref.indexOf('?');
        const type = ref.slice(0, q);
        try {
          if (!isResourceType(type)) throw new FhirError('invalid-request', 'a conditional reference names an unknown resource type');
          const where = narrowing(svc, ctx, [type], 'conditional reference');
          const m = await lockAndMatch(lookup(), type, ref.slice(q + 1), svc.store.phiIndexMode, { ...(where ? { where } : {}), hops: hopScope(svc, ctx) });
          if (m.length === 0) throw new FhirError('not-found', `the conditional reference to ${type} matches no resource`);
          if (m.length > 1) throw new FhirError('multiple-matches', `the conditional reference to ${type} matches more than one resource`);
          map.set(ref, `${type}/${m[0]}`);
        } catch (err) {
          throw failure(err, e);
        }
      }
    }
    // 3. Rewrite references everywhere in the Bundle's resources.
    if (map.size) {
      for (const e of entries) {
        if (!e.resource) continue;
        if (due()) await pause();
        rewriteReferences(e.resource, map, undo);
      }
    }
    return { entries, map, assigned, targets, preExisting, lockTargets, unmatchedDeletes };
  };
  // Plain creates (fresh server ids) are prepared one by one and written together when the POST stage
  // is reached (before the transaction when the Bundle needs no lookup, else in it).
  const prepareBulk = async (r: Pick<Resolved, 'entries' | 'assigned' | 'preExisting'>): Promise<Map<number, Awaited<ReturnType<typeof prepareNew>>>> => {
    const bulk = new Map<number, Awaited<ReturnType<typeof prepareNew>>>();
    for (const e of r.entries) {
      // AuditEvents are appended to the ledger by create (runEntry), never written as resources.
      if (e.method !== 'POST' || e.id !== undefined || r.preExisting.has(e.index) || e.type === 'AuditEvent') continue;
      try {
        const body = checkResourceShape(e.resource, e.type);
        bulk.set(e.index, await prepareNew(svc, ctx, e.type, r.assigned.get(e.index)!, body));
      } catch (err) {
        throw failure(err, e);
      }
    }
    return bulk;
  };
  type Resolved = Awaited<ReturnType<typeof resolve>>;
  const needsLookup = parsed.some((e) => (e.method === 'POST' && e.id === undefined && e.ifNoneExist !== undefined) || ((e.method === 'PUT' || e.method === 'PATCH' || e.method === 'DELETE') && e.id === undefined) || conditionalRefs[e.index].length > 0);
  const early = needsLookup ? undefined : await resolve(undefined);
  const earlyBulk = early ? await prepareBulk(early) : undefined;
  const results = await auditedTransaction(svc, ctx, async (tx) => {
    // Every interaction below runs on this one transaction (nested calls become savepoints).
    const txSvc: Services = { ...svc, db: { ...svc.db, knex: tx as unknown as typeof svc.db.knex } };
    if (!early) {
      for (let i = undo.length - 1; i >= 0; i--) undo[i][0][undo[i][1]] = undo[i][2];
      undo.length = 0;
    }
    const { entries, assigned, targets, preExisting, lockTargets, unmatchedDeletes } = early ?? (await resolve(tx));
    targetsOfAttempt = targets;
    // Lock every resource this transaction writes, in one global order, before writing any:
    // concurrent transactions over the same resources then queue instead of deadlocking.
    await advisoryXactLocks(tx, [...lockTargets].sort().map((ref) => lockKey(`resource:${ref}`)));
    const out: InteractionResult[] = new Array(entries.length);
    // 4. Execute in the spec's order; answers keep the request order.
    const ordered = [...entries].sort((a, b) => ORDER[a.method] - ORDER[b.method] || a.index - b.index);
    // PUT and DELETE entries with an id are locked, checked and written together when their stage is
    // reached (transaction-writes.ts); the rest runs entry by entry.
    const prepared = earlyBulk ?? (await prepareBulk({ entries, assigned, preExisting }));
    const bulk = new Map<number, NewVersion>();
    for (const [i, { version, stored }] of prepared) {
      bulk.set(i, version);
      out[i] = writeResult(ctx, 201, stored, `created ${version.resourceType}/${version.id}`);
    }
    // Created content must be within the token's reach (one statement for all of them).
    await requireNewVersions(txSvc, ctx, tx, [...bulk].map(([i, version]) => ({ version, letters: ['c'] as Letter[], label: `entry ${i}` })));
    let bulkWritten = false;
    const keyed = new Map<string, ParsedEntry[]>();
    for (const e of ordered) {
      if (!isKeyedWrite(e)) continue;
      const group = keyed.get(e.method) ?? [];
      group.push(e);
      keyed.set(e.method, group);
    }
    for (const e of ordered) {
      if (bulk.has(e.index)) {
        if (!bulkWritten) {
          await svc.store.writeNewBatch(tx, [...bulk.values()]);
          bulkWritten = true;
        }
        continue;
      }
      if (isKeyedWrite(e)) {
        const group = keyed.get(e.method);
        if (group) {
          keyed.delete(e.method);
          for (const [i, r] of await writeKeyedEntries(txSvc, ctx, tx, group, failure)) out[i] = r;
        }
        continue;
      }
      if (unmatchedDeletes.has(e.index)) {
        out[e.index] = deleted(ctx, 'no resource matches the criteria; nothing to delete');
        continue;
      }
      try {
        const existing = preExisting.get(e.index);
        if (existing !== undefined) {
          const r = await read(txSvc, entryCtx(e), { type: e.type, id: existing });
          out[e.index] = { ...r, status: 200 };
        } else out[e.index] = await runEntry(txSvc, entryCtx(e), e, assigned.get(e.index));
      } catch (err) {
        throw failure(err, e);
      }
    }
    return out;
    // Two transactions creating the same new id collide on its primary key; the retry updates it.
  }, {
    retryOnUniqueViolation: true,
    recorder,
    records: async (out: InteractionResult[]) => {
      const events: AuditEvent[] = [];
      for (const [i, t] of trails.entries()) {
        if (due()) await pause();
        events.push(svc.audit.event(ctx, t, out[i].status));
      }
      return [...events, svc.audit.event(ctx, ctx.audit, 200)];
    },
  });
  const answers: BundleEntry[] = [];
  for (const [i, r] of recordedEntries(ctx, results).entries()) {
    if (due()) await pause();
    answers.push(responseEntry(ctx, r, entries[i]));
  }
  const response: Bundle = { resourceType: 'Bundle', type: 'transaction-response', entry: answers };
  return { status: 200, body: response };
}
