// The revoked_token table (migration 0009): what every node reads to refuse revoked tokens.
import type { Queryable } from './db.js';

export async function insertRevocation(q: Queryable, jti: string, expiresAt: Date): Promise<void> {
  await q.raw('insert into revoked_token (jti, expires_at) values (?, ?) on conflict (jti) do nothing', [jti, expiresAt]);
}

/** Revocations of tokens not yet expired, recorded after `since` (all of them without). */
export async function revocationsSince(q: Queryable, since: Date | undefined, now: Date): Promise<{ jti: string; revokedAt: Date; expiresAt: Date }[]> {
  const res = (await q.raw(
    `select jti, revoked_at, expires_at from revoked_token where expires_at > ?${since ? ' and revoked_at >= ?' : ''}`,
    since ? [now, since] : [now],
  )) as { rows: { jti: string; revoked_at: Date | string; expires_at: Date | string }[] };
  return res.rows.map((r) => ({ jti: r.jti, revokedAt: new Date(r.revoked_at), expiresAt: new Date(r.expires_at) }));
}

/** Removes rows of tokens that have expired anyway. */
export async function pruneRevocations(q: Queryable, now: Date): Promise<number> {
  const res = (await q.raw('delete from revoked_token where expires_at < ?', [now])) as { rowCount?: number; affectedRows?: number };
  return res.rowCount ?? res.affectedRows ?? 0;
}
