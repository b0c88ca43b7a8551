// Current resource rows returned by a search statement (https://hl7.org/fhir/R4/search.html): opened
// into versions the way storage/resource-store.ts opens the rows it reads, so that a page of matches
// is read in the statement that finds it instead of being looked up again by id.
import type { Resource } from 'fhir/r4.js';
import type { PhiCodec } from '../crypto/phi-codec.js';
import type { StoredVersion } from './resource-store.js';

/** The columns of a current row a search selects (`r.` prefixed in its SQL: CURRENT_COLUMNS). */
export interface CurrentRow {
  resource_type: string;
  id: string;
  version_id: number;
  last_updated: Date | string;
  content: Resource | string | null;
  sealed: string | null;
}

/** Select list of the row columns (on alias `r`) beyond resource_type and id. */
export const CURRENT_COLUMNS = 'r.version_id, r.last_updated, r.content, r.sealed';

/** A live current row as the version ResourceStore.readMany returns for it (method PUT, not deleted). */
export async function openCurrentRow(codec: PhiCodec, row: CurrentRow): Promise<StoredVersion> {
  const v: StoredVersion = {
    resourceType: row.resource_type,
    id: row.id,
    versionId: row.version_id,
    lastUpdated: row.last_updated instanceof Date ? row.last_updated : new Date(row.last_updated),
    deleted: false,
    method: 'PUT',
  };
  if (row.content !== null) {
    const content = typeof row.content === 'string' ? (JSON.parse(row.content) as Resource) : row.content;
    const opened = await codec.open(content, row.sealed, { resourceType: v.resourceType, id: v.id, versionId: v.versionId });
    // jsonb does not keep member order; put the envelope first as clients expect to read it.
    const { resourceType, id, meta, ...rest } = opened as Resource & Record<string, unknown>;
    v.resource = { resourceType, id, meta, ...rest } as Resource;
  }
  return v;
}
