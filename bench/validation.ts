// Validation throughput over the official R4 examples (hl7.fhir.r4.examples@4.0.1), in-process on one
// core: schema only (ajv) and schema + invariants + bindings (the server's validator). Median of rounds.
// Two sets: the example instances (every file that is not a definition: no StructureDefinition,
// ValueSet, CodeSystem, SearchParameter, ... nor Bundle of them) and the whole package.
//   node dist/bench/validation.js [rounds]
import { readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { R4Validator } from '../src/validation/validator.js';
import { hostileTimings, type HostileFigures } from './hostile-primitives.js';

const DEFINITIONS = new Set([
  'StructureDefinition', 'ValueSet', 'CodeSystem', 'SearchParameter', 'ConceptMap', 'OperationDefinition', 'CompartmentDefinition',
  'ImplementationGuide', 'NamingSystem', 'CapabilityStatement', 'StructureMap', 'GraphDefinition', 'MessageDefinition', 'TerminologyCapabilities',
]);

export interface ThroughputFigures {
  resources: number;
  megabytes: number;
  schemaOnly: { resourcesPerSecond: number; megabytesPerSecond: number };
  full: { resourcesPerSecond: number; megabytesPerSecond: number };
  /**
   * A reference for the machine's speed in the same run: JSON.parse of the same bytes (what every
   * request pays before validation). Validation figures of runs on different days compare through it.
   */
  jsonParse: { resourcesPerSecond: number; megabytesPerSecond: number };
}

export interface ValidationBench {
  rounds: number;
  examples: ThroughputFigures;
  wholePackage: ThroughputFigures;
  /** Cost of the first validation (artifacts loaded, Patient validator compiled), ms. */
  firstValidationMs: number;
  /** Slowest judgement of a hostile 100,000-character primitive (issue target: under 50 ms). */
  hostile: HostileFigures;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const r1 = (x: number) => Math.round(x * 10) / 10;

interface Loaded {
  resource: Record<string, unknown>;
  text: string;
  bytes: number;
}

function isDefinition(r: Record<string, unknown>): boolean {
  if (DEFINITIONS.has(String(r.resourceType))) return true;
  if (r.resourceType !== 'Bundle' || !Array.isArray(r.entry) || !r.entry.length) return false;
  return (r.entry as { resource?: { resourceType?: string } }[]).every((e) => DEFINITIONS.has(String(e.resource?.resourceType)));
}

function loadExamples(): Loaded[] {
  const require = createRequire(import.meta.url);
  const dir = dirname(require.resolve('hl7.fhir.r4.examples/package.json'));
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json') && f !== 'package.json')
    .sort()
    .map((f) => {
      const text = readFileSync(join(dir, f), 'utf8');
      return { resource: JSON.parse(text) as Record<string, unknown>, text, bytes: Buffer.byteLength(text) };
    });
}

function measure(set: Loaded[], run: (x: Loaded) => unknown, rounds: number): { resourcesPerSecond: number; megabytesPerSecond: number } {
  const bytes = set.reduce((n, x) => n + x.bytes, 0);
  const seconds: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const t0 = process.hrtime.bigint();
    for (const x of set) run(x);
    seconds.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  const s = median(seconds);
  return { resourcesPerSecond: r1(set.length / s), megabytesPerSecond: r1(bytes / 1e6 / s) };
}

/** Measures both validators over both sets; a warm-up round compiles every type first. */
export function validationThroughput(opts: { rounds?: number; log?: (m: string) => void } = {}): ValidationBench {
  const rounds = opts.rounds ?? 3;
  const log = opts.log ?? (() => undefined);
  const all = loadExamples();
  const examples = all.filter((x) => !isDefinition(x.resource));
  const schemaOnly = new R4Validator({ invariants: false, bindings: false });
  const full = new R4Validator();
  const t0 = process.hrtime.bigint();
  full.validate({ resourceType: 'Patient', name: [{ family: 'Warm' }] });
  const firstValidationMs = r1(Number(process.hrtime.bigint() - t0) / 1e6);
  for (const x of all) full.validate(x.resource); // warm-up: every type compiled, every invariant compiled
  const figures = (set: Loaded[], name: string): ThroughputFigures => {
    log(`bench: validation over ${name} (${set.length} resources), schema only\n`);
    const s = measure(set, (x) => schemaOnly.validate(x.resource), rounds);
    log(`bench: validation over ${name}, schema + invariants + bindings\n`);
    const f = measure(set, (x) => full.validate(x.resource), rounds);
    log(`bench: JSON.parse of ${name} (machine reference)\n`);
    const j = measure(set, (x) => JSON.parse(x.text), rounds);
    return { resources: set.length, megabytes: r1(set.reduce((n, x) => n + x.bytes, 0) / 1e6), schemaOnly: s, full: f, jsonParse: j };
  };
  const result = { examples: figures(examples, 'the example instances'), wholePackage: figures(all, 'the whole package') };
  log('bench: hostile 100,000-character primitives, every type\n');
  return { rounds, firstValidationMs, ...result, hostile: hostileTimings(full) };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const res = validationThroughput({ rounds: Number(process.argv[2] ?? 3), log: (m) => process.stderr.write(m) });
  process.stdout.write(`${JSON.stringify(res, null, 1)}\n`);
}
