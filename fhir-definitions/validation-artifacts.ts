// Validation artifacts from the R4 StructureDefinition snapshots (https://hl7.org/fhir/R4/validation.html):
// JSON Schemas for ajv (schemas.json), FHIRPath invariants (invariants.json) and required bindings with
// their codes (bindings.json). Called by generate.ts; output is committed and checked by CI.
import { Expander } from './value-set-expansion.js';

interface Json { [k: string]: any }

/** JSON representation of primitives (https://hl7.org/fhir/R4/json.html#primitive): the snapshots type
 * some `.value` elements as System.String (positiveInt, unsignedInt), so the JSON type is fixed here. */
const JSON_NUMBER_TYPES: Record<string, Json> = {
  integer: { type: 'integer', minimum: -2147483648, maximum: 2147483647 },
  positiveInt: { type: 'integer', minimum: 1, maximum: 2147483647 },
  unsignedInt: { type: 'integer', minimum: 0, maximum: 2147483647 },
  decimal: { type: 'number' },
};

/**
 * Regexes of the spec that backtrack catastrophically, each with an equivalent linear rewrite. The
 * generator refuses to run if the package's regex differs from the one a rewrite was written for.
 *   base64Binary `(\s*([0-9a-zA-Z\+/=]){4}\s*)+`: a whitespace run between two quads can be split
 *   between the trailing \s* of one repetition and the leading \s* of the next, so a failing match
 *   tries exponentially many splits. `\s*(?:[0-9a-zA-Z+/=]{4}\s*)+` accepts the same language
 *   (optional leading whitespace, then quads each followed by optional whitespace) with one parse.
 */
const SAFE_REWRITES: Record<string, { spec: string; safe: string }> = {
  base64Binary: { spec: '(\\s*([0-9a-zA-Z\\+/=]){4}\\s*)+', safe: '\\s*(?:[0-9a-zA-Z+/=]{4}\\s*)+' },
};

const WS = ['\\t', '\\n', '\\x0B', '\\f', '\\r', ' '];

/**
 * The spec's regexes come from XML Schema and Java, where \s is ASCII whitespace; in a JavaScript
 * regex with the u flag \s also matches Unicode spaces (NBSP, U+2028, ...), which would reject values
 * the reference validator accepts. \s and \S are spelled out as ASCII classes. A positive class that
 * holds \S with whitespace characters becomes the negated class of the remaining whitespace
 * (`[ \r\n\t\S]` is `[^\x0B\f]`); any other use of \S in a class is refused.
 */
export function asciiWhitespace(regex: string): string {
  let out = '';
  for (let i = 0; i < regex.length; i++) {
    const ch = regex[i];
    if (ch === '\\') {
      const next = regex[i + 1];
      if (next === 's') out += `[${WS.join('')}]`;
      else if (next === 'S') out += `[^${WS.join('')}]`;
      else out += ch + next;
      i++;
      continue;
    }
    if (ch !== '[') {
      out += ch;
      continue;
    }
    let j = i + 1;
    const negated = regex[j] === '^';
    if (negated) j++;
    const members: string[] = [];
    while (j < regex.length && regex[j] !== ']') {
      if (regex[j] === '\\') {
        members.push(regex.slice(j, j + 2));
        j += 2;
      } else members.push(regex[j++]);
    }
    i = j;
    if (members.includes('\\S')) {
      const rest = members.filter((m) => m !== '\\S');
      if (negated || !rest.every((m) => WS.includes(m))) throw new Error(`unsupported use of \\S in ${regex}`);
      out += `[^${WS.filter((w) => !rest.includes(w)).join('')}]`;
      continue;
    }
    out += `[${negated ? '^' : ''}${members.map((m) => (m === '\\s' ? WS.join('') : m)).join('')}]`;
  }
  return out;
}

/** Calendar checks on top of the regexes (the regexes accept 2021-02-30); implemented in src/validation. */
const FORMATS: Record<string, string> = { date: 'fhir-date', dateTime: 'fhir-dateTime', instant: 'fhir-instant' };

/** R4 strings (and markdown, a string) SHALL NOT exceed 1 MB (https://hl7.org/fhir/R4/datatypes.html#string). */
const MAX_STRING = 1048576;

const SYSTEM_JSON: Record<string, string> = {
  'http://hl7.org/fhirpath/System.String': 'string',
  'http://hl7.org/fhirpath/System.Boolean': 'boolean',
  'http://hl7.org/fhirpath/System.Integer': 'integer',
  'http://hl7.org/fhirpath/System.Decimal': 'number',
  'http://hl7.org/fhirpath/System.Date': 'string',
  'http://hl7.org/fhirpath/System.DateTime': 'string',
  'http://hl7.org/fhirpath/System.Time': 'string',
};

