// Positions for Location near (https://hl7.org/fhir/R4/location.html#positional): latitude and
// longitude in WGS84 degrees, as double precision for the haversine distance computed in SQL
// (search/types/position.ts). The lookup index serves the latitude band that narrows a near search.
// Locations stored before this migration get their rows from their stored content here (a position
// sealed under the PHI policy is not in the content, and is not searchable either).
import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`
    create table idx_position (
      resource_type text not null,
      resource_id text not null,
      param text not null,
      grp smallint,
      latitude double precision not null,
      longitude double precision not null
    )`);
  await knex.raw('create index idx_position_lookup on idx_position (resource_type, param, latitude)');
  await knex.raw('create index idx_position_owner on idx_position (resource_type, resource_id)');
  await knex.raw(`
    insert into idx_position (resource_type, resource_id, param, grp, latitude, longitude)
    select p.resource_type, p.id, 'near', null, p.lat, p.lon
    from (
      select r.resource_type, r.id, (r.content->'position'->>'latitude')::double precision as lat, (r.content->'position'->>'longitude')::double precision as lon
      from resource r
      where r.resource_type = 'Location' and r.deleted = false
        and jsonb_typeof(r.content->'position'->'latitude') = 'number' and jsonb_typeof(r.content->'position'->'longitude') = 'number'
    ) p
    where abs(p.lat) <= 90 and abs(p.lon) <= 180`);
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('drop table if exists idx_position');
}
