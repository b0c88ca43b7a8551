// Batched writes of the transaction entries that name their resource, PUT [type]/[id] and
// DELETE [type]/[id] (https://hl7.org/fhir/R4/http.html#transaction): the heads of all of them are
// locked in one statement and the new versions written with multi-row statements, with the same
// checks, versions and answers as update and delete give one entry at a time.
import { refuseLedgerChange } from './audit-event-create.js';
import type { Resource } from 'fhir/r4.js';
import type { AuditedTx, NewVersion } from '../storage/resource-store.js';
import type { ParsedEntry } from './bundle-entry.js';
import { parseIfMatch, requireId, requireType, type IfMatch } from './common.js';
import type { InteractionResult, RequestContext, Services } from './context.js';
import { deleted } from './delete.js';
import { checkUpdate, updateResult } from './update.js';
import { checkIfMatch, formerPatientsMany, prepareNext } from './write.js';
import { allow, checkTarget, requireNewVersions, visibleHead, writeLetters } from './authorize.js';
import { FhirError } from '../fhir/errors.js';
import { pace } from '../fhir/pacer.js';
import type { Letter } from '../auth/scopes.js';

/** Whether the entry goes through the batched path (conditional entries and PATCH do not). */
export function isKeyedWrite(e: ParsedEntry): boolean {
  return (e.method === 'PUT' || e.method === 'DELETE') && e.id !== undefined;
}

type Checked = { ifMatch: IfMatch | undefined; resource?: Resource } | { error: unknown };

/**
 * Runs keyed PUT and DELETE entries (given in processing order, each resource at most once) as one
 * step. The first entry that fails, in that order, fails with the error the single-entry path
 * would give it (passed through `fail`); nothing is written unless every entry passes.
 */
export async function writeKeyedEntries(
  svc: Services,
  ctx: RequestContext,
  tx: AuditedTx,
  entries: ParsedEntry[],
  fail: (err: unknown, e: ParsedEntry) => unknown,
): Promise<Map<number, InteractionResult>> {
  // The checks that need no database, in the order update() and remove() make them.
  const checked: Checked[] = [];
  for (const e of entries) {
    await pace();
    try {
      const ifMatch = parseIfMatch(e.ifMatch);
      if (e.method === 'PUT') checked.push({ ifMatch, resource: checkUpdate({ type: e.type, id: e.id!, body: e.resource }) });
      else {
        requireType(e.type);
        requireId(e.id!);
        refuseLedgerChange(e.type, 'delete');
        checked.push({ ifMatch });
      }
    } catch (error) {
      checked.push({ error });
    }
  }
  const heads = await svc.store.lockCurrentMany(
    tx,
    entries.filter((_e, k) => !('error' in checked[k])).map((e) => ({ resourceType: e.type, id: e.id! })),
  );
  // Targets outside the token's reach (interactions/authorize.ts): a PUT is refused, a DELETE answers
  // as for an id that does not exist. Checked in processing order, like everything else here.
  for (const [k, e] of entries.entries()) {
    const head = 'error' in checked[k] ? undefined : heads.get(`${e.type}/${e.id}`);
    if (!head) continue;
    try {
      if (e.method === 'PUT') {
        if (!head.deleted && (await checkTarget(svc, ctx, tx, 'u', e.type, e.id!, head.lastUpdated)) === 'hidden') {
          throw new FhirError('forbidden', `${e.type}/${e.id} cannot be written with this token (the id is not available to it)`);
        }
      } else if (!(await visibleHead(svc, ctx, tx, 'd', e.type, e.id!, head))) {
        // Hidden from the token: answered (If-Match included) as an id that does not exist.
        heads.delete(`${e.type}/${e.id}`);
      }
    } catch (err) {
      throw fail(err, e);
    }
  }
  const out = new Map<number, InteractionResult>();
  const versions: NewVersion[] = [];
  const reach: { version: NewVersion; letters: Letter[]; label: string }[] = [];
  for (const [k, e] of entries.entries()) {
    const type = e.type;
    const id = e.id!;
    try {
      const c = checked[k];
      if ('error' in c) throw c.error;
      const head = heads.get(`${type}/${id}`);
      checkIfMatch(type, id, head, c.ifMatch);
      if (e.method === 'PUT') {
        const creates = !head || head.deleted;
        if (creates) allow(ctx, type, 'c', 'update as create');
        const { version, stored } = await prepareNext(svc, ctx, head, 'PUT', type, id, c.resource);
        versions.push(version);
        reach.push({ version, letters: writeLetters('PUT', creates), label: `entry ${e.index}` });
        out.set(e.index, updateResult(ctx, head, stored));
      } else if (!head) {
        out.set(e.index, deleted(ctx, `${type}/${id} does not exist; nothing to delete`));
      } else if (head.deleted) {
        out.set(e.index, deleted(ctx, `${type}/${id} was already deleted`, head.versionId));
      } else {
        const { version } = await prepareNext(svc, ctx, head, 'DELETE', type, id, undefined);
        versions.push(version);
        out.set(e.index, deleted(ctx, `deleted ${type}/${id}`, version.versionId));
      }
    } catch (err) {
      throw fail(err, e);
    }
  }
  await requireNewVersions(svc, ctx, tx, reach);
  // Deletions: their AuditEvents name the patients of the versions they end (one statement per type).
  const deletions = versions.filter((v) => !v.resource);
  if (deletions.length) {
    const patients = await formerPatientsMany(tx, deletions);
    for (const v of deletions) v.formerPatients = patients.get(`${v.resourceType}/${v.id}`) ?? [];
  }
  await svc.store.writeVersions(tx, versions);
  return out;
}
