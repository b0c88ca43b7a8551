// Tables of the built-in authorization server (migration 0010): clients, users, OAuth artifacts and
// failed login attempts. Knex stays here; src/auth/server works through these functions.
import type { Queryable } from './db.js';

type Rows<T> = { rows: T[] };
/**
 * A key a request can carry (client_id, code, token, launch id, user name) that no row can have:
 * PostgreSQL refuses NUL in text, and no stored key is that long. Lookups answer "not found".
 */
function unusableKey(k: string): boolean {
  return k.length === 0 || k.length > 1024 || k.includes('\u0000');
}

const rowCount = (r: unknown): number => (r as { rowCount?: number; affectedRows?: number }).rowCount ?? (r as { affectedRows?: number }).affectedRows ?? 0;

// --- clients ---------------------------------------------------------------------------------------

export async function findClientRow(q: Queryable, clientId: string): Promise<Record<string, unknown> | undefined> {
  if (unusableKey(clientId)) return undefined;
  const r = (await q.raw('select metadata from auth_client where client_id = ?', [clientId])) as Rows<{ metadata: Record<string, unknown> | string }>;
  const m = r.rows[0]?.metadata;
  return m === undefined ? undefined : typeof m === 'string' ? (JSON.parse(m) as Record<string, unknown>) : m;
}

export async function upsertClientRow(q: Queryable, clientId: string, metadata: Record<string, unknown>): Promise<'created' | 'updated'> {
  const r = (await q.raw(
    `insert into auth_client (client_id, metadata) values (?, ?::jsonb)
     on conflict (client_id) do update set metadata = excluded.metadata, updated_at = now()
     returning (xmax = 0) as inserted`,
    [clientId, JSON.stringify(metadata)],
  )) as Rows<{ inserted: boolean }>;
  return r.rows[0]?.inserted ? 'created' : 'updated';
}

export async function listClientRows(q: Queryable): Promise<{ clientId: string; metadata: Record<string, unknown> }[]> {
  const r = (await q.raw('select client_id, metadata from auth_client order by client_id')) as Rows<{ client_id: string; metadata: Record<string, unknown> | string }>;
  return r.rows.map((x) => ({ clientId: x.client_id, metadata: typeof x.metadata === 'string' ? JSON.parse(x.metadata) : x.metadata }));
}

export async function deleteClientRow(q: Queryable, clientId: string): Promise<boolean> {
  return rowCount(await q.raw('delete from auth_client where client_id = ?', [clientId])) > 0;
}

// --- users -----------------------------------------------------------------------------------------

export interface UserRow {
  username: string;
  passwordHash: string;
  fhirUser: string | undefined;
  scopes: string;
  disabled: boolean;
}

export async function findUserRow(q: Queryable, username: string): Promise<UserRow | undefined> {
  if (unusableKey(username)) return undefined;
  const r = (await q.raw('select username, password_hash, fhir_user, scopes, disabled from auth_user where username = ?', [username])) as Rows<{
    username: string;
    password_hash: string;
    fhir_user: string | null;
    scopes: string;
    disabled: boolean;
  }>;
  const u = r.rows[0];
  return u ? { username: u.username, passwordHash: u.password_hash, fhirUser: u.fhir_user ?? undefined, scopes: u.scopes, disabled: u.disabled } : undefined;
}

export async function upsertUserRow(q: Queryable, u: Omit<UserRow, 'disabled'> & { disabled?: boolean }): Promise<'created' | 'updated'> {
  const r = (await q.raw(
    `insert into auth_user (username, password_hash, fhir_user, scopes, disabled) values (?, ?, ?, ?, ?)
     on conflict (username) do update set password_hash = excluded.password_hash, fhir_user = excluded.fhir_user,
       scopes = excluded.scopes, disabled = excluded.disabled
     returning (xmax = 0) as inserted`,
    [u.username, u.passwordHash, u.fhirUser ?? null, u.scopes, u.disabled ?? false],
  )) as Rows<{ inserted: boolean }>;
  return r.rows[0]?.inserted ? 'created' : 'updated';
}

export async function setUserDisabled(q: Queryable, username: string, disabled: boolean): Promise<boolean> {
  return rowCount(await q.raw('update auth_user set disabled = ? where username = ?', [disabled, username])) > 0;
}

export async function listUserRows(q: Queryable): Promise<Omit<UserRow, 'passwordHash'>[]> {
  const r = (await q.raw('select username, fhir_user, scopes, disabled from auth_user order by username')) as Rows<{ username: string; fhir_user: string | null; scopes: string; disabled: boolean }>;
  return r.rows.map((u) => ({ username: u.username, fhirUser: u.fhir_user ?? undefined, scopes: u.scopes, disabled: u.disabled }));
}

// --- OAuth artifacts (oidc-provider's adapter contract) ---------------------------------------------

export interface ArtifactRow {
  payload: Record<string, unknown>;
  consumedAt: Date | undefined;
}

