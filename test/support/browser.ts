// A minimal browser for the sign-in pages: a cookie jar, manual redirects, and form scraping.
export interface Page {
  url: string;
  status: number;
  html: string;
  headers: Headers;
}

export class Browser {
  readonly cookies = new Map<string, string>();
  /** Every URL visited, in order (redirects included). */
  readonly visited: string[] = [];

  constructor(readonly headers: Record<string, string> = {}) {}

  async fetch(url: string, init: { method?: string; form?: Record<string, string | string[]>; headers?: Record<string, string> } = {}): Promise<Response> {
    this.visited.push(url);
    const headers: Record<string, string> = { ...this.headers, ...(init.headers ?? {}) };
    if (this.cookies.size) headers.cookie = [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ');
    let body: string | undefined;
    if (init.form) {
      const p = new URLSearchParams();
      for (const [k, v] of Object.entries(init.form)) for (const x of ([] as string[]).concat(v)) p.append(k, x);
      body = p.toString();
      headers['content-type'] = 'application/x-www-form-urlencoded';
    }
    const res = await fetch(url, { method: init.method ?? (body ? 'POST' : 'GET'), headers, ...(body !== undefined ? { body } : {}), redirect: 'manual' });
    for (const c of res.headers.getSetCookie()) {
      const [pair, ...attrs] = c.split(';');
      const i = pair.indexOf('=');
      const name = pair.slice(0, i).trim();
      const value = pair.slice(i + 1).trim();
      const expired = attrs.some((a) => /^\s*max-age=0\s*$/i.test(a) || (/^\s*expires=/i.test(a) && new Date(a.split('=')[1]).getTime() < Date.now()));
      if (expired || value === '') this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
    return res;
  }

  /**
   * Requests `url` and follows redirects until a page (non-3xx) or a Location for which `stop`
   * is true (returned unvisited, as the page's url with status 0).
   */
  async go(url: string, init: Parameters<Browser['fetch']>[1] = {}, stop: (location: string) => boolean = () => false): Promise<Page> {
    let res = await this.fetch(url, init);
    let current = url;
    for (let hops = 0; hops < 20 && res.status >= 300 && res.status < 400; hops++) {
      const loc = new URL(res.headers.get('location')!, current).href;
      if (stop(loc)) return { url: loc, status: 0, html: '', headers: res.headers };
      current = loc;
      res = await this.fetch(loc);
    }
    return { url: current, status: res.status, html: await res.text(), headers: res.headers };
  }
}

/** The value of a hidden input in a page. */
export function hidden(html: string, name: string): string {
  const m = new RegExp(`name="${name}" value="([^"]*)"`).exec(html);
  if (!m) throw new Error(`no hidden ${name} in page: ${html.slice(0, 500)}`);
  return decode(m[1]);
}

/** The action of the form whose action ends with `suffix`. */
export function action(html: string, suffix: string): string {
  const m = [...html.matchAll(/<form method="(?:post|get)" action="([^"]*)"/g)].map((x) => decode(x[1])).find((a) => a.endsWith(suffix));
  if (!m) throw new Error(`no form ending ${suffix} in page: ${html.slice(0, 500)}`);
  return m;
}

export function decode(s: string): string {
  return s.replace(/&#(\d+);/g, (_, n: string) => String.fromCharCode(Number(n))).replace(/&amp;/g, '&');
}
