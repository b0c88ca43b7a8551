// The element model of each R4 definition (https://hl7.org/fhir/R4/elementdefinition.html), read back
// from the generated JSON Schemas: for every property of a resource, datatype or backbone element,
// what it is, where its definition lives and how to name it in a FHIRPath location.
import { schemaDocument, type SchemaDef } from './artifacts.js';

export type PropKind = 'primitive' | 'complex' | 'resource' | 'sibling';

export interface PropInfo {
  /** JSON property name (valueQuantity, _given). */
  name: string;
  /** The name of its `_` sibling (_valueQuantity), built once: the walk looks it up at every primitive. */
  siblingName: string;
  kind: PropKind;
  array: boolean;
  /** Definition of the value: a primitive type, datatype, backbone path, 'Element' for _ siblings, 'Resource'. */
  target: string;
  /** Element name as FHIRPath sees it (value for valueQuantity, given for _given). */
  element: string;
  /** Element path for constraints and bindings (Observation.value[x], Patient.contact). */
  elementPath: string;
  /** For choice variants, the type named in ofType(): Quantity, dateTime. */
  choiceType?: string;
  /** The FHIRPath step (see step()), built once: the walk appends it at every node. */
  step: string;
  /** The definition of `target` when it has elements (datatype, backbone, Element), resolved once for the walk. */
  targetDef?: DefInfo;
  /** What the walk derives once per property (walker.ts planOf): held here, a map lookup at every node costs more than the rest of the visit. */
  walkPlan?: unknown;
}

export interface DefInfo {
  name: string;
  props: Map<string, PropInfo>;
  isResource: boolean;
}

const PRIMITIVE_TYPES = new Set<string>();
let model: Map<string, DefInfo> | undefined;

function refName(ref: string | undefined): string | undefined {
  return ref?.startsWith('#/$defs/') ? ref.slice(8) : undefined;
}

function build(): Map<string, DefInfo> {
  const defs = schemaDocument().$defs;
  for (const [name, d] of Object.entries(defs)) {
    if (d.type !== 'object' && !name.endsWith('-or-null') && name !== 'Element-or-null') PRIMITIVE_TYPES.add(name);
  }
  const out = new Map<string, DefInfo>();
  for (const [name, d] of Object.entries(defs)) {
    if (!d.properties) continue;
    out.set(name, defInfo(name, d));
  }
  for (const d of out.values()) {
    for (const p of d.props.values()) {
      const t = out.get(p.target);
      if (t) p.targetDef = t;
    }
  }
  return out;
}

function defInfo(name: string, d: SchemaDef): DefInfo {
  const choiceOf = new Map<string, string>();
  for (const [base, variants] of Object.entries(d.fhirChoice ?? {})) for (const v of variants) choiceOf.set(v, base);
  const props = new Map<string, PropInfo>();
  for (const [prop, s] of Object.entries(d.properties ?? {})) {
    if (prop === 'resourceType') continue;
    const array = s.type === 'array';
    let target = refName(array ? s.items?.$ref : s.$ref) ?? '';
    if (target.endsWith('-or-null')) target = target.slice(0, -8);
    const sibling = prop.startsWith('_');
    const element = sibling ? prop.slice(1) : prop;
    const base = choiceOf.get(element);
    const kind: PropKind = sibling ? 'sibling' : target === 'Resource' ? 'resource' : PRIMITIVE_TYPES.has(target) ? 'primitive' : 'complex';
    const info: PropInfo = {
      name: prop,
      siblingName: `_${prop}`,
      kind,
      array,
      target,
      element: base ?? element,
      elementPath: `${name}.${base ? `${base}[x]` : element}`,
      step: '',
    };
    if (base) {
      const suffix = element.slice(base.length);
      const primitiveVariant = sibling ? PRIMITIVE_TYPES.has(refName(d.properties?.[element]?.$ref) ?? '') : kind === 'primitive';
      info.choiceType = primitiveVariant ? suffix.charAt(0).toLowerCase() + suffix.slice(1) : suffix;
    }
    info.step = info.choiceType ? `.${info.element}.ofType(${info.choiceType})` : `.${info.element}`;
    props.set(prop, info);
  }
  return { name, props, isResource: d.properties?.resourceType !== undefined };
}

/** The definition named (resource type, datatype or backbone path), or undefined. */
export function definition(name: string): DefInfo | undefined {
  model ??= build();
  return model.get(name);
}

export function isPrimitiveType(name: string): boolean {
  model ??= build();
  return PRIMITIVE_TYPES.has(name);
}

/** The FHIRPath step for a property: `.given`, `.value.ofType(Quantity)`. */
export function step(p: PropInfo): string {
  return p.step;
}

/** An element name safe to show in a message or location (property names are chosen by the client). */
export function safeName(name: string): string {
  return /^_?[A-Za-z][A-Za-z0-9_]{0,63}$/.test(name) ? name : '?';
}
