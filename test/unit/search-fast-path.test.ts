// The fast evaluator (src/search/fast-path.ts) must give exactly what fhirpath.js gives for every
// official search parameter branch it accepts: same values, same order, same datatypes for objects,
// over the official examples and the Synthea fixtures.
import { describe, expect, test } from '@jest/globals';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import fhirpath from 'fhirpath';
import r4model from 'fhirpath/fhir-context/r4/index.js';
import { searchParamsFor } from '../../src/fhir/definitions.js';
import { rewriteExpression, splitUnion } from '../../src/search/expressions.js';
import { compileFast, fastNodeType, parseSimple } from '../../src/search/fast-path.js';

type Res = Record<string, unknown> & { resourceType: string };

function corpus(): Res[] {
  const out: Res[] = [];
  const ex = join(process.cwd(), 'node_modules', 'hl7.fhir.r4.examples');
  const skip = /^(StructureDefinition|SearchParameter|ValueSet|CodeSystem|ConceptMap|OperationDefinition|CompartmentDefinition|CapabilityStatement|ImplementationGuide|NamingSystem|StructureMap)-/;
  for (const f of readdirSync(ex).filter((x) => x.endsWith('.json') && !skip.test(x) && x !== 'package.json' && !x.startsWith('.'))) {
    try {
      const r = JSON.parse(readFileSync(join(ex, f), 'utf8')) as Res;
      if (typeof r.resourceType === 'string' && r.resourceType !== 'Bundle') out.push(r);
    } catch {
      /* not a resource */
    }
  }
  const sy = join(process.cwd(), 'test', 'fixtures', 'synthea');
  for (const f of readdirSync(sy).filter((x) => x.endsWith('.json') && x !== 'manifest.json')) {
    for (const e of (JSON.parse(readFileSync(join(sy, f), 'utf8')) as { entry: { resource: Res }[] }).entry) out.push(e.resource);
  }
  return out;
}

describe('fast path for simple search parameter expressions', () => {
  test('parses the simple shapes and refuses the rest', () => {
    expect(parseSimple('Observation.subject.where(resolve() is Patient)')).toEqual({ root: 'Observation', steps: [{ name: 'subject', refType: 'Patient' }] });
    expect(parseSimple('(Observation.value as Quantity)')).toEqual({ root: 'Observation', steps: [{ name: 'value', ofType: 'Quantity' }] });
    expect(parseSimple('Patient.name.given')).toEqual({ root: 'Patient', steps: [{ name: 'name' }, { name: 'given' }] });
    expect(parseSimple("Patient.telecom.where(system='phone')")).toBeUndefined();
    expect(parseSimple('Bundle.entry[0].resource')).toBeUndefined();
    expect(parseSimple('Observation')).toBeUndefined();
  });

  test('agrees with fhirpath.js on every accepted branch over the official examples and Synthea', () => {
    const resources = corpus();
    const byType = new Map<string, Res[]>();
    for (const r of resources) byType.set(r.resourceType, [...(byType.get(r.resourceType) ?? []), r]);
    let branches = 0;
    let accepted = 0;
    let comparisons = 0;
    let values = 0;
    const mismatches: string[] = [];
    for (const [type, list] of byType) {
      for (const def of searchParamsFor(type)) {
        if (!def.expression || def.type === 'composite' || def.type === 'special') continue;
        for (const branch of splitUnion(def.expression)) {
          branches++;
          const fast = compileFast(branch, type);
          if (!fast) continue;
          accepted++;
          const slow = fhirpath.compile(splitUnion(rewriteExpression(branch))[0], r4model) as unknown as (d: unknown, e?: unknown) => unknown[];
          for (const r of list) {
            const want = slow(r, { resource: r });
            const got = fast(r);
            comparisons++;
            values += got.length;
            const same = want.length === got.length && want.every((w, i) => w === got[i] || (typeof w !== 'object' && w === got[i]));
            const types = got.every((g, i) => typeof g !== 'object' || fastNodeType(g) === (want[i] as { __path__?: { fhirNodeDataType?: string } }).__path__?.fhirNodeDataType);
            if (!same || !types) mismatches.push(`${type} ${def.code} ${branch} on ${String(r.id)}`);
          }
        }
      }
    }
    process.stdout.write(`fast path: ${accepted} of ${branches} branches accepted; ${comparisons} evaluations, ${values} values compared; ${mismatches.length} mismatches\n`);
    expect(mismatches.slice(0, 20)).toEqual([]);
    expect(accepted / branches).toBeGreaterThan(0.7);
    expect(values).toBeGreaterThan(5000);
  }, 120_000);
});
