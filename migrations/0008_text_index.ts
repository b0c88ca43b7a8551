// Full text for `_text` and `_content` (https://hl7.org/fhir/R4/search.html#text; src/search/types/text.ts):
// one tsvector per resource and parameter, never the text itself. A GIN index serves the `@@` match
// (the other index tables avoid GIN for write speed; full text has no B-tree alternative), without a
// pending list; the owner index serves the per-resource probes and the rewrite of a resource's rows.
// Resources stored before this migration get their rows from their stored content here. With PHI
// sealing on, the stored content no longer holds the sealed elements (design.md "PHI at rest"), so
// nothing sealed reaches the index; it is the same document the write path indexes.
import type { Knex } from 'knex';
import { paramsOf } from '../src/search/registry.js';
import { extractText, TEXT_SEARCH_CONFIG, textDocument } from '../src/search/types/text.js';

/** Resources read per round trip while indexing what is already stored. */
const BATCH = 500;

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`
    create table idx_text (
      resource_type text collate "C" not null,
      resource_id text collate "C" not null,
      param text collate "C" not null,
      grp smallint,
      doc tsvector not null
    )`);
  await knex.raw('create index idx_text_owner on idx_text (resource_type, resource_id, param)');
  let after: [string, string] = ['', ''];
  for (;;) {
    const res = (await knex.raw(
      `select resource_type, id, content from resource
       where deleted = false and (resource_type, id) > (?, ?)
       order by resource_type, id limit ?`,
      [after[0], after[1], BATCH],
    )) as { rows: { resource_type: string; id: string; content: Record<string, unknown> | string }[] };
    if (!res.rows.length) break;
    const records: { t: string; i: string; p: string; doc: string }[] = [];
    for (const r of res.rows) {
      let params;
      try {
        params = paramsOf(r.resource_type).fullText;
      } catch {
        continue; // a type this release does not know
      }
      const content = typeof r.content === 'string' ? (JSON.parse(r.content) as Record<string, unknown>) : r.content;
      for (const row of extractText(content, params)) {
        const doc = textDocument(row);
        if (doc !== undefined) records.push({ t: r.resource_type, i: r.id, p: row.param, doc });
      }
    }
    if (records.length) {
      await knex.raw(
        `insert into idx_text (resource_type, resource_id, param, doc)
         select t, i, p, to_tsvector('${TEXT_SEARCH_CONFIG}', doc) from json_to_recordset(?::json) as x(t text, i text, p text, doc text)`,
        [JSON.stringify(records)],
      );
    }
    const last = res.rows[res.rows.length - 1];
    after = [last.resource_type, last.id];
  }
  // Built after the rows are in (one sort). fastupdate off: each write updates the index itself
  // instead of a pending list, which design.md warns about under bulk writes (a writer that fills the
  // list pays its whole merge, and every search scans the unmerged list): steadier write and search
  // times for a somewhat higher cost per write.
  await knex.raw('create index idx_text_doc on idx_text using gin (doc) with (fastupdate = off)');
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('drop table if exists idx_text');
}
