// oidc-provider's storage adapter over the oauth_artifact table (storage/auth-store.ts): codes,
// refresh tokens, grants, sessions, interactions and replay-detection entries, one row each, with
// their expiry. Clients come from auth_client (registered with `vesta clients add`), never from here.
import type { Queryable } from '../storage/db.js';
import {
  consumeArtifact,
  destroyArtifact,
  destroyArtifactsOfGrant,
  findArtifact,
  findArtifactByUid,
  findClientRow,
  upsertArtifact,
} from '../storage/auth-store.js';
import { toProviderMetadata, type ClientRegistration } from './clients.js';

/** The adapter contract oidc-provider calls (one instance per model name). */
export interface ProviderAdapter {
  upsert(id: string, payload: Record<string, unknown>, expiresIn?: number): Promise<void>;
  find(id: string): Promise<Record<string, unknown> | undefined>;
  findByUserCode(userCode: string): Promise<Record<string, unknown> | undefined>;
  findByUid(uid: string): Promise<Record<string, unknown> | undefined>;
  consume(id: string): Promise<void>;
  destroy(id: string): Promise<void>;
  revokeByGrantId(grantId: string): Promise<void>;
}

export interface AdapterHooks {
  /** Called when oidc-provider revokes a grant (refresh-token reuse, code reuse, revocation). */
  onGrantRevoked(grantId: string): Promise<void>;
}

export function adapterFactory(q: Queryable, hooks: AdapterHooks): new (name: string) => ProviderAdapter {
  return class ArtifactAdapter implements ProviderAdapter {
    constructor(private readonly name: string) {}

    async upsert(id: string, payload: Record<string, unknown>, expiresIn?: number): Promise<void> {
      if (this.name === 'Client') throw new Error('clients are registered with vesta clients add');
      const expiresAt = expiresIn ? new Date(Date.now() + expiresIn * 1000) : undefined;
      // oidc-provider's own replay check (find, then save) is not atomic; Vesta's client-assertion
      // check in provider.ts inserts each jti atomically before it runs, so this one stores nothing.
      if (this.name === 'ReplayDetection') return;
      await upsertArtifact(q, this.name, id, payload, typeof payload.grantId === 'string' ? payload.grantId : undefined, typeof payload.uid === 'string' ? payload.uid : undefined, expiresAt);
    }

    async find(id: string): Promise<Record<string, unknown> | undefined> {
      if (this.name === 'ReplayDetection') return undefined;
      if (this.name === 'Client') {
        const reg = await findClientRow(q, id);
        return reg ? toProviderMetadata(reg as unknown as ClientRegistration) : undefined;
      }
      const row = await findArtifact(q, this.name, id);
      if (!row) return undefined;
      return row.consumedAt ? { ...row.payload, consumed: Math.floor(row.consumedAt.getTime() / 1000) } : row.payload;
    }

    async findByUserCode(): Promise<undefined> {
      return undefined; // the device flow is not enabled
    }

    async findByUid(uid: string): Promise<Record<string, unknown> | undefined> {
      const row = await findArtifactByUid(q, this.name, uid);
      if (!row) return undefined;
      return row.consumedAt ? { ...row.payload, consumed: Math.floor(row.consumedAt.getTime() / 1000) } : row.payload;
    }

    async consume(id: string): Promise<void> {
      await consumeArtifact(q, this.name, id);
    }

    async destroy(id: string): Promise<void> {
      if (this.name === 'Grant') await hooks.onGrantRevoked(id);
      await destroyArtifact(q, this.name, id);
    }

    async revokeByGrantId(grantId: string): Promise<void> {
      // The hook first: it reads the grant's issued access tokens to revoke them (they are JWTs
      // that no table lookup would otherwise stop).
      await hooks.onGrantRevoked(grantId);
      await destroyArtifactsOfGrant(q, grantId);
    }
  };
}
