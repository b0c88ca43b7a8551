// Turns a JSON Pointer into the FHIRPath location of an OperationOutcome issue
// (https://hl7.org/fhir/R4/operationoutcome-definitions.html#OperationOutcome.issue.expression):
// /name/0/given/1 -> Patient.name[0].given[1]; /valueQuantity -> Observation.value.ofType(Quantity).
import { definition, safeName, step } from './type-model.js';

function unescape(seg: string): string {
  return seg.replace(/~1/g, '/').replace(/~0/g, '~');
}

/** FHIRPath location of `pointer` inside `resource` (a resource of type `type`). */
export function fhirPathOf(type: string, resource: unknown, pointer: string): string {
  let out = type;
  let def = definition(type);
  let node: unknown = resource;
  const segs = pointer === '' ? [] : pointer.split('/').slice(1).map(unescape);
  for (let i = 0; i < segs.length; i++) {
    const seg = segs[i];
    if (Array.isArray(node)) {
      out += /^[0-9]+$/.test(seg) ? `[${seg}]` : '[?]';
      node = node[Number(seg)];
      continue;
    }
    const prop = def?.props.get(seg);
    if (!prop) {
      // Unknown element: name it if it looks like an element name, then stop interpreting.
      return `${out}.${safeName(seg)}${segs.length > i + 1 ? '...' : ''}`;
    }
    out += step(prop);
    node = node && typeof node === 'object' ? (node as Record<string, unknown>)[seg] : undefined;
    // Inside a value (items of an array included) the definition is the property's target.
    if (prop.kind === 'resource') {
      const items = prop.array ? segs[i + 1] : undefined;
      const value = items !== undefined && Array.isArray(node) ? node[Number(items)] : node;
      const rt = value && typeof value === 'object' ? (value as { resourceType?: unknown }).resourceType : undefined;
      def = typeof rt === 'string' ? definition(rt) : undefined;
    } else if (prop.kind === 'sibling') {
      def = definition('Element');
    } else {
      def = definition(prop.target);
    }
  }
  return out;
}
