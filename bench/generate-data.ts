// Data generator for benchmarks: multiplies the Synthea transaction Bundles into any number of
// patients with fresh ids and consistent references (every urn:uuid fullUrl and every reference to
// it are renamed together), so the same realistic shapes reach 100,000 or 1,000,000 resources.
//   node dist/bench/generate-data.js --resources 100000 --out /tmp/synthea-x [--data <dir>]
// The source defaults to the Synthea fixtures in the repository (test/fixtures/synthea, 3 bundles), so
// it works from a fresh clone; --data (or VESTA_SAMPLE_DATA) names a larger set, flat or with bundles/.
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { findPackageRoot } from '../src/fhir/package-root.js';

/** The Synthea bundles in the repository: the default source of every sample-data tool. */
export const FIXTURE_SYNTHEA = join(findPackageRoot(), 'test', 'fixtures', 'synthea');

/** A problem with the command line or its paths: printed as one line, no stack. */
export class UsageError extends Error {}

/**
 * The folder of bundle files in a Synthea set: `<dir>/bundles` when present (the layout of the
 * larger set), else `dir` itself (the fixtures). Refuses a missing or empty folder by name.
 */
export function bundleDir(dir: string): string {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new UsageError(`sample data folder ${dir} does not exist (default: ${FIXTURE_SYNTHEA})`);
  const sub = join(dir, 'bundles');
  const src = existsSync(sub) && statSync(sub).isDirectory() ? sub : dir;
  if (!readdirSync(src).some((f) => f.endsWith('.json') && f !== 'manifest.json')) throw new UsageError(`sample data folder ${src} holds no .json bundles`);
  return src;
}

type Json = Record<string, unknown>;

/** Renames every urn:uuid in a bundle (fullUrls, references, narrative links) consistently. */
export function cloneBundle(text: string, copy: number): { text: string; resources: number } {
  const ids = new Map<string, string>();
  const fresh = (old: string) => {
    let n = ids.get(old);
    if (!n) {
      n = randomUUID();
      ids.set(old, n);
    }
    return n;
  };
  // urn:uuid values appear only as fullUrls, references and resource ids; rename all of them.
  const out = text.replace(/urn:uuid:([0-9a-fA-F-]{36})/g, (_m, u: string) => `urn:uuid:${fresh(u)}`);
  const bundle = JSON.parse(out) as { entry: { fullUrl?: string; resource: Json }[] };
  for (const e of bundle.entry) {
    if (typeof e.resource.id === 'string' && ids.has(e.resource.id)) e.resource.id = ids.get(e.resource.id);
    // Identifiers repeat patient ids and MRNs; keep them unique per copy so conditional logic and
    // identifier searches see distinct patients.
    const idents = e.resource.identifier as { value?: string }[] | undefined;
    if (Array.isArray(idents)) for (const i of idents) if (typeof i.value === 'string') i.value = `${i.value}-c${copy}`;
  }
  return { text: JSON.stringify(bundle), resources: bundle.entry.length };
}

/** Writes copies of the Synthea bundles into `out` until at least `target` resources; returns the totals. */
export function generateData(syntheaDir: string, target: number, out: string): { bundles: number; resources: number; counts: Record<string, number> } {
  const src = bundleDir(syntheaDir);
  const files = readdirSync(src).filter((f) => f.endsWith('.json') && f !== 'manifest.json').sort();
  const texts = files.map((f) => readFileSync(join(src, f), 'utf8'));
  mkdirSync(out, { recursive: true });
  let total = 0;
  let n = 0;
  const counts: Record<string, number> = {};
  while (total < target) {
    const i = n % texts.length;
    const copy = Math.floor(n / texts.length);
    const c = cloneBundle(texts[i], copy);
    writeFileSync(join(out, `b${String(n).padStart(6, '0')}.json`), c.text);
    for (const e of (JSON.parse(c.text) as { entry: { resource: { resourceType: string } }[] }).entry) counts[e.resource.resourceType] = (counts[e.resource.resourceType] ?? 0) + 1;
    total += c.resources;
    n++;
  }
  writeFileSync(join(out, 'manifest.json'), JSON.stringify({ bundles: n, resourceCounts: counts }, null, 1));
  return { bundles: n, resources: total, counts };
}

function main(): void {
  const { values } = parseArgs({ options: { resources: { type: 'string' }, out: { type: 'string' }, data: { type: 'string' }, synthea: { type: 'string' } } });
  const target = Number(values.resources ?? 100000);
  if (!Number.isInteger(target) || target < 1) throw new UsageError('--resources must be a positive integer');
  if (!values.out) throw new UsageError('--out <dir> is required (usage: generate-data --out <dir> [--resources N] [--data <synthea dir>])');
  // --synthea is the option's former name, kept for scripts that use it.
  const source = values.data ?? values.synthea ?? process.env.VESTA_SAMPLE_DATA ?? FIXTURE_SYNTHEA;
  const r = generateData(source, target, values.out);
  process.stdout.write(`generated ${r.bundles} bundles, ${r.resources} resources in ${values.out} (from ${source})\n`);
}

if (process.argv[1]?.endsWith('generate-data.js')) {
  try {
    main();
  } catch (e) {
    // Usage and path problems are the user's to fix: one line. Anything else keeps its stack.
    const known = e instanceof UsageError || String((e as { code?: unknown }).code).startsWith('ERR_PARSE_ARGS');
    process.stderr.write(`generate-data: ${known ? (e as Error).message : ((e as Error).stack ?? String(e))}\n`);
    process.exit(known ? 2 : 1);
  }
}
