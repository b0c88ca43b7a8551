// SQL planning for a SearchRequest over Vesta's schema. Produces SQL text with placeholders and
// bindings only: every value is bound, never spliced (https://hl7.org/fhir/R4/search.html).
import { FhirError } from '../fhir/errors.js';
import type { SearchRequest } from './parse.js';
import { splitToken } from './parse.js';

export interface SqlFragment {
  sql: string;
  bindings: (string | number)[];
}

/** WHERE conditions on `r` (the resource table) for the request's clauses. */
export function planWhere(req: SearchRequest): SqlFragment {
  const conds: string[] = ['r.resource_type = ?', 'r.deleted = false'];
  const bindings: (string | number)[] = [req.resourceType];
  for (const c of req.clauses) {
    if (c.code === '_id') {
      conds.push(`r.id in (${c.values.map(() => '?').join(', ')})`);
      bindings.push(...c.values);
      continue;
    }
    if (c.def.type !== 'token') throw new FhirError('unsupported-search', `parameter ${c.code} is not supported yet`);
    const ors: string[] = [];
    for (const v of c.values) {
      const t = splitToken(v);
      const parts = ['t.param = ?'];
      const b: string[] = [c.code];
      if (t.hasBar && t.system === undefined) parts.push('t.system is null');
      else if (t.system !== undefined) {
        parts.push('t.system = ?');
        b.push(t.system);
      }
      if (t.code !== undefined) {
        parts.push('t.code = ?');
        b.push(t.code);
      }
      if (!t.hasBar && t.code === undefined) throw new FhirError('invalid-search', `parameter ${c.code} has an empty value`);
      ors.push(`(${parts.join(' and ')})`);
      bindings.push(...b);
    }
    conds.push(
      `exists (select 1 from idx_token t where t.resource_type = r.resource_type and t.resource_id = r.id and (${ors.join(' or ')}))`,
    );
  }
  return { sql: conds.join(' and '), bindings };
}
