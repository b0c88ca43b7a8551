// `vesta audit verify [--from N] [--to N]`: checks the audit ledger's chain and its checkpoints
// (src/audit/verify.ts), with progress on standard error; exit 0 when intact, 1 on any break.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ConfigError, loadConfig } from '../config/config.js';
import { checkSigningRing, publicJwks, type SigningRingFile } from '../auth/signing-keys.js';
import { FileCheckpointSink } from '../audit/checkpoint.js';
import { verifyLedger } from '../audit/verify.js';
import { withDatabase } from './database.js';
import { chainHead } from '../storage/audit-store.js';

/** The audit key ring the configuration names (the embedded default lives beside the data). */
export function auditRing(config: ReturnType<typeof loadConfig>): SigningRingFile {
  try {
    if (config.auditKeys) return checkSigningRing(JSON.parse(config.auditKeys));
    const path = config.auditKeysFile ?? join(config.dataDir, 'audit-keys.json');
    if (!existsSync(path)) throw new ConfigError(config.auditKeysFile ? 'AUDIT_KEYS_FILE' : 'AUDIT_KEYS_FILE', `no audit key ring at ${path} (create one with: vesta keys init-audit > ${path})`);
    return checkSigningRing(JSON.parse(readFileSync(path, 'utf8')));
  } catch (e) {
    if (e instanceof ConfigError) throw e;
    throw new ConfigError(config.auditKeys ? 'AUDIT_KEYS' : 'AUDIT_KEYS_FILE', (e as Error).message);
  }
}

export async function auditCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { from: { type: 'string' }, to: { type: 'string' } } });
  if (positionals[0] !== 'verify') {
    process.stderr.write('usage: vesta audit verify [--from POSITION] [--to POSITION]\n');
    return 2;
  }
  const num = (v: string | undefined, name: string) => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < 0) throw new Error(`--${name} must be a position (0 or more)`);
    return n;
  };
  const from = num(values.from, 'from');
  const to = num(values.to, 'to');
  const config = loadConfig();
  const ring = auditRing(config);
  return withDatabase(config, async (q) => {
    const head = await chainHead(q);
    const end = to ?? head?.position ?? 0;
    const total = Math.max(1, end - (from ?? 0) + 1);
    const sink = new FileCheckpointSink(config.auditCheckpointDir);
    let lastShown = 0;
    const report = await verifyLedger(q, {
      ...(from !== undefined ? { from } : {}),
      ...(to !== undefined ? { to } : {}),
      sink,
      keys: publicJwks(ring),
      maxUnlinkedAgeMs: config.auditMaxUnlinkedMs,
      onProgress: (checked) => {
        const now = Date.now();
        if (now - lastShown < 500 && checked < total) return;
        lastShown = now;
        const width = 30;
        const done = Math.min(width, Math.round((checked / total) * width));
        process.stderr.write(`\r[${'#'.repeat(done)}${'.'.repeat(width - done)}] ${checked}/${total} entries`);
      },
    });
    process.stderr.write('\n');
    const rate = report.seconds > 0 ? Math.round(report.checked / report.seconds) : report.checked;
    const out = process.stdout;
    out.write(`ledger: ${report.checked} entries checked (positions ${report.from}..${report.last}) in ${report.seconds.toFixed(2)} s, ${rate} entries/s\n`);
    out.write(`checkpoints (${sink.describe()}): ${report.checkpoints.total} found, ${report.checkpoints.valid} signed by the audit key ring, ${report.checkpoints.matched} reproduced by the chain\n`);
    for (const p of report.checkpoints.problems) out.write(`  BROKEN checkpoint: ${p}\n`);
    out.write(`not yet linked: ${report.unlinked.count}${report.unlinked.oldestAgeMs !== undefined ? `, oldest ${Math.round(report.unlinked.oldestAgeMs / 1000)} s` : ''}\n`);
    if (report.unlinked.problem) out.write(`  BROKEN: ${report.unlinked.problem}\n`);
    if (report.firstBreak) out.write(`BROKEN at entry ${report.firstBreak.position}${report.firstBreak.eventId ? ` (AuditEvent/${report.firstBreak.eventId})` : ''}: ${report.firstBreak.problem}\n`);
    out.write(report.ok ? 'audit ledger intact\n' : 'audit ledger NOT intact\n');
    return report.ok ? 0 : 1;
  });
}
