// The generated validation artifacts (fhir-definitions/generated: schemas, invariants, bindings),
// loaded once on first use (https://hl7.org/fhir/R4/validation.html).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { findPackageRoot } from '../fhir/package-root.js';

export interface SchemaDef {
  type?: string | string[];
  properties?: Record<string, PropertySchema>;
  required?: string[];
  fhirRequired?: string[][];
  fhirChoice?: Record<string, string[]>;
  fhirPrimitiveArrays?: string[];
  [k: string]: unknown;
}

export type PropertySchema = { $ref?: string; type?: string; items?: { $ref?: string }; const?: string };

export interface SchemaDocument {
  $id: string;
  $defs: Record<string, SchemaDef>;
  [k: string]: unknown;
}

export interface ConstraintDef {
  key: string;
  severity: 'error' | 'warning';
  human: string;
  expression: string;
}

export interface InvariantTable {
  constraints: Record<string, ConstraintDef>;
  /** Element path (definition-prefixed, e.g. Patient.contact, Quantity) -> constraint ids. */
  elements: Record<string, string[]>;
}

export interface BindingTable {
  /** Element path -> required value set canonical. */
  elements: Record<string, string>;
  /** Value set -> codes per system, or null when the package cannot expand it. */
  valueSets: Record<string, Record<string, string[]> | null>;
  notExpandable: Record<string, string>;
  /** ValueSet canonicals that are not CodeSystem canonicals. */
  valueSetUrls: Record<string, 1>;
}

export interface ExtensionDef {
  /** Element contexts (type names or element paths) where the extension may appear. */
  context: string[];
  /** Allowed value[x] types; empty for a complex extension (no value). */
  value: string[];
}

function read<T>(name: string): T {
  return JSON.parse(readFileSync(join(findPackageRoot(), 'fhir-definitions', 'generated', name), 'utf8')) as T;
}

let schemas: SchemaDocument | undefined;
let invariants: InvariantTable | undefined;
let bindings: BindingTable | undefined;
let extensions: Record<string, ExtensionDef> | undefined;

export function schemaDocument(): SchemaDocument {
  schemas ??= read<SchemaDocument>('schemas.json');
  return schemas;
}

export function invariantTable(): InvariantTable {
  invariants ??= read<{ data: InvariantTable }>('invariants.json').data;
  return invariants;
}

export function bindingTable(): BindingTable {
  bindings ??= read<{ data: BindingTable }>('bindings.json').data;
  return bindings;
}

/** The core extension definitions of the package, by url. */
export function coreExtensions(): Record<string, ExtensionDef> {
  extensions ??= read<{ data: { extensions: Record<string, ExtensionDef> } }>('extensions.json').data.extensions;
  return extensions;
}
