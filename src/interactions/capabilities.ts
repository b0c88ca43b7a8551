// capabilities: GET [base]/metadata (https://hl7.org/fhir/R4/http.html#capabilities). Built from
// the same tables the server runs on: the generated resource types, the interactions the router
// serves, and the search parameters the index extractor actually indexes.
import type { CapabilityStatement, CapabilityStatementRestResource } from 'fhir/r4.js';
import { resourceTypeInfo, searchParamsFor } from '../fhir/definitions.js';
import { isIndexedTokenParam } from '../search/index-extract.js';
import type { InteractionResult, RequestContext, Services } from './context.js';

/** Type-level interactions the router serves for every resource type. */
export const TYPE_INTERACTIONS = ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'history-type', 'create', 'search-type'] as const;
/** System-level interactions the router serves. */
export const SYSTEM_INTERACTIONS = ['transaction', 'batch', 'history-system'] as const;

export const SOFTWARE = { name: 'Vesta', version: '0.1.0' };

const STARTED = new Date().toISOString();

let cached: { key: string; statement: CapabilityStatement } | undefined;

function build(svc: Services, ctx: RequestContext): CapabilityStatement {
  const resources: CapabilityStatementRestResource[] = resourceTypeInfo().map(({ type }) => {
    const params = searchParamsFor(type).filter((p) => isIndexedTokenParam(type, p.code));
    return {
      type: type as CapabilityStatementRestResource['type'],
      profile: `http://hl7.org/fhir/StructureDefinition/${type}`,
      interaction: TYPE_INTERACTIONS.map((code) => ({ code })),
      versioning: 'versioned-update',
      readHistory: true,
      updateCreate: true,
      conditionalCreate: true,
      conditionalRead: 'not-supported',
      conditionalUpdate: true,
      conditionalDelete: 'single',
      operation: [{ name: 'validate', definition: 'http://hl7.org/fhir/OperationDefinition/Resource-validate' }],
      searchParam: [
        { name: '_id', type: 'token', definition: 'http://hl7.org/fhir/SearchParameter/Resource-id', documentation: 'Logical id of the resource' },
        ...params.map((p) => ({ name: p.code, type: p.type as 'token', definition: p.url, documentation: p.description })),
      ],
    };
  });
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: STARTED,
    publisher: 'Vesta',
    kind: 'instance',
    software: SOFTWARE,
    implementation: { description: 'Vesta FHIR R4 server', url: ctx.baseUrl },
    fhirVersion: '4.0.1',
    format: ['application/fhir+json', 'json'],
    patchFormat: ['application/json-patch+json'],
    rest: [
      {
        mode: 'server',
        documentation:
          'JSON only: XML request bodies are refused with 415 and XML responses with 406. Search supports _id and the ' +
          'token parameters listed per type, with _count, _total and paging; other parameters are ignored and reported ' +
          '(400 with Prefer: handling=strict). Transaction and batch Bundles are supported (PATCH entries as a JSON Patch Binary; no $operations inside Bundles). $validate checks against the base R4 definitions only (no named profiles). ' +
          'Conditional create/update/delete/patch criteria are serialized per criteria by a database lock.',
        resource: resources,
        interaction: SYSTEM_INTERACTIONS.map((code) => ({ code })),
      },
    ],
  };
}

export async function capabilities(svc: Services, ctx: RequestContext): Promise<InteractionResult> {
  if (!cached || cached.key !== ctx.baseUrl) cached = { key: ctx.baseUrl, statement: build(svc, ctx) };
  return { status: 200, body: cached.statement };
}
