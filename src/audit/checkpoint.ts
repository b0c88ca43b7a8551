// Signed checkpoints of the audit ledger (issue 16): the chain's size and head hash at a moment, as
// a JWS (RFC 7515) signed with a key of the audit key ring, kept outside the database by a sink. A
// chain proves nothing against someone who can rewrite it; a checkpoint they cannot forge does: the
// chain must reproduce each checkpoint's head at its size.
import { mkdir, open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CompactSign, compactVerify, createLocalJWKSet, importJWK, type JSONWebKeySet } from 'jose';
import { publicJwks, type SigningRingFile } from '../auth/signing-keys.js';

export const CHECKPOINT_TYP = 'vesta-audit-checkpoint+jws';

export interface CheckpointPayload {
  /** The ledger (the server's base URL). */
  ledger: string;
  /** Entries covered: positions 0 .. size-1. */
  size: number;
  /** Hash of the entry at position size-1, hex. */
  head: string;
  /** When it was made (ISO 8601). */
  time: string;
}

/** Where checkpoints go: outside the database. The default is an append-only file; object storage with retention locks fits the same seam. */
export interface CheckpointSink {
  append(jws: string): Promise<void>;
  /** Every checkpoint, oldest first. */
  list(): Promise<string[]>;
  describe(): string;
}

/** One JWS per line in `<dir>/checkpoints.jws`, appended and synced to disk before returning. */
export class FileCheckpointSink implements CheckpointSink {
  readonly file: string;

  constructor(private readonly dir: string) {
    this.file = join(dir, 'checkpoints.jws');
  }

  async append(jws: string): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    const fh = await open(this.file, 'a', 0o644);
    try {
      await fh.appendFile(`${jws}\n`);
      await fh.datasync();
    } finally {
      await fh.close();
    }
  }

  async list(): Promise<string[]> {
    let text: string;
    try {
      text = await readFile(this.file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
    return text.split('\n').filter((l) => l.trim() !== '');
  }

  describe(): string {
    return this.file;
  }
}

/** In memory (tests). */
export class MemoryCheckpointSink implements CheckpointSink {
  readonly lines: string[] = [];
  async append(jws: string): Promise<void> {
    this.lines.push(jws);
  }
  async list(): Promise<string[]> {
    return [...this.lines];
  }
  describe(): string {
    return 'memory';
  }
}

export async function signCheckpoint(ring: SigningRingFile, payload: CheckpointPayload): Promise<string> {
  const key = ring.keys.find((k) => k.kid === ring.active)!;
  return new CompactSign(Buffer.from(JSON.stringify(payload), 'utf8'))
    .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: CHECKPOINT_TYP })
    .sign(await importJWK(key, key.alg));
}

export type CheckedCheckpoint = { ok: true; payload: CheckpointPayload; kid: string } | { ok: false; reason: string };

/** Checks one checkpoint's signature (a key of the ring, by kid) and shape. */
export async function checkCheckpoint(jws: string, keys: JSONWebKeySet): Promise<CheckedCheckpoint> {
  try {
    const { payload, protectedHeader } = await compactVerify(jws, createLocalJWKSet(keys), { algorithms: ['ES256', 'ES384', 'RS256', 'RS384'] });
    if (protectedHeader.typ !== CHECKPOINT_TYP) return { ok: false, reason: 'not a Vesta audit checkpoint (typ)' };
    const p = JSON.parse(Buffer.from(payload).toString('utf8')) as CheckpointPayload;
    if (!Number.isSafeInteger(p.size) || p.size < 1 || !/^[0-9a-f]{64}$/.test(p.head) || typeof p.time !== 'string') return { ok: false, reason: 'malformed payload' };
    return { ok: true, payload: p, kid: String(protectedHeader.kid) };
  } catch (e) {
    return { ok: false, reason: `signature does not verify (${(e as { code?: string }).code ?? (e as Error).message})` };
  }
}

export function checkpointKeys(ring: SigningRingFile): JSONWebKeySet {
  return publicJwks(ring);
}

