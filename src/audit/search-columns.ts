// The search columns of a ledger entry (issue 16 item 7, migration 0012): what /AuditEvent search
// matches on, derived from the STORED event. Sealing leaves every element these come from in clear
// (type, subtype, action, outcome, recorded, agent.who, entity.what, source), so no column holds
// sealed PHI. Pure. The canonical text stays the only thing the chain covers and the only thing a
// read returns: the columns choose rows, they never stand in for the event.
//
// Both sides (these columns, and the keys a search looks for) are built here, so they cannot drift:
// - token keys, for one Coding or Identifier: `code` (any system), `system|code`, `|code` (no system)
//   and `system|` (any code of the system), each part escaped as search values are (escape.ts), so
//   the unescaped `|` alone says which form a key is;
// - reference keys: `Type/id` (an absolute reference on this server's base made relative), `/id`
//   (a bare id, any type) and `Type/id/_history/v` for a versioned one; another URL or URN as
//   itself, without `/_history/v`, plus its versioned form.
import { FhirError } from '../fhir/errors.js';
import { ID_PATTERN } from '../fhir/definitions.js';
import { escapeValue, unescapeValue } from '../search/escape.js';
import { eqKey } from '../search/keys.js';
import { parseTokenQuery } from '../search/types/token.js';

export interface AuditSearchColumns {
  /** AuditEvent.id (unique across the ledger). */
  eventId: string | null;
  /** AuditEvent.recorded; null when it is not a valid instant. */
  recorded: Date | null;
  action: string | null;
  outcome: string | null;
  /** Token keys of type and subtype. */
  type: string[];
  subtype: string[];
  /** Reference keys of agent.who, and token keys of agent.who.identifier (:identifier). */
  agent: string[];
  agentIdentifier: string[];
  /** Reference keys of entity.what, and token keys of entity.what.identifier. */
  entity: string[];
  entityIdentifier: string[];
  /** Reference keys of the Patients among agent.who and entity.what (the R4 `patient` parameter). */
  patient: string[];
  /** Reference keys of source.observer, and token keys of source.observer.identifier (Vesta's own records name it so). */
  source: string[];
  sourceIdentifier: string[];
}