export async function upsertArtifact(
  q: Queryable,
  kind: string,
  id: string,
  payload: Record<string, unknown>,
  grantId: string | undefined,
  uid: string | undefined,
  expiresAt: Date | undefined,
): Promise<void> {
  await q.raw(
    `insert into oauth_artifact (kind, id, payload, grant_id, uid, expires_at) values (?, ?, ?::jsonb, ?, ?, ?)
     on conflict (kind, id) do update set payload = excluded.payload, grant_id = excluded.grant_id, uid = excluded.uid, expires_at = excluded.expires_at`,
    [kind, id, JSON.stringify(payload), grantId ?? null, uid ?? null, expiresAt ?? null],
  );
}

/**
 * Inserts an artifact only if none with that id exists (and unexpired): true when inserted. The
 * replay check of client assertions rests on this being atomic.
 */
export async function insertArtifactOnce(q: Queryable, kind: string, id: string, payload: Record<string, unknown>, expiresAt: Date): Promise<boolean> {
  const r = (await q.raw(
    `insert into oauth_artifact (kind, id, payload, expires_at) values (?, ?, ?::jsonb, ?)
     on conflict (kind, id) do update set payload = excluded.payload, expires_at = excluded.expires_at
       where oauth_artifact.expires_at is not null and oauth_artifact.expires_at <= now()
     returning id`,
    [kind, id, JSON.stringify(payload), expiresAt],
  )) as Rows<{ id: string }>;
  return r.rows.length === 1;
}

type ArtifactDbRow = { payload: Record<string, unknown> | string; consumed_at: Date | string | null };
const toArtifact = (r: ArtifactDbRow | undefined): ArtifactRow | undefined =>
  r ? { payload: typeof r.payload === 'string' ? JSON.parse(r.payload) : r.payload, consumedAt: r.consumed_at ? new Date(r.consumed_at) : undefined } : undefined;

export async function findArtifact(q: Queryable, kind: string, id: string): Promise<ArtifactRow | undefined> {
  if (unusableKey(id)) return undefined;
  const r = (await q.raw('select payload, consumed_at from oauth_artifact where kind = ? and id = ? and (expires_at is null or expires_at > now())', [kind, id])) as Rows<ArtifactDbRow>;
  return toArtifact(r.rows[0]);
}

export async function findArtifactByUid(q: Queryable, kind: string, uid: string): Promise<ArtifactRow | undefined> {
  if (unusableKey(uid)) return undefined;
  const r = (await q.raw('select payload, consumed_at from oauth_artifact where kind = ? and uid = ? and (expires_at is null or expires_at > now()) limit 1', [kind, uid])) as Rows<ArtifactDbRow>;
  return toArtifact(r.rows[0]);
}

/** Marks an artifact consumed; true when this call consumed it (false when it already was). */
export async function consumeArtifact(q: Queryable, kind: string, id: string): Promise<boolean> {
  if (unusableKey(id)) return false;
  return rowCount(await q.raw('update oauth_artifact set consumed_at = now() where kind = ? and id = ? and consumed_at is null', [kind, id])) > 0;
}

export async function destroyArtifact(q: Queryable, kind: string, id: string): Promise<void> {
  if (unusableKey(id)) return;
  await q.raw('delete from oauth_artifact where kind = ? and id = ?', [kind, id]);
}

/** Every artifact of a grant (codes, refresh tokens, the grant itself): what revoking a grant removes. */
export async function artifactsOfGrant(q: Queryable, grantId: string): Promise<{ kind: string; id: string; payload: Record<string, unknown> }[]> {
  const r = (await q.raw('select kind, id, payload from oauth_artifact where grant_id = ?', [grantId])) as Rows<{ kind: string; id: string; payload: Record<string, unknown> | string }>;
  return r.rows.map((x) => ({ kind: x.kind, id: x.id, payload: typeof x.payload === 'string' ? JSON.parse(x.payload) : x.payload }));
}

export async function destroyArtifactsOfGrant(q: Queryable, grantId: string): Promise<void> {
  await q.raw('delete from oauth_artifact where grant_id = ?', [grantId]);
}

export async function pruneArtifacts(q: Queryable): Promise<number> {
  return rowCount(await q.raw('delete from oauth_artifact where expires_at is not null and expires_at < now()'));
}

// --- login throttling ------------------------------------------------------------------------------

export async function recordLoginFailure(q: Queryable, keys: string[]): Promise<void> {
  for (const k of keys) await q.raw('insert into auth_login_failure (key) values (?)', [k]);
}

/** Failures per key since `since`. */
export async function countLoginFailures(q: Queryable, keys: string[], since: Date): Promise<Map<string, number>> {
  const out = new Map<string, number>(keys.map((k) => [k, 0]));
  if (!keys.length) return out;
  const r = (await q.raw(`select key, count(*)::int as n from auth_login_failure where key in (${keys.map(() => '?').join(', ')}) and at > ? group by key`, [...keys, since])) as Rows<{
    key: string;
    n: number;
  }>;
  for (const x of r.rows) out.set(x.key, Number(x.n));
  return out;
}

export async function clearLoginFailures(q: Queryable, key: string): Promise<void> {
  await q.raw('delete from auth_login_failure where key = ?', [key]);
}

export async function pruneLoginFailures(q: Queryable, before: Date): Promise<number> {
  return rowCount(await q.raw('delete from auth_login_failure where at < ?', [before]));
}
