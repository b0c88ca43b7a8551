// Keeps the dependency direction of design.md true: http -> interactions -> (search, storage, audit,
// validation, crypto) -> fhir. fhir/ imports nothing internal; only storage/ talks to the database.
import { describe, expect, test } from '@jest/globals';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { findPackageRoot } from '../../src/fhir/package-root.js';

const src = join(findPackageRoot(), 'src');

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? files(p) : p.endsWith('.ts') ? [p] : [];
  });
}

function imports(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  return [...text.matchAll(/^\s*import\s[^'"]*?from\s+['"]([^'"]+)['"]|^\s*import\s+['"]([^'"]+)['"]/gm)].map((m) => m[1] ?? m[2]);
}

const all = files(src).map((f) => ({ file: relative(src, f), area: relative(src, f).split('/')[0], imports: imports(f) }));

describe('architecture', () => {
  test('fhir/ imports nothing internal', () => {
    const bad = all.filter((f) => f.area === 'fhir').flatMap((f) => f.imports.filter((i) => i.startsWith('.') && !i.startsWith('./')).map((i) => `${f.file} -> ${i}`));
    expect(bad).toEqual([]);
  });

  test('only storage/ imports knex or pg', () => {
    const bad = all.filter((f) => f.area !== 'storage').flatMap((f) => f.imports.filter((i) => i === 'knex' || i === 'pg' || i === 'knex-pglite' || i.startsWith('@electric-sql/')).map((i) => `${f.file} -> ${i}`));
    expect(bad).toEqual([]);
  });

  test('nothing below http/ imports http/ or express', () => {
    const below = ['interactions', 'search', 'storage', 'audit', 'validation', 'crypto', 'fhir', 'config', 'auth', 'jobs'];
    const bad = all
      .filter((f) => below.includes(f.area))
      .flatMap((f) => f.imports.filter((i) => i === 'express' || /(^|\/)http\//.test(i)).map((i) => `${f.file} -> ${i}`));
    expect(bad).toEqual([]);
  });

  test('storage, search, crypto, validation and auth do not import interactions', () => {
    const bad = all
      .filter((f) => ['storage', 'search', 'crypto', 'validation', 'fhir', 'audit', 'auth'].includes(f.area))
      .flatMap((f) => f.imports.filter((i) => /(^|\/)interactions\//.test(i)).map((i) => `${f.file} -> ${i}`));
    expect(bad).toEqual([]);
  });

  test('only the audit path makes the transaction storage writes take (AuditedTx): no write without its AuditEvent', () => {
    const text = (f: string) => readFileSync(join(src, f), 'utf8');
    const setters = all.filter((f) => /\[AUDIT_SCOPE\]\s*=/.test(text(f.file))).map((f) => f.file);
    expect(setters).toEqual(['interactions/audit.ts']);
    const casts = all.filter((f) => /as AuditedTx\b/.test(text(f.file))).map((f) => f.file);
    expect(casts).toEqual(['interactions/audit.ts']);
    // storage/ refuses a write whose transaction carries no recorder, whatever the types say.
    expect(text('storage/resource-store.ts')).toMatch(/a resource write outside an audited transaction/);
  });

  test('only the composition root, cli/ and http/ import auth-server/ (an edge like http/)', () => {
    const allowed = (f: { file: string; area: string }) => f.area === 'auth-server' || f.area === 'http' || f.area === 'cli' || f.file === 'server.ts';
    const bad = all.filter((f) => !allowed(f)).flatMap((f) => f.imports.filter((i) => /(^|\/)auth-server\//.test(i)).map((i) => `${f.file} -> ${i}`));
    expect(bad).toEqual([]);
  });
});