const ref = (name: string): Json => ({ $ref: `#/$defs/${name}` });
const cap = (s: string) => s.charAt(0).toUpperCase() + s.slice(1);

function extValue(type: Json, url: string): string | undefined {
  const hit = (type.extension ?? []).find((e: Json) => e.url === url);
  return hit ? String(hit.valueUrl ?? hit.valueString ?? hit.valueUri) : undefined;
}

export interface ValidationArtifacts {
  schemas: Json;
  invariants: Json;
  bindings: Json;
  extensions: Json;
  stats: Record<string, number>;
}

/** Builds the three artifacts from the StructureDefinitions, ValueSets and CodeSystems of the package. */
export function buildValidationArtifacts(pkgDir: string, sds: Json[], header: string): ValidationArtifacts {
  const byUrl = new Map<string, Json>(sds.map((sd) => [sd.url as string, sd]));
  const primitives = sds.filter((sd) => sd.kind === 'primitive-type' && sd.derivation === 'specialization');
  const primitiveNames = new Set(primitives.map((sd) => sd.type as string));
  // Complex datatypes (Element and BackboneElement included), resources, and the profiles of datatypes
  // that resource snapshots name in type.profile (SimpleQuantity in R4).
  const usedProfiles = new Set<string>();
  const structures = sds.filter(
    (sd) => sd.snapshot && sd.derivation !== 'constraint' && (sd.kind === 'complex-type' || (sd.kind === 'resource' && !sd.abstract)),
  );
  for (const sd of structures) {
    for (const el of sd.snapshot.element as Json[]) for (const t of el.type ?? []) for (const p of t.profile ?? []) usedProfiles.add(p);
  }
  const profiles = [...usedProfiles].map((u) => byUrl.get(u)).filter((sd): sd is Json => !!sd && sd.kind === 'complex-type');
  const defName = (code: string, profile?: string[]): string => {
    const p = profile?.map((u) => byUrl.get(u)).find((sd) => sd && profiles.includes(sd));
    return p ? p.id : code;
  };

  const defs: Record<string, Json> = {};
  const constraintDefs: Record<string, Json> = {};
  const constraintIds = new Map<string, string>();
  const elementConstraints: Record<string, string[]> = {};
  const requiredBindings: Record<string, string> = {};

  // Primitives: the value's regex from the `.value` element's type, anchored (FHIR regexes match whole values).
  for (const sd of primitives.sort((a, b) => a.type.localeCompare(b.type))) {
    const name = sd.type as string;
    const valueEl = (sd.snapshot.element as Json[]).find((e) => e.path === `${name}.value`);
    const t = valueEl?.type?.[0] ?? {};
    let regex = extValue(t, 'http://hl7.org/fhir/StructureDefinition/regex');
    const rewrite = SAFE_REWRITES[name];
    if (rewrite) {
      if (regex !== rewrite.spec) throw new Error(`the ${name} regex changed; review its safe rewrite`);
      regex = rewrite.safe;
    }
    let schema: Json;
    if (JSON_NUMBER_TYPES[name]) schema = { ...JSON_NUMBER_TYPES[name] };
    else if (SYSTEM_JSON[t.code] === 'boolean') schema = { type: 'boolean' };
    else {
      schema = { type: 'string' };
      const pattern = regex ? `^(?:${asciiWhitespace(regex)})$` : undefined;
      // Empty strings are invalid (json.html); minLength only where the regex itself admits ''.
      if (!pattern || new RegExp(pattern, 'u').test('')) schema.minLength = 1;
      if (name === 'string' || name === 'markdown') schema.maxLength = valueEl?.maxLength ?? MAX_STRING;
      if (pattern) schema.pattern = pattern;
      if (FORMATS[name]) schema.format = FORMATS[name];
    }
    defs[name] = schema;
  }
  for (const name of [...primitiveNames].sort()) {
    defs[`${name}-or-null`] = { ...defs[name], type: [defs[name].type, 'null'] };
  }

  const constraintId = (c: Json, owner: string): string => {
    const sig = `${c.key}\u0000${c.expression}`;
    const known = constraintIds.get(sig);
    if (known) return known;
    const clash = [...constraintIds.keys()].some((k) => k.startsWith(`${c.key}\u0000`));
    const id: string = clash ? `${owner}:${c.key}` : String(c.key);
    constraintIds.set(sig, id);
    constraintDefs[id] = { key: c.key, severity: c.severity, human: String(c.human ?? '').trim(), expression: c.expression };
    return id;
  };

  for (const sd of [...structures, ...profiles].sort((a, b) => a.id.localeCompare(b.id))) {
    const root = sd.derivation === 'constraint' ? sd.id : sd.type;
    const isResource = sd.kind === 'resource';
    const els = (sd.snapshot.element as Json[]).filter((e) => e.max !== '0');
    const rootPath = els[0].path as string;
    const rename = (p: string) => root + p.slice(rootPath.length);
    const children = new Map<string, Json[]>();
    for (const el of els) {
      const p = el.path as string;
      const cut = p.lastIndexOf('.');
      if (cut < 0) continue;
      const parent = rename(p.slice(0, cut));
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent)!.push(el);
    }
    for (const el of sd.snapshot.element as Json[]) {
      const path = rename(el.path);
      const ids = (el.constraint ?? []).filter((c: Json) => c.expression).map((c: Json) => constraintId(c, root));
      if (ids.length && el.max !== '0') elementConstraints[path] = ids;
      const b = el.binding;
      if (b?.strength === 'required' && b.valueSet && el.max !== '0') requiredBindings[path] = String(b.valueSet).split('|')[0];
    }
    for (const [parent, kids] of children) {
      defs[parent] = objectSchema(parent, kids, parent === root && isResource, parent === root ? root : undefined);
    }
  }

  function objectSchema(parent: string, kids: Json[], isResource: boolean, typeName: string | undefined): Json {
    const properties: Json = {};
    const required: string[] = [];
    const fhirRequired: string[][] = [];
    const fhirChoice: Record<string, string[]> = {};
    const primitiveArrays: string[] = [];
    if (isResource) {
      properties.resourceType = { const: typeName };
      required.push('resourceType');
    }
    for (const el of kids) {
      const name = String(el.path).slice(String(el.path).lastIndexOf('.') + 1);
      const array = (el.base?.max ?? el.max) !== '1';
      const maxItems = array && /^[0-9]+$/.test(el.max) ? Number(el.max) : undefined;
      const choice = name.endsWith('[x]');
      const base = choice ? name.slice(0, -3) : name;
      const variants: { prop: string; target: string; primitive: boolean; sibling: boolean }[] = [];
      if (el.contentReference) {
        // contentReferences point inside the same specialization, whose root path is its type name.
        variants.push({ prop: base, target: String(el.contentReference).slice(1), primitive: false, sibling: false });
      } else {
        for (const t of (el.type ?? []) as Json[]) {
          const code = String(t.code);
          let target: string;
          let primitive = false;
          let sibling = true;
          if (code.startsWith('http://hl7.org/fhirpath/System.')) {
            // Element.id, Extension.url and Resource.id: attributes in XML, typed by the fhir-type extension.
            // Resource.id is an `id` (https://hl7.org/fhir/R4/resource.html#id) though its snapshot says string.
            const fhirType = extValue(t, 'http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type') ?? 'string';
            target = isResource && name === 'id' ? 'id' : fhirType;
            primitive = true;
            sibling = isResource && name === 'id';
          } else if (code === 'BackboneElement' || code === 'Element') {
            target = `${parent}.${name}`;
          } else if (code === 'Resource') {
            target = 'Resource';
          } else if (primitiveNames.has(code)) {
            target = code;
            primitive = true;
            sibling = code !== 'xhtml';
          } else {
            target = defName(code, t.profile);
          }
          variants.push({ prop: choice ? base + cap(code) : base, target, primitive, sibling });
        }
      }
      const names: string[] = [];
      for (const v of variants) {
        const itemOf = (n: string) => ref(array && v.primitive ? `${n}-or-null` : n);
        const wrap = (s: Json) => (array ? { type: 'array', minItems: 1, ...(maxItems !== undefined ? { maxItems } : {}), items: s } : s);
        properties[v.prop] = wrap(itemOf(v.target));
        names.push(v.prop);
        if (v.primitive && v.sibling) {
          properties[`_${v.prop}`] = wrap(ref(array ? 'Element-or-null' : 'Element'));
          names.push(`_${v.prop}`);
          if (array) primitiveArrays.push(v.prop);
        }
      }
      if (choice) fhirChoice[base] = variants.map((v) => v.prop);
      if (Number(el.min) > 0) {
        if (names.length === 1) required.push(names[0]);
        else fhirRequired.push(names);
      }
    }
    const s: Json = { type: 'object', additionalProperties: false, minProperties: 1, properties };
    if (required.length) s.required = required;
    if (fhirRequired.length) s.fhirRequired = fhirRequired;
    if (Object.keys(fhirChoice).length) s.fhirChoice = fhirChoice;
    if (primitiveArrays.length) s.fhirPrimitiveArrays = primitiveArrays;
    return s;
  }

  // Object keywords apply to objects only, so the null alternative needs no anyOf (and no double errors).
  defs['Element-or-null'] = { ...defs.Element, type: ['object', 'null'] };
  defs.Resource = { type: 'object', fhirResource: true };

  // Required bindings: expand the value sets that the package can expand.
  const expander = new Expander(pkgDir);
  const valueSets: Record<string, Record<string, string[]> | null> = {};
  const notExpandable: Record<string, string> = {};
  for (const url of [...new Set(Object.values(requiredBindings))].sort()) {
    const r = expander.expand(url);
    if (typeof r === 'string') {
      valueSets[url] = null;
      notExpandable[url] = r;
    } else {
      const out: Record<string, string[]> = {};
      for (const [system, codes] of [...r.entries()].sort((a, b) => a[0].localeCompare(b[0]))) out[system] = [...codes].sort();
      valueSets[url] = out;
    }
  }

  // ValueSet canonicals that are not also CodeSystem canonicals: a Coding.system naming one is wrong.
  const valueSetUrls: Record<string, 1> = {};
  for (const url of expander.valueSetUrls()) if (!expander.hasCodeSystem(url)) valueSetUrls[url] = 1;

  // Core extension definitions (https://hl7.org/fhir/R4/extensibility.html#context): where each may be
  // used and which value types it takes ([] for complex extensions, which take no value).
  const extensions: Record<string, Json> = {};
  for (const sd of sds.filter((x) => x.type === 'Extension' && x.derivation === 'constraint' && x.snapshot)) {
    const value = (sd.snapshot.element as Json[]).find((e) => e.path === 'Extension.value[x]');
    extensions[sd.url] = {
      context: ((sd.context ?? []) as Json[]).filter((c) => c.type === 'element').map((c) => String(c.expression)),
      value: value && value.max !== '0' ? ((value.type ?? []) as Json[]).map((t) => String(t.code)) : [],
    };
  }

  const sortObj = <T>(o: Record<string, T>): Record<string, T> => Object.fromEntries(Object.entries(o).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)));
  const schemas = {
    $schema: 'http://json-schema.org/draft-07/schema#',
    $id: 'urn:vesta:fhir-r4',
    $comment:
      `${header} One definition per R4 resource, datatype (SimpleQuantity included) and backbone element (named by ` +
      'its path). Vocabulary beyond JSON Schema, implemented in src/validation/structure.ts: fhirChoice {base: [variant ' +
      'properties]} at most one variant (with its _ sibling) present; fhirRequired [[names]] at least one name of ' +
      'each group present (a required primitive may be present as its _ sibling only, a required choice as any ' +
      'variant); fhirPrimitiveArrays [names] a primitive array and its _ sibling align (same length, no index null in ' +
      'both); fhirResource validates the object as the resource its resourceType names; formats fhir-date, ' +
      'fhir-dateTime, fhir-instant check calendar dates.',
    $defs: sortObj(defs),
  };
  return {
    schemas,
    invariants: { $comment: header, data: { constraints: sortObj(constraintDefs), elements: sortObj(elementConstraints) } },
    bindings: { $comment: header, data: { elements: sortObj(requiredBindings), valueSets, notExpandable, valueSetUrls: sortObj(valueSetUrls) } },
    extensions: { $comment: header, data: { extensions: sortObj(extensions) } },
    stats: {
      definitions: Object.keys(defs).length,
      constraints: Object.keys(constraintDefs).length,
      requiredBindings: Object.keys(requiredBindings).length,
      valueSets: Object.keys(valueSets).length,
      notExpandable: Object.keys(notExpandable).length,
      coreExtensions: Object.keys(extensions).length,
    },
  };
}

/** Writes a JSON Schema document with one $defs entry per line: small diffs, sane size. */
export function serializeSchemas(doc: Json): string {
  const { $defs, ...head } = doc;
  const lines = Object.entries($defs as Json).map(([k, v]) => ` ${JSON.stringify(k)}: ${JSON.stringify(v)}`);
  const top = JSON.stringify(head, null, 1).slice(0, -2);
  return `${top},\n "$defs": {\n${lines.join(',\n')}\n }\n}\n`;
}

/** Writes an { $comment, data } artifact with one entry per line in each top-level table. */
export function serializeTables(doc: Json): string {
  const parts = Object.entries(doc.data as Json).map(([k, v]) => {
    const rows = Object.entries(v as Json).map(([rk, rv]) => `  ${JSON.stringify(rk)}: ${JSON.stringify(rv)}`);
    return ` ${JSON.stringify(k)}: {\n${rows.join(',\n')}\n }`;
  });
  return `{\n "$comment": ${JSON.stringify(doc.$comment)},\n "data": {\n${parts.join(',\n')}\n }\n}\n`;
}
