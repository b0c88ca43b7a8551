// Index rows (https://hl7.org/fhir/R4/search.html#ptypes): what extraction produces for one resource
// version and storage writes to the per-type tables of migrations/0002_search_index.ts (and
// 0005_position_index.ts for positions, 0008_text_index.ts for full text).

interface RowBase {
  /** Parameter code; `code$i` for component i of a composite, `code:identifier` / `code:of-type` for derived rows. */
  param: string;
  /** Groups the component rows of one composite value; absent for plain parameters. */
  grp?: number | null;
}

export interface TokenRow extends RowBase {
  system: string | null;
  code: string | null;
  /** Normalised display / CodeableConcept.text / Identifier.type.text, for :text. */
  text?: string | null;
}

export interface StringRow extends RowBase {
  norm: string;
  exact: string;
}

export interface ReferenceRow extends RowBase {
  targetType: string | null;
  targetId: string | null;
  url: string | null;
  version: string | null;
}

/** [low, high) in epoch milliseconds. */
export interface DateRow extends RowBase {
  low: number;
  high: number;
}

/** Closed [low, high] as decimal strings ('-Infinity' / 'Infinity' for open bounds). */
export interface NumberRow extends RowBase {
  low: string;
  high: string;
}

export interface QuantityRow extends NumberRow {
  system: string | null;
  code: string | null;
  unit: string | null;
}

export interface UriRow extends RowBase {
  uri: string;
}

/** A point on the Earth (WGS84 degrees), for Location near (location.html#positional). */
export interface PositionRow extends RowBase {
  latitude: number;
  longitude: number;
}

/**
 * Full text of `_text` / `_content` (search/types/text.ts): pieces of text with the element path each
 * came from, so the PHI seam can drop sealed elements; stored as one tsvector, never as text.
 */
export interface TextRow extends RowBase {
  pieces: [path: string, text: string][];
}

export interface IndexRows {
  token: TokenRow[];
  string?: StringRow[];
  reference?: ReferenceRow[];
  date?: DateRow[];
  number?: NumberRow[];
  quantity?: QuantityRow[];
  uri?: UriRow[];
  position?: PositionRow[];
  text?: TextRow[];
}

/** Every index table and the IndexRows member that feeds it. */
export const INDEX_TABLES = {
  token: 'idx_token',
  string: 'idx_string',
  reference: 'idx_reference',
  date: 'idx_date',
  number: 'idx_number',
  quantity: 'idx_quantity',
  uri: 'idx_uri',
  position: 'idx_position',
  text: 'idx_text',
} as const;

export type IndexKind = keyof typeof INDEX_TABLES;

export function emptyRows(): Required<IndexRows> {
  return { token: [], string: [], reference: [], date: [], number: [], quantity: [], uri: [], position: [], text: [] };
}