const RELATIVE = /^([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/([A-Za-z0-9\-.]{1,64}))?$/;
const HISTORY = /\/_history\/[A-Za-z0-9\-.]{1,64}$/;
const ABSOLUTE_OF = (type: string) => new RegExp(`^[a-z][a-z0-9+.-]*://.+/${type}/[A-Za-z0-9\\-.]{1,64}(?:/_history/[A-Za-z0-9\\-.]{1,64})?$`);
const ABSOLUTE_PATIENT = ABSOLUTE_OF('Patient');

function str(v: unknown): string | undefined {
  return typeof v === 'string' && v !== '' ? v : undefined;
}

function obj(v: unknown): Record<string, unknown> | undefined {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
}

function list(v: unknown): Record<string, unknown>[] {
  if (Array.isArray(v)) return v.map(obj).filter((x): x is Record<string, unknown> => x !== undefined);
  const o = obj(v);
  return o ? [o] : [];
}

/** The keys one Coding (system, code) or Identifier (system, value) answers to. */
export function tokenKeys(system: string | undefined, code: string | undefined): string[] {
  const s = system === undefined ? undefined : escapeValue(system);
  const c = code === undefined ? undefined : escapeValue(code);
  const out: string[] = [];
  if (c !== undefined) out.push(c, s !== undefined ? `${s}|${c}` : `|${c}`);
  if (s !== undefined) out.push(`${s}|`);
  return out.map((k) => eqKey(k));
}

/**
 * The key a token search value looks for (one OR value, still escaped as in the URL): `code`,
 * `system|code`, `|code` or `system|`; undefined for an empty one (`|`).
 */
export function tokenQueryKey(raw: string): string | undefined {
  const t = parseTokenQuery(raw);
  const s = t.system === undefined ? undefined : escapeValue(t.system);
  const c = t.code === undefined ? undefined : escapeValue(t.code);
  if (c === undefined && s === undefined) return undefined;
  if (!t.hasBar) return eqKey(c!);
  return eqKey(`${s ?? ''}|${c ?? ''}`);
}

/** A reference relative to this server when it is an absolute one on `baseUrl`. */
export function localReference(ref: string, baseUrl: string | undefined): string {
  if (baseUrl && ref.startsWith(`${baseUrl}/`)) {
    const rest = ref.slice(baseUrl.length + 1);
    if (RELATIVE.test(rest)) return rest;
  }
  return ref;
}

/** The keys one reference answers to (see the file comment); none for a contained (#) one. */
export function referenceKeys(ref: string, baseUrl?: string): string[] {
  if (ref === '' || ref.startsWith('#')) return [];
  const r = localReference(ref, baseUrl);
  const rel = RELATIVE.exec(r);
  const keys = rel ? [`${rel[1]}/${rel[2]}`, `/${rel[2]}`, ...(rel[3] !== undefined ? [r] : [])] : r.replace(HISTORY, '') === r ? [r] : [r.replace(HISTORY, ''), r];
  return keys.map((k) => eqKey(k));
}

/**
 * The keys a reference search value looks for (one OR value, escaped as in the URL), ORed: `[id]`
 * (of `type` when given, else of any type), `Type/id`, `Type/id/_history/v` (that version only), an
 * absolute URL (on this server's base: also as the relative reference it stands for), or a URN.
 * Throws when the value contradicts the type (a :Type modifier, or the Patient of `patient`).
 */
export function referenceQueryKeys(raw: string, code: string, type: string | undefined, baseUrl: string | undefined): string[] {
  const v = unescapeValue(raw);
  if (v === '') throw new FhirError('invalid-search', `parameter ${code} has an empty value`);
  // Stored without a base (appendEvents given none), this server's references may still be absolute.
  const both = (rel: string) => [rel, ...(baseUrl ? [`${baseUrl}/${rel}`] : [])].map((k) => eqKey(k));
  if (ID_PATTERN.test(v)) return type === undefined ? [eqKey(`/${v}`)] : both(`${type}/${v}`);
  const local = localReference(v, baseUrl);
  const rel = RELATIVE.exec(local);
  if (rel) {
    if (type !== undefined && rel[1] !== type) throw new FhirError('invalid-search', `parameter ${code}: the reference type does not match ${type}`);
    return both(local);
  }
  if (type !== undefined && !ABSOLUTE_OF(type).test(v)) throw new FhirError('invalid-search', `parameter ${code}: the value is not a reference to a ${type}`);
  return [eqKey(v)];
}

function isPatientReference(ref: string, baseUrl: string | undefined): boolean {
  const r = localReference(ref, baseUrl);
  return RELATIVE.exec(r)?.[1] === 'Patient' || ABSOLUTE_PATIENT.test(r);
}

/** `/id` keys say "any type"; the patient column is of one type and keeps only the typed ones. */
const typed = (keys: string[]) => keys.filter((k) => !k.startsWith('/'));

/** The search columns of a stored (sealed) AuditEvent. `baseUrl` makes this server's absolute references relative. */
export function searchColumns(event: Record<string, unknown>, baseUrl?: string): AuditSearchColumns {
  const recordedText = str(event.recorded);
  const ms = recordedText === undefined ? NaN : Date.parse(recordedText);
  const codings = (v: unknown) => list(v).flatMap((c) => tokenKeys(str(c.system), str(c.code)));
  const out: AuditSearchColumns = {
    eventId: str(event.id) ?? null,
    recorded: Number.isNaN(ms) ? null : new Date(ms),
    action: str(event.action) ?? null,
    outcome: str(event.outcome) ?? null,
    type: codings(event.type),
    subtype: codings(event.subtype),
    agent: [],
    agentIdentifier: [],
    entity: [],
    entityIdentifier: [],
    patient: [],
    source: [],
    sourceIdentifier: [],
  };
  const refs = (holder: Record<string, unknown> | undefined, keys: string[], idents: string[] | undefined, patients = true) => {
    if (!holder) return;
    const ref = str(holder.reference);
    if (ref !== undefined) {
      const k = referenceKeys(ref, baseUrl);
      keys.push(...k);
      if (patients && isPatientReference(ref, baseUrl)) out.patient.push(...typed(k));
    }
    const ident = obj(holder.identifier);
    if (ident && idents) idents.push(...tokenKeys(str(ident.system), str(ident.value)));
  };
  for (const a of list(event.agent)) refs(obj(a.who), out.agent, out.agentIdentifier);
  for (const e of list(event.entity)) refs(obj(e.what), out.entity, out.entityIdentifier);
  // The R4 `patient` parameter looks at agent.who and entity.what, not at the observer.
  refs(obj(obj(event.source)?.observer), out.source, out.sourceIdentifier, false);
  const uniq = (xs: string[]) => [...new Set(xs)];
  for (const k of ['type', 'subtype', 'agent', 'agentIdentifier', 'entity', 'entityIdentifier', 'patient', 'source', 'sourceIdentifier'] as const) out[k] = uniq(out[k]);
  return out;
}
