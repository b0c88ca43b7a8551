// Current resource rows returned by a search statement (https://hl7.org/fhir/R4/search.html): their
// columns, opened into versions by ResourceStore.openCurrent as every row it reads, so that a page of
// matches is read in the statement that finds it instead of being looked up again by id.
import type { Resource } from 'fhir/r4.js';

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
