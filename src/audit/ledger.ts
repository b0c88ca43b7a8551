// The audit ledger's write side (issue 16): AuditEvents appended as unlinked entries, in the caller's
// transaction when it has one (a write's record commits or rolls back with the write). The sequencer
// links them; verify checks them. What an AuditEvent holds (BALP shape, sealed PHI) is decided by
// the code that builds it; the ledger stores it as given and chains its canonical bytes, beside the
// search columns derived from it (search-columns.ts) that the /AuditEvent API selects by.
import { randomUUID } from 'node:crypto';
import type { Queryable } from '../storage/db.js';
import { insertEntries, type NewEntry } from '../storage/audit-store.js';
import { canonicalDigest, canonicalText } from './chain.js';
import { searchColumns } from './search-columns.js';
import { due, pause } from '../fhir/pacer.js';

export interface LedgerEvent {
  resourceType: 'AuditEvent';
  id?: string;
  recorded: string;
  [k: string]: unknown;
}

export interface AppendOptions {
  /** This server's base URL: absolute references on it are indexed as the relative ones they stand for. */
  baseUrl?: string;
}

/** Appends AuditEvents (ids assigned where missing), with their search columns; returns them as stored. */
export async function appendEvents(q: Queryable, events: LedgerEvent[], opts: AppendOptions = {}): Promise<LedgerEvent[]> {
  const stored = events.map((e) => (e.id ? e : { ...e, id: randomUUID() }));
  // Paced (fhir/pacer.ts): a large Bundle's thousands of records must not hold the event loop.
  const rows: NewEntry[] = [];
  for (const e of stored) {
    if (due()) await pause();
    const canonical = canonicalText(e);
    rows.push({ canonical, digest: canonicalDigest(canonical), columns: searchColumns(e, opts.baseUrl) });
  }
  await insertEntries(q, rows);
  return stored;
}
