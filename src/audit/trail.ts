// What one interaction touched, collected while it runs (issue 16): the resources read or written
// with their versions, the patients whose compartment they are in, the query of a search. Pure: no
// I/O. The audit path (audit/auditor.ts) turns a trail and the interaction's status into a BALP
// AuditEvent. A transaction or batch Bundle gives each entry a child trail of its own, so every entry
// leaves its own record beside the Bundle's.

export interface TouchedResource {
  type: string;
  id: string;
  version?: string;
}

export class AuditTrail {
  readonly resources: TouchedResource[] = [];
  readonly patients = new Set<string>();
  query: { type?: string; pairs: [string, string][] } | undefined;
  /** Set once the record is appended (in the write's transaction, or by the read path). */
  recorded = false;
  /** Entries of a transaction or batch Bundle, in request order. */
  readonly entries: AuditTrail[] = [];
  /**
   * True for the entries of a transaction Bundle: their records are appended together with the
   * Bundle's, in its database transaction, not by the entry's own write.
   */
  readonly deferred: boolean;

  constructor(
    /** Set again once known (a Bundle entry's, after its request is parsed). */
    public interaction: string,
    public resourceType?: string,
    opts: { deferred?: boolean } = {},
  ) {
    this.deferred = opts.deferred ?? false;
  }

  /** A resource read or written (its version when known) and the patients whose compartment holds it. */
  resource(type: string, id: string, version?: string | number, patients: Iterable<string> = []): void {
    const v = version === undefined ? undefined : String(version);
    // The target named before the interaction found it (a read's id) gets its version once known.
    const unversioned = v !== undefined ? this.resources.find((r) => r.type === type && r.id === id && r.version === undefined) : undefined;
    if (unversioned) unversioned.version = v;
    else if (!this.resources.some((r) => r.type === type && r.id === id && r.version === v)) {
      this.resources.push({ type, id, ...(v !== undefined ? { version: v } : {}) });
    }
    for (const p of patients) this.patients.add(p);
  }

  /** Forgets what an attempt touched (a retried transaction starts again), entries' included. */
  reset(): void {
    this.resources.length = 0;
    this.patients.clear();
    for (const e of this.entries) e.reset();
  }

  patient(id: string): void {
    this.patients.add(id);
  }

  /**
   * The search or history query (values are sealed with the record, never logged), and the patients
   * it names: `patient=`, or a `subject=`/`patient=` reference to a Patient.
   */
  search(type: string | undefined, pairs: readonly [string, string][]): void {
    this.query = { ...(type ? { type } : {}), pairs: pairs.filter(([k]) => k !== '_format' && k !== '_pretty').map(([k, v]) => [k, v]) };
    for (const [k, value] of pairs) {
      const name = k.split(':')[0];
      if (name !== 'patient' && name !== 'subject') continue;
      for (const one of value.split(',')) {
        const m = /^(?:.*\/)?Patient\/([A-Za-z0-9\-.]{1,64})$/.exec(one) ?? (name === 'patient' ? /^([A-Za-z0-9\-.]{1,64})$/.exec(one) : null);
        if (m) this.patients.add(m[1]);
      }
    }
  }

  /** The trail of one entry of a Bundle. */
  entry(interaction: string, resourceType: string | undefined, deferred: boolean): AuditTrail {
    const t = new AuditTrail(interaction, resourceType, { deferred });
    this.entries.push(t);
    return t;
  }
}
