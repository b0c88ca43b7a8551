// The audit path (issue 16, design.md "Audit ledger"): turns what an interaction touched (trail.ts)
// and how it ended into a BALP AuditEvent (balp.ts), seals its PHI-bearing elements with the PHI
// codec like any resource, and appends it to the ledger: in the write's own database transaction
// (appendInTx), or through the group appender for reads and failures (appendNow, durable when it
// resolves). The sealed form is what the chain covers: verification needs no PHI key.
import type { AuditEvent } from 'fhir/r4.js';
import type { Logger } from 'pino';
import type { PhiCodec } from '../crypto/phi-codec.js';
import type { Principal } from '../auth/principal.js';
import type { Queryable } from '../storage/db.js';
import { buildAuditEvent, type AuditFacts } from './balp.js';
import { GroupAppender } from './group-append.js';
import { appendEvents, type LedgerEvent } from './ledger.js';
import type { AuditTrail } from './trail.js';
import { due, pause } from '../fhir/pacer.js';

/** Extension of a stored AuditEvent holding its sealed elements (one compact JWE). */
export const SEALED_EXTENSION = 'https://vesta.dev/fhir/StructureDefinition/sealed-elements';

/** Who and where: the parts of a request the record names. */
export interface AuditOrigin {
  principal: Principal;
  requestId: string;
  clock: () => Date;
  /** Network address of the client, when known. */
  address?: string;
}

/** Longest string a record keeps of what a request says about itself (a client id, a user name, a path segment). */
const MAX_STRING = 256;
/** Longest query a record keeps (a POST _search body can be megabytes). */
const MAX_QUERY = 8192;
const BAD = /[\u0000-\u001f\u007f]|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const BAD_ALL = new RegExp(BAD.source, 'g');

/**
 * A string a request says about itself (a client_id, a user name, a path segment, a parameter name),
 * made storable and bounded: NUL and lone surrogates, which PostgreSQL's jsonb refuses, are replaced.
 * A record must never fail to append because of what it records. Every string of a record that does
 * not come from the configuration or a validated id passes here (the query itself goes in base64).
 */
const bounded = (s: string, max = MAX_STRING): string => {
  const b = s.length > max ? `${s.slice(0, max)}…` : s;
  return BAD.test(b) ? b.replace(BAD_ALL, '\ufffd') : b;
};

export interface AuditorOptions {
  baseUrl: string;
  /** AUDIT=off: nothing is appended (benchmarks, local development). */
  enabled?: boolean;
  /** Most records in one group append. */
  maxBatch?: number;
  log: Logger;
}

export class Auditor {
  private readonly group: GroupAppender;

  constructor(
    private readonly q: Queryable,
    private readonly codec: PhiCodec,
    private readonly o: AuditorOptions,
  ) {
    this.group = new GroupAppender(q, { maxBatch: o.maxBatch ?? 200, baseUrl: o.baseUrl });
  }

  /** The record of one interaction (or Bundle entry) that ended with `status`. */
  event(origin: AuditOrigin, trail: AuditTrail, status: number, description?: string): AuditEvent {
    const p = origin.principal;
    const user = p.kind === 'token' && p.subject && p.subject !== p.clientId ? p.subject : undefined;
    const facts: AuditFacts = {
      interaction: trail.interaction,
      status,
      ...(description ? { description: bounded(description) } : {}),
      recorded: origin.clock(),
      requestId: origin.requestId,
      client: bounded(p.clientId),
      ...(user ? { user: bounded(user) } : {}),
      ...(p.fhirUser ? { fhirUser: bounded(p.fhirUser) } : {}),
      ...(p.tokenId ? { tokenId: bounded(p.tokenId) } : {}),
      ...(origin.address ? { address: bounded(origin.address) } : {}),
      server: this.o.baseUrl,
      resources: trail.resources.map((r) => ({ type: bounded(r.type, 64), id: bounded(r.id, 64), ...(r.version ? { version: bounded(r.version, 16) } : {}) })),
      patients: [...trail.patients].map((p) => bounded(p, 64)),
      ...(trail.query
        ? { query: { ...(trail.query.type ? { type: bounded(trail.query.type, 64) } : {}), parameters: trail.query.pairs.map(([k]) => bounded(k, 64)), text: new URLSearchParams(trail.query.pairs).toString().slice(0, MAX_QUERY) } }
        : {}),
      ...(p.kind === 'job' ? { job: p.clientId } : {}),
    };
    return buildAuditEvent(facts) as unknown as AuditEvent;
  }

  /**
   * The stored form: PHI-bearing elements sealed into one JWE carried by an extension. The event is
   * consumed (its sealed elements are removed in place): records are built for this and nothing else.
   */
  async seal(event: AuditEvent): Promise<LedgerEvent> {
    const s = await this.codec.sealOwned(event, { resourceType: 'AuditEvent', id: event.id!, versionId: 1 });
    if (s.sealed === null) return s.content as unknown as LedgerEvent;
    const content = s.content as AuditEvent;
    return { ...content, extension: [...(content.extension ?? []), { url: SEALED_EXTENSION, valueString: s.sealed }] } as unknown as LedgerEvent;
  }

  /** The AuditEvent as it was recorded, sealed elements restored. */
  async open(stored: LedgerEvent): Promise<AuditEvent> {
    const event = stored as unknown as AuditEvent;
    const ext = event.extension?.find((e) => e.url === SEALED_EXTENSION);
    if (!ext) return event;
    const rest = (event.extension ?? []).filter((e) => e !== ext);
    const { extension: _drop, ...content } = event;
    const plain = (rest.length ? { ...content, extension: rest } : content) as AuditEvent;
    return (await this.codec.open(plain, ext.valueString ?? null, { resourceType: 'AuditEvent', id: event.id!, versionId: 1 })) as AuditEvent;
  }

  /** Appends records in the caller's transaction (they commit or roll back with it); consumes the events. */
  async appendInTx(tx: Queryable, events: AuditEvent[]): Promise<void> {
    if (!events.length || this.o.enabled === false) return;
    await appendEvents(tx, await this.sealAll(events), { baseUrl: this.o.baseUrl });
  }

  /**
   * Seals records one after the other, yielding to the event loop between slices (fhir/pacer.ts): a
   * Bundle of 5,000 entries has 5,001 records, and sealing them at once (Promise.all) ran as one long
   * chain of microtasks that kept /healthz waiting for 1.7 s (test/integration/stall.test.ts).
   */
  async sealAll(events: AuditEvent[]): Promise<LedgerEvent[]> {
    const out: LedgerEvent[] = [];
    for (const e of events) {
      if (due()) await pause();
      out.push(await this.seal(e));
    }
    return out;
  }

  /** Appends records on their own, grouped with concurrent ones; resolves once they are committed. Consumes the events. */
  async appendNow(events: AuditEvent[]): Promise<void> {
    if (!events.length || this.o.enabled === false) return;
    const sealed = await this.sealAll(events);
    await Promise.all(sealed.map((e) => this.group.append(e)));
  }

  /** Waits for every record handed in so far (shutdown). */
  drain(): Promise<void> {
    return this.group.drain();
  }

}
