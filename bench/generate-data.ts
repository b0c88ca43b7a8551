// Data generator for benchmarks: multiplies the Synthea transaction Bundles into any number of
// patients with fresh ids and consistent references (every urn:uuid fullUrl and every reference to
// it are renamed together), so the same realistic shapes reach 100,000 or 1,000,000 resources.
//   node dist/bench/generate-data.js --resources 100000 --out /tmp/synthea-x [--synthea <dir>]
import { randomUUID } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

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
  const src = join(syntheaDir, 'bundles');
  const files = readdirSync(src).filter((f) => f.endsWith('.json')).sort();
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
  const { values } = parseArgs({ options: { resources: { type: 'string' }, out: { type: 'string' }, synthea: { type: 'string' } } });
  const target = Number(values.resources ?? 100000);
  if (!values.out) throw new Error('--out <dir> is required');
  const r = generateData(values.synthea ?? join(process.cwd(), '..', 'shared', 'testdata', 'synthea'), target, values.out);
  process.stdout.write(`generated ${r.bundles} bundles, ${r.resources} resources in ${values.out}\n`);
}

if (process.argv[1]?.endsWith('generate-data.js')) main();
