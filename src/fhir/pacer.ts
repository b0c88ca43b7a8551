// Cooperative yielding for long CPU work (issue 14: no request may keep the event loop from answering
// /healthz and other requests for more than about a second). Work that grows with a request's size
// (validation, index extraction, sealing, transaction entries) calls pace() between its steps; it
// yields a macrotask only once a slice has run, so calling it often costs one clock read.
// It lives in fhir/ because every layer (http, interactions, search, storage) uses it and fhir/
// imports nothing internal.

/** How long one slice of synchronous work may run before yielding, ms. */
export const SLICE_MS = 15;

let sliceStart = performance.now();

/** Whether the current slice has run long enough that the caller should yield (see pause). */
export function due(): boolean {
  return performance.now() - sliceStart >= SLICE_MS;
}

/**
 * Yields to the event loop (setImmediate: I/O callbacks and timers run first, so a waiting /healthz
 * is answered) and starts a new slice.
 */
export function pause(): Promise<void> {
  return new Promise((resolve) =>
    setImmediate(() => {
      sliceStart = performance.now();
      resolve();
    }),
  );
}

/**
 * Yields if the slice is used up. The slice is shared by the whole process, which is what matters:
 * the loop is blocked by whatever ran since anyone last yielded. After idle time the first call
 * yields once needlessly, which costs one setImmediate.
 */
export async function pace(): Promise<void> {
  if (due()) await pause();
}

/**
 * Drains a generator of synchronous steps, yielding between them whenever a slice is used up: the
 * way a sync algorithm (written once, as a generator) runs paced in a request and unpaced elsewhere.
 */
export async function drainPaced<T>(steps: Generator<unknown, T, void>): Promise<T> {
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
    if (due()) await pause();
  }
}

/** Drains a generator of steps without yielding (callers that must stay synchronous). */
export function drainSync<T>(steps: Generator<unknown, T, void>): T {
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
  }
}

/**
 * JSON.stringify of an array, one element at a time with yields between slices: the same text, for
 * arrays (index rows of a large resource) whose serialisation alone would hold the loop for long.
 */
export async function stringifyArrayPaced(items: readonly unknown[]): Promise<string> {
  const parts: string[] = new Array(items.length);
  for (let i = 0; i < items.length; i++) {
    parts[i] = JSON.stringify(items[i]) ?? 'null';
    if ((i & 255) === 255 && due()) await pause();
  }
  return `[${parts.join(',')}]`;
}
