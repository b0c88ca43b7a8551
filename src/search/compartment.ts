// Compartment search (https://hl7.org/fhir/R4/compartmentdefinition.html, search.html#compartments):
// GET [base]/Patient/123/Observation finds the Observations in Patient 123's compartment, as the
// official CompartmentDefinition names the parameters that make a resource a member.
import { FhirError } from '../fhir/errors.js';
import { compartmentDefinitions, type CompartmentDef } from '../fhir/definitions.js';
import { paramsOf } from './registry.js';
import { frag, or, type SqlFragment } from './sql.js';

function definition(compartment: string): CompartmentDef {
  const def = compartmentDefinitions().find((c) => c.code === compartment);
  if (!def) throw new FhirError('unknown-route', `${compartment.slice(0, 64)} is not a compartment (compartments: ${compartmentDefinitions().map((c) => c.code).join(', ')})`);
  return def;
}

/** Whether the type is a compartment type (Patient, Encounter, RelatedPerson, Practitioner, Device). */
export function isCompartment(type: string): boolean {
  return compartmentDefinitions().some((c) => c.code === type);
}

/** The resource types that can be members of the compartment, with their membership parameters. */
export function compartmentMembers(compartment: string): { type: string; params: string[] }[] {
  return definition(compartment).resources.filter((r) => r.params.length);
}

/**
 * Condition on `r` (of one resource type) that it belongs to compartment `compartment`/`id`: one of the
 * compartment's reference parameters points at it, or (`{def}`) it is the compartment resource itself.
 */
export function compartmentCondition(compartment: string, id: string, type: string): SqlFragment {
  const member = definition(compartment).resources.find((r) => r.type === type);
  if (!member || !member.params.length) throw new FhirError('invalid-search', `${type} resources are not in the ${compartment} compartment`);
  const served = paramsOf(type).supported;
  const refParams = member.params.filter((p) => served.get(p)?.kind === 'reference');
  const conds: SqlFragment[] = [];
  if (member.params.includes('{def}') && type === compartment) conds.push(frag('r.id = ?', id));
  if (refParams.length) {
    conds.push(
      frag(
        `exists (select 1 from idx_reference m where m.resource_type = r.resource_type and m.resource_id = r.id and m.param in (${refParams.map(() => '?').join(', ')}) and m.target_type = ? and m.target_id = ?)`,
        ...refParams,
        compartment,
        id,
      ),
    );
  }
  return or(conds);
}
