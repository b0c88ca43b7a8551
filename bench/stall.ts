// Event-loop stalls (issue 14): how long /healthz waits while one hostile or very large request runs.
// A poller in the bench process asks /healthz back to back; for each body below, the slowest answer
// seen while that request was in flight is its stall (the server is a separate process, so the
// poller's own work does not count). Figures in ms; `worstMs` is the slowest of all.

export interface StallCase {
  body: string;
  /** Size of the request body, bytes. */
  bytes: number;
  status: number;
  /** Request time, ms. */
  requestMs: number;
  /** Slowest /healthz answer while the request ran, ms. */
  healthzMs: number;
}

export interface StallResult {
  cases: StallCase[];
  worstMs: number;
  worstBody: string;
}

const zeros = (n: number) => ({ resourceType: 'Observation', status: 'final', code: { text: 'x' }, category: new Array(n).fill(0) });
const tx = (entry: unknown[]) => ({ resourceType: 'Bundle', type: 'transaction', entry });

/** The hostile and large bodies: [name, method, path, body]. */
function bodies(): [string, string, string, unknown][] {
  const observations = Array.from({ length: 5000 }, (_, i) => ({
    resource: { resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] }, valueQuantity: { value: i, unit: '/min' } },
    request: { method: 'POST', url: 'Observation' },
  }));
  const giantCategories = {
    resourceType: 'Observation',
    status: 'final',
    code: { text: 'x' },
    category: Array.from({ length: 15_000 }, (_, i) => ({ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: i % 2 ? 'vital-signs' : 'laboratory' }] })),
  };
  // about 30 MB of valid content under the 32 MB default body limit
  const bigValid = { resourceType: 'Observation', status: 'final', code: { text: 'x' }, note: Array.from({ length: 30_000 }, () => ({ text: 'n'.repeat(1000) })) };
  return [
    ['64,000 zeros: create', 'POST', '/Observation', zeros(64_000)],
    ['64,000 zeros: update', 'PUT', '/Observation/zeros', { ...zeros(64_000), id: 'zeros' }],
    ['64,000 zeros: $validate', 'POST', '/Observation/$validate', zeros(64_000)],
    ['64,000 zeros: transaction', 'POST', '/', tx([{ resource: zeros(64_000), request: { method: 'POST', url: 'Observation' } }])],
    ['128,000 zeros: create', 'POST', '/Observation', zeros(128_000)],
    ['200,000-item array in a transaction', 'POST', '/', tx([{ resource: { resourceType: 'Basic', code: { text: 'x' }, extension: new Array(200_000).fill(0) }, request: { method: 'POST', url: 'Basic' } }])],
    ['1,000,000 zeros (about 2 MB): create', 'POST', '/Observation', zeros(1_000_000)],
    // JSON.parse cost follows the number of values: refused before parsing above MAX_BODY_VALUES.
    ['1,000,000 empty objects (about 3 MB): create', 'POST', '/Observation', { ...zeros(0), category: Array.from({ length: 1_000_000 }, () => ({})) }],
    ['50,000 valid names: create', 'POST', '/Patient', { resourceType: 'Patient', name: Array.from({ length: 50_000 }, (_, i) => ({ family: `F${i}`, given: ['G'] })) }],
    ['about 30 MB valid Observation: create', 'POST', '/Observation', bigValid],
    ['transaction of 5,000 Observations', 'POST', '/', tx(observations)],
    // The fuzz test's worst body (issue 14): a transaction of a few resources, each with a giant array.
    ['transaction of 8 Observations with 15,000 categories each (about 12 MB)', 'POST', '/', tx(Array.from({ length: 8 }, () => ({ resource: giantCategories, request: { method: 'POST', url: 'Observation' } })))],
  ];
}

async function poll(base: string, stop: { done: boolean }, onAnswer: (ms: number) => void): Promise<void> {
  while (!stop.done) {
    const t0 = performance.now();
    try {
      const r = await fetch(`${base}/healthz`);
      await r.arrayBuffer();
    } catch {
      // a refused connection is a stall too: it counts by its time
    }
    onAnswer(performance.now() - t0);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Sends each body once, one at a time, and reports the slowest /healthz answer during each. */
export async function stallProbe(base: string, headers: Record<string, string>): Promise<StallResult> {
  const cases: StallCase[] = [];
  for (const [name, method, path, body] of bodies()) {
    const text = JSON.stringify(body);
    let worst = 0;
    const stop = { done: false };
    const poller = poll(base, stop, (ms) => (worst = Math.max(worst, ms)));
    const t0 = performance.now();
    const res = await fetch(base + path, { method, headers: { ...headers, 'Content-Type': 'application/fhir+json' }, body: text });
    await res.arrayBuffer();
    const requestMs = performance.now() - t0;
    stop.done = true;
    await poller;
    cases.push({ body: name, bytes: Buffer.byteLength(text), status: res.status, requestMs: Math.round(requestMs), healthzMs: Math.round(worst) });
    process.stderr.write(`bench: stall ${name}: ${res.status}, ${Math.round(requestMs)} ms, /healthz waited ${Math.round(worst)} ms\n`);
  }
  const w = cases.reduce((a, b) => (b.healthzMs > a.healthzMs ? b : a));
  return { cases, worstMs: w.healthzMs, worstBody: w.body };
}
