// Narrative XHTML rules (https://hl7.org/fhir/R4/narrative.html#xhtml), the htmlChecks() behind
// txt-1 and txt-2: well-formed XHTML, one <div> in the XHTML namespace, only the basic formatting
// elements and attributes, and some non-whitespace content. A single linear scan: no regex
// backtracking, no recursion, so hostile input costs time proportional to its length.

const XHTML_NS = 'http://www.w3.org/1999/xhtml';

// The lists the HL7 reference validator applies (HTML 4.0 chapters 7-11 and 13 named in narrative.html).
const ELEMENTS = new Set([
  'p', 'br', 'div', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'a', 'span', 'b', 'em', 'i', 'strong', 'small', 'big', 'tt', 'dfn', 'q',
  'var', 'abbr', 'acronym', 'cite', 'blockquote', 'hr', 'address', 'bdo', 'kbd', 'sub', 'sup', 'ul', 'ol', 'li', 'dl', 'dt',
  'dd', 'pre', 'table', 'caption', 'colgroup', 'col', 'thead', 'tr', 'tfoot', 'tbody', 'th', 'td', 'code', 'samp', 'img', 'map',
  'area',
]);
const ATTRIBUTES = new Set([
  'title', 'style', 'class', 'id', 'lang', 'xml:lang', 'dir', 'accesskey', 'tabindex',
  'span', 'width', 'align', 'valign', 'char', 'charoff', 'abbr', 'axis', 'headers', 'scope', 'rowspan', 'colspan',
]);
const ELEMENT_ATTRIBUTES = new Set([
  'a.href', 'a.name', 'img.src', 'img.border', 'div.xmlns', 'blockquote.cite', 'q.cite', 'a.charset', 'a.type', 'a.hreflang',
  'a.rel', 'a.rev', 'a.shape', 'a.coords', 'img.alt', 'img.longdesc', 'img.height', 'img.width', 'img.usemap', 'img.ismap',
  'map.name', 'area.shape', 'area.coords', 'area.href', 'area.nohref', 'area.alt', 'table.summary', 'table.width',
  'table.border', 'table.frame', 'table.rules', 'table.cellspacing', 'table.cellpadding', 'pre.space', 'td.nowrap',
]);
/** Names safe to repeat in a message: markup vocabulary, never content. */
const NAMEABLE = new Set([
  ...ELEMENTS, 'script', 'style', 'iframe', 'frame', 'frameset', 'object', 'embed', 'applet', 'form', 'input', 'button', 'select',
  'textarea', 'head', 'body', 'html', 'link', 'meta', 'base', 'font', 'center', 'u', 's', 'strike', 'svg', 'math', 'video', 'audio',
]);

export interface XhtmlProblem {
  /** txt-1: markup rules; txt-2: no content. */
  rule: 'txt-1' | 'txt-2';
  message: string;
}

const isNameStart = (c: number) => (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95 || c === 58;
const isNameChar = (c: number) => isNameStart(c) || (c >= 48 && c <= 57) || c === 45 || c === 46;
const isSpace = (c: number) => c === 32 || c === 9 || c === 10 || c === 13;

function elementName(n: string): string {
  return NAMEABLE.has(n.toLowerCase()) ? `<${n}>` : 'an element';
}

function attributeName(n: string): string {
  const l = n.toLowerCase();
  return /^on[a-z]{1,20}$/.test(l) || ['href', 'src', 'style', 'xmlns', 'data', 'action', 'formaction'].includes(l) ? `"${n}"` : 'an attribute';
}

/** Checks a Narrative.div value; returns the problems found (empty when valid). */
export function checkXhtml(div: string): XhtmlProblem[] {
  const problems: XhtmlProblem[] = [];
  const fail = (message: string) => {
    if (problems.length < 10) problems.push({ rule: 'txt-1', message });
  };
  const stack: string[] = [];
  let i = 0;
  const n = div.length;
  let rootSeen = false;
  let rootClosed = false;
  let content = false;
  /** The next '&' at or after i (n when none), found again only once i has passed it. */
  let amp = -1;

  const readName = (): string => {
    const start = i;
    if (i < n && isNameStart(div.charCodeAt(i))) {
      i++;
      while (i < n && isNameChar(div.charCodeAt(i))) i++;
    }
    return div.slice(start, i);
  };
  const skipSpace = () => {
    while (i < n && isSpace(div.charCodeAt(i))) i++;
  };
  /** Checks an entity reference at i (on '&'); returns false if malformed. */
  const entity = (): boolean => {
    const end = div.indexOf(';', i);
    if (end < 0 || end - i > 40) return false;
    const body = div.slice(i + 1, end);
    i = end + 1;
    // Narrative is XHTML without a DTD (narrative.html#xhtml), so only XML's five predefined named
    // entities exist; &reg; or &nbsp; are undefined there (the HL7 validator refuses them too).
    return /^(#[0-9]{1,7}|#x[0-9a-fA-F]{1,6}|amp|lt|gt|quot|apos)$/.test(body);
  };

  while (i < n) {
    const c = div.charCodeAt(i);
    if (c !== 60 /* < */ && c !== 38 /* & */ && content && stack.length) {
      // plain text inside the root once content is known: nothing to check up to the next '<' or '&'
      if (amp < i) {
        amp = div.indexOf('&', i);
        if (amp < 0) amp = n;
      }
      const lt = div.indexOf('<', i);
      i = lt < 0 || amp < lt ? amp : lt;
      continue;
    }
    if (c !== 60 /* < */) {
      if (c === 38 /* & */) {
        if (!entity()) fail('the narrative has a malformed or undefined entity reference (only &amp; &lt; &gt; &quot; &apos; and numeric references exist in XHTML without a DTD)');
        else if (stack.length) content = true;
        continue;
      }
      if (!isSpace(c)) {
        if (!stack.length) fail(rootClosed ? 'the narrative has content after the closing </div>' : 'the narrative must start with <div>');
        else content = true;
      }
      i++;
      continue;
    }
    const next = div.charCodeAt(i + 1);
    if (next === 33 /* ! */ || next === 63 /* ? */) {
      if (div.startsWith('<!--', i)) {
        const end = div.indexOf('-->', i + 4);
        if (end < 0) {
          fail('the narrative has an unterminated comment');
          break;
        }
        i = end + 3;
        continue;
      }
      if (div.startsWith('<![CDATA[', i)) {
        const end = div.indexOf(']]>', i + 9);
        if (end < 0 || !stack.length) {
          fail('the narrative has a misplaced or unterminated CDATA section');
          break;
        }
        for (let k = i + 9; k < end; k++) if (!isSpace(div.charCodeAt(k))) content = true;
        i = end + 3;
        continue;
      }
      if (div.startsWith('<!', i) || div.startsWith('<?', i)) {
        fail('the narrative may not hold a DOCTYPE, declaration or processing instruction');
        const end = div.indexOf('>', i);
        if (end < 0) break;
        i = end + 1;
        continue;
      }
    }
    if (next === 47 /* / */) {
      i += 2;
      const name = readName();
      skipSpace();
      if (div.charCodeAt(i) !== 62) {
        fail('the narrative is not well-formed XML (bad end tag)');
        break;
      }
      i++;
      if (stack.pop() !== name) {
        fail('the narrative is not well-formed XML (mismatched end tag)');
        break;
      }
      if (!stack.length) rootClosed = true;
      continue;
    }
    i++;
    const name = readName();
    if (!name) {
      fail('the narrative is not well-formed XML (a "<" that starts no tag)');
      break;
    }
    const atRoot = !stack.length;
    if (atRoot && (rootSeen || name !== 'div')) fail(rootSeen ? 'the narrative must be a single <div>' : 'the narrative must start with <div>');
    rootSeen = true;
    if (!ELEMENTS.has(name)) fail(`${elementName(name)} is not allowed in a narrative`);
    if (name === 'img') content = true;
    let xmlns: string | undefined;
    const seen: string[] = []; // a tag has few attributes
    let broken = false;
    for (;;) {
      const before = i;
      skipSpace();
      const ch = div.charCodeAt(i);
      if (ch === 62 || (ch === 47 && div.charCodeAt(i + 1) === 62) || i >= n) break;
      if (i === before) {
        broken = true;
        break;
      }
      const an = readName();
      if (!an) {
        broken = true;
        break;
      }
      skipSpace();
      if (div.charCodeAt(i) !== 61 /* = */) {
        broken = true;
        break;
      }
      i++;
      skipSpace();
      const q = div.charCodeAt(i);
      if (q !== 34 && q !== 39) {
        broken = true;
        break;
      }
      const end = div.indexOf(q === 34 ? '"' : "'", i + 1);
      if (end < 0) {
        broken = true;
        break;
      }
      const value = div.slice(i + 1, end);
      if (value.includes('<')) broken = true;
      i = end + 1;
      if (seen.includes(an)) broken = true;
      seen.push(an);
      if (an === 'xmlns') xmlns = value;
      else if (an.startsWith('xmlns:')) continue;
      else if (!ATTRIBUTES.has(an) && !ELEMENT_ATTRIBUTES.has(`${name}.${an}`) && an !== 'xml:space') {
        fail(`the attribute ${attributeName(an)} is not allowed on ${elementName(name)} in a narrative`);
      }
      if (broken) break;
    }
    if (broken || i >= n) {
      fail('the narrative is not well-formed XML (bad start tag)');
      break;
    }
    if (atRoot && xmlns !== XHTML_NS) fail(`the narrative <div> must declare the XHTML namespace (${XHTML_NS})`);
    if (!atRoot && xmlns !== undefined && xmlns !== XHTML_NS) fail('an element in the narrative declares a namespace other than XHTML');
    if (div.charCodeAt(i) === 47) {
      i += 2;
      if (atRoot) rootClosed = true;
    } else {
      i++;
      stack.push(name);
      if (stack.length > 200) {
        fail('the narrative nests deeper than 200 elements');
        break;
      }
    }
  }
  if (stack.length && !problems.length) fail('the narrative is not well-formed XML (an element is not closed)');
  if (!rootSeen && !problems.length) fail('the narrative must start with <div>');
  if (!problems.length && !content) problems.push({ rule: 'txt-2', message: 'the narrative has no non-whitespace content' });
  return problems;
}
