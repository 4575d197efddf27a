// xmbridge web UI: vanilla JavaScript, no build step. Every view is drawn from the /api/v1
// routes; what the API answers is inserted as text (never as HTML). State-changing calls carry
// the session's CSRF token (kept in sessionStorage, so it dies with the tab) in X-CSRF-Token.
'use strict';
(function () {
  const API = '/api/v1';
  const CSRF_KEY = 'xmbridge.csrf';
  // Fivetran's sync frequencies: the only values the API accepts.
  const EVERY = ['5m', '15m', '30m', '1h', '2h', '3h', '6h', '8h', '12h', '24h'];
  const EVERY_LABEL = {
    '5m': '5 minutes', '15m': '15 minutes', '30m': '30 minutes', '1h': '1 hour', '2h': '2 hours',
    '3h': '3 hours', '6h': '6 hours', '8h': '8 hours', '12h': '12 hours', '24h': '24 hours',
  };
  const FINISHED = ['succeeded', 'failed', 'cancelled'];

  let me = null; // {name, role}
  let gen = 0; // bumped on every view change: timers of an old view stop themselves
  let flashNext = null; // a message to show after the next navigation

  // ---------------------------------------------------------------- API
  class ApiError extends Error {
    constructor(status, code, message, fix, body) {
      super(message);
      this.status = status;
      this.code = code;
      this.fix = fix || null;
      this.body = body || null;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    const opts = { method, headers, credentials: 'same-origin', cache: 'no-store' };
    // A POST, PUT or PATCH always carries a JSON object ({} when there is nothing to say): a
    // handler reading a JSON body then never sees an empty one.
    if (body === undefined && method !== 'GET' && method !== 'DELETE') body = {};
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    if (method !== 'GET') {
      const t = sessionStorage.getItem(CSRF_KEY);
      if (t) headers['X-CSRF-Token'] = t;
    }
    let res;
    try {
      res = await fetch(API + path, opts);
    } catch (e) {
      throw new ApiError(0, 'unreachable', 'The server did not answer (' + e.message + ').',
        'Check that `xmbridge serve` is still running, then try again.');
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = null; }
    }
    if (!res.ok) {
      const e = (data && data.error) || {};
      const err = new ApiError(res.status, e.code || String(res.status),
        e.message || ('The server answered ' + res.status + ' ' + res.statusText + '.'),
        e.fix, data);
      if (res.status === 401 && !(method === 'POST' && path === '/session')) {
        signedOut(err);
        err.handled = true;
      }
      throw err;
    }
    return data;
  }

  const enc = encodeURIComponent;

  // ---------------------------------------------------------------- DOM helpers
  // h('tag', {class, text, onclick, ...attributes}, ...children): children are nodes or text.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }
  const SVG = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }
  function setAttrs(el, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'text') el.textContent = String(v);
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'value' && 'value' in el && !(el instanceof SVGElement)) el.value = v;
      else if (k === 'checked' || k === 'selected' || k === 'disabled' || k === 'hidden') el[k] = !!v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  function append(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === undefined || c === null || c === false) continue;
      el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }
  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }
  const $ = (sel, root) => (root || document).querySelector(sel);
  let uid = 0;
  const nextId = (p) => (p || 'f') + '-' + (++uid);

  // A labelled field: the label's `for` points at the control, the hint is its description.
  function field(label, control, hint) {
    if (!control.id) control.id = nextId('f');
    const hintEl = hint ? h('span', { class: 'hint', id: control.id + '-hint', text: hint }) : null;
    if (hintEl) control.setAttribute('aria-describedby', hintEl.id);
    return h('div', { class: 'field' }, h('label', { for: control.id, text: label }), control, hintEl);
  }
  function choice(name, value, label, desc, checked, extra) {
    const id = nextId(name);
    return h('label', { class: 'choice', for: id },
      h('input', { type: 'radio', name, value, id, checked }),
      h('span', null, h('span', { class: 'label' }, label, extra), desc ? h('span', { class: 'hint', text: desc }) : null));
  }
  function pill(status) {
    const st = String(status || 'unknown').toLowerCase();
    return h('span', { class: 'pill ' + st.replace(/[^a-z_-]/g, ''), text: st });
  }
  function tableOf(headers, rows, caption) {
    return h('div', { class: 'table-wrap' },
      h('table', null,
        caption ? h('caption', { class: 'muted small', text: caption }) : null,
        h('thead', null, h('tr', null, headers.map((x) => {
          const [t, cls] = Array.isArray(x) ? x : [x, null];
          return h('th', { scope: 'col', class: cls, text: t });
        }))),
        h('tbody', null, rows)));
  }

  // An error as the API said it: the message and, when it has one, the fix.
  function errorBox(err) {
    const fix = err && err.fix;
    return h('div', { class: 'msg error', role: 'alert' },
      h('div', { class: 'message', text: (err && err.message) || String(err) }),
      fix ? h('div', { class: 'fix' }, h('b', { text: 'Fix: ' }), fix) : null);
  }
  function okBox(text) { return h('div', { class: 'msg ok', role: 'status', text }); }
  function warnBox(text) { return h('div', { class: 'msg warn', role: 'status', text }); }

  function flash(node) {
    const f = clear($('#flash'));
    if (node) f.appendChild(node);
  }
  function showError(err) {
    if (err && err.handled) return;
    flash(errorBox(err));
  }

  // Runs `fn` with `button` disabled and its text swapped while it is busy.
  async function busy(button, text, fn) {
    const old = button.textContent;
    button.disabled = true;
    button.textContent = text;
    try { return await fn(); } finally {
      button.disabled = false;
      button.textContent = old;
    }
  }

  // ---------------------------------------------------------------- formatting
  function pick(obj, ...keys) {
    for (const k of keys) {
      let v = obj;
      for (const part of k.split('.')) v = v == null ? undefined : v[part];
      if (v !== undefined && v !== null && v !== '') return v;
    }
    return undefined;
  }
  function listOf(data, key) {
    if (Array.isArray(data)) return data;
    if (data && Array.isArray(data[key])) return data[key];
    return [];
  }
  function toDate(t) {
    if (t === undefined || t === null || t === '') return null;
    const d = typeof t === 'number' ? new Date(t) : new Date(String(t));
    return isNaN(d.getTime()) ? null : d;
  }
  const pad = (n) => String(n).padStart(2, '0');
  function fmtTime(t) {
    const d = toDate(t);
    if (!d) return '—';
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' +
      pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
  }
  function seconds(a, b) {
    const x = toDate(a);
    const y = toDate(b) || (x ? new Date() : null);
    return x && y ? Math.max(0, (y - x) / 1000) : null;
  }
  function fmtDuration(sec) {
    if (sec === null || sec === undefined) return '—';
    if (sec < 60) return sec.toFixed(sec < 10 ? 1 : 0) + ' s';
    const m = Math.floor(sec / 60);
    if (m < 60) return m + ' min ' + Math.round(sec % 60) + ' s';
    return Math.floor(m / 60) + ' h ' + (m % 60) + ' min';
  }
  const fmtNum = (n) => (typeof n === 'number' ? n.toLocaleString('en-US') : (n === undefined || n === null ? '—' : String(n)));
  function runRows(run) {
    let n = 0;
    for (const c of Object.values(run.tables || {})) n += (c.inserted || 0) + (c.updated || 0) + (c.deleted || 0);
    return n;
  }

  // ---------------------------------------------------------------- session
  async function loadMe() {
    const data = await api('GET', '/me');
    const u = (data && (data.user || data)) || {};
    me = { name: u.name || u.user || '', role: u.role || 'member' };
    $('#who-name').textContent = me.name + ' (' + me.role + ')';
    $('#who').hidden = false;
    $('#nav').hidden = false;
    for (const li of document.querySelectorAll('[data-admin]')) li.hidden = me.role !== 'admin';
  }
  const isAdmin = () => me && me.role === 'admin';

  function signedOut(err) {
    // Only someone who was signed in is told their session ended; a first visit just signs in.
    const was = me !== null;
    me = null;
    sessionStorage.removeItem(CSRF_KEY);
    $('#who').hidden = true;
    $('#nav').hidden = true;
    viewLogin(was && err ? err : null);
  }

  function viewLogin(reason) {
    gen++;
    document.title = 'Sign in · xmbridge';
    const main = clear($('#main'));
    flash(null);
    const user = h('input', { type: 'text', id: 'login-user', name: 'user', autocomplete: 'username', required: true, autocapitalize: 'none', spellcheck: 'false' });
    const pass = h('input', { type: 'password', id: 'login-password', name: 'password', autocomplete: 'current-password', required: true });
    const out = h('div', { id: 'login-result', 'aria-live': 'assertive' });
    if (reason) out.appendChild(warnBox('Your session has ended; sign in again.'));
    const submit = h('button', { type: 'submit', id: 'login-submit', text: 'Sign in' });
    const form = h('form', { class: 'card', novalidate: true },
      h('h1', { text: 'Sign in to xmbridge' }),
      out,
      field('User name', user),
      field('Password', pass),
      h('div', { class: 'actions' }, submit));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      clear(out);
      if (!user.value.trim() || !pass.value) {
        out.appendChild(errorBox({ message: 'Enter your user name and password.' }));
        return;
      }
      try {
        await busy(submit, 'Signing in…', async () => {
          const data = await api('POST', '/session', { user: user.value.trim(), password: pass.value });
          pass.value = '';
          if (data && data.csrf_token) sessionStorage.setItem(CSRF_KEY, data.csrf_token);
          await loadMe();
        });
        if (!location.hash || location.hash === '#/login') location.hash = '#/connections';
        else render();
      } catch (err) {
        pass.value = '';
        out.appendChild(errorBox(err));
        pass.focus();
      }
    });
    main.appendChild(h('div', { class: 'login' }, form,
      h('p', { class: 'muted small', text: 'No account yet? An administrator creates one with `xmbridge user add NAME --role admin|member`.' })));
    user.focus();
  }

  async function logout() {
    try { await api('DELETE', '/session'); } catch (err) { if (!err.handled) showError(err); }
    // The next person to sign in here starts at the beginning, not on the last one's page (an
    // ended session, by contrast, keeps the address: signing in again returns there).
    history.replaceState(null, '', location.pathname + '#/connections');
    signedOut(null);
  }

  // ---------------------------------------------------------------- router
  const ROUTES = [
    [/^#\/connections\/new$/, 'connections', viewAddConnection],
    [/^#\/connections\/([^/]+)$/, 'connections', viewConnection],
    [/^#\/connections$/, 'connections', viewConnections],
    [/^#\/workflows\/([^/]+)$/, 'workflows', viewWorkflow],
    [/^#\/workflows$/, 'workflows', viewWorkflows],
    [/^#\/accounts$/, 'accounts', viewAccounts],
    [/^#\/users$/, 'users', viewUsers],
    [/^#\/audit$/, 'audit', viewAudit],
  ];

  async function render() {
    if (!me) return;
    const my = ++gen;
    const hash = location.hash || '#/connections';
    let found = ROUTES.find(([re]) => re.test(hash));
    if (!found) {
      location.replace('#/connections');
      return;
    }
    const [re, nav, view] = found;
    const params = re.exec(hash).slice(1).map(decodeURIComponent);
    for (const a of document.querySelectorAll('[data-nav]')) {
      if (a.dataset.nav === nav) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    flash(flashNext);
    flashNext = null;
    const main = clear($('#main'));
    main.appendChild(h('p', { class: 'muted', text: 'Loading…' }));
    try {
      const node = h('div', { class: 'view' });
      await view(node, my, ...params);
      if (my !== gen) return; // the user went elsewhere meanwhile
      clear(main).appendChild(node);
    } catch (err) {
      if (my !== gen || err.handled) return;
      clear(main).appendChild(errorBox(err));
    }
  }

  function go(hash, message) {
    flashNext = message || null;
    if (location.hash === hash) render();
    else location.hash = hash;
  }

  // ---------------------------------------------------------------- connections
  function syncConfig(c) {
    return c.sync || c.config || c;
  }

  async function viewConnections(root) {
    document.title = 'Connections · xmbridge';
    const data = await api('GET', '/connections');
    const list = listOf(data, 'connections');
    root.appendChild(h('div', { class: 'spread' },
      h('h1', { text: 'Connections' }),
      isAdmin() ? h('a', { class: 'button', href: '#/connections/new', id: 'add-connection', text: 'Add connection' }) : null));
    if (!list.length) {
      root.appendChild(h('div', { class: 'card' },
        h('p', { text: 'No Qualtrics connection yet.' }),
        isAdmin()
          ? h('p', null, h('a', { href: '#/connections/new', text: 'Add the first one' }), ' with Save & Test: it checks which tables the account can sync before it is saved.')
          : h('p', { class: 'muted', text: 'An administrator adds connections.' })));
      return;
    }
    const rows = list.map((c) => {
      const cfg = syncConfig(c);
      const every = pick(cfg, 'every', 'schedule.every');
      const paused = pick(cfg, 'paused', 'schedule.paused');
      const last = pick(c, 'last_sync', 'last_run');
      return h('tr', null,
        h('td', null, h('a', { href: '#/connections/' + enc(c.name), text: c.name })),
        h('td', { class: 'mono', text: pick(c, 'base_url', 'url', 'datacenter', 'organization') || '—' }),
        h('td', { text: pick(c, 'auth', 'auth_mode') || '—' }),
        h('td', { class: 'mono', text: pick(cfg, 'destination') || 'not set' }),
        h('td', null, paused ? pill('paused') : null, ' ', every ? 'every ' + (EVERY_LABEL[every] || every) : 'manual'),
        h('td', null, last ? pill(last.status) : h('span', { class: 'muted', text: 'never' })));
    });
    root.appendChild(h('div', { class: 'card' },
      tableOf(['Name', 'Account', 'Auth', 'Destination', 'Schedule', 'Last sync'], rows)));
  }

  function scheduleSelect(id, current, withManual) {
    const sel = h('select', { id, name: 'every' });
    if (withManual) sel.appendChild(h('option', { value: '', text: 'Manual only (no schedule)' }));
    for (const e of EVERY) sel.appendChild(h('option', { value: e, text: 'Every ' + EVERY_LABEL[e], selected: e === current }));
    if (!current && withManual) sel.value = '';
    return sel;
  }

  async function readFile(input) {
    const f = input.files && input.files[0];
    if (!f) return undefined;
    if (f.size > 256 * 1024) throw new ApiError(0, 'too_large', f.name + ' is larger than 256 KiB.', 'Choose the PEM file itself (certificates and keys are a few KiB).');
    return await f.text();
  }

  // Puts the password into the destination URL the API takes (it seals it in the vault and
  // never shows it again); the URL field itself then stays free of it.
  function withPassword(url, password) {
    if (!password) return url;
    let u;
    try { u = new URL(url); } catch (_) {
      throw new ApiError(0, 'invalid', 'The destination URL is not a URL.', 'Write it like postgres://USER@HOST:5432/DATABASE.');
    }
    if (!u.username) throw new ApiError(0, 'invalid', 'A destination password needs a user name in the URL.', 'Write the URL like postgres://USER@HOST:5432/DATABASE.');
    u.password = password;
    return u.toString();
  }

  async function viewAddConnection(root) {
    document.title = 'Add connection · xmbridge';
    root.appendChild(h('p', null, h('a', { href: '#/connections', text: '← Connections' })));
    root.appendChild(h('h1', { text: 'Add a Qualtrics connection' }));
    if (!isAdmin()) {
      root.appendChild(errorBox({ message: 'Only an administrator adds connections.', fix: 'Ask an administrator of this installation.' }));
      return;
    }
    const name = h('input', { type: 'text', id: 'conn-name', name: 'name', required: true, autocapitalize: 'none', spellcheck: 'false', placeholder: 'qualtrics-prod' });

    // Where the account lives.
    const where = h('div', { class: 'choices', role: 'radiogroup', 'aria-label': 'How to find the account' },
      choice('where', 'url', 'Account URL', 'The address you see in the browser, e.g. acme.fra1.qualtrics.com', true),
      choice('where', 'datacenter', 'Data center', 'Its id, e.g. fra1, iad1, ca1', false),
      choice('where', 'organization', 'Organization id', 'The brand id; the data center is found for you', false));
    const url = h('input', { type: 'text', id: 'conn-url', name: 'url', placeholder: 'https://acme.fra1.qualtrics.com', autocapitalize: 'none', spellcheck: 'false' });
    const dc = h('input', { type: 'text', id: 'conn-datacenter', name: 'datacenter', placeholder: 'fra1', autocapitalize: 'none', spellcheck: 'false' });
    const org = h('input', { type: 'text', id: 'conn-organization', name: 'organization', placeholder: 'acme', autocapitalize: 'none', spellcheck: 'false' });
    const urlF = field('Account URL', url);
    const dcF = field('Data center id', dc);
    const orgF = field('Organization id', org);

    // How it signs in.
    const auth = h('div', { class: 'choices', role: 'radiogroup', 'aria-label': 'Authentication' },
      choice('auth', 'standard', 'Standard', 'OAuth: you approve access in Qualtrics once; tokens refresh by themselves.', true, h('span', { class: 'tag', text: 'recommended' })),
      choice('auth', 'advanced', 'Advanced', 'OAuth client credentials over mutual TLS, with your certificate and private key.', false),
      choice('auth', 'client-credentials', 'OAuth client', 'OAuth client credentials without a certificate (as the ServiceNow spoke\'s OAuth client; scope manage:all). Its token is fetched by Save & Test.', false),
      choice('auth', 'token', 'API token', 'A user\'s X-API-TOKEN; simplest, but tied to one person.', false));
    const token = h('input', { type: 'password', id: 'conn-token', name: 'api_token', autocomplete: 'off' });
    const clientId = h('input', { type: 'text', id: 'conn-client-id', name: 'client_id', autocomplete: 'off', spellcheck: 'false' });
    const clientSecret = h('input', { type: 'password', id: 'conn-client-secret', name: 'client_secret', autocomplete: 'off' });
    const cert = h('input', { type: 'file', id: 'conn-cert', name: 'cert', accept: '.pem,.crt,.cer,application/x-pem-file' });
    const key = h('input', { type: 'file', id: 'conn-key', name: 'key', accept: '.pem,.key,application/x-pem-file' });
    const pass = h('input', { type: 'file', id: 'conn-passphrase', name: 'passphrase', accept: '.txt,text/plain' });
    const ca = h('input', { type: 'file', id: 'conn-ca', name: 'ca_cert', accept: '.pem,.crt' });
    const directory = h('input', { type: 'text', id: 'conn-directory', name: 'directory', placeholder: 'POOL_…', spellcheck: 'false' });
    const tokenF = field('API token', token, 'Qualtrics → Account settings → Qualtrics IDs → API. Stored sealed; never shown again.');
    const clientIdF = field('Client id', clientId);
    const clientSecretF = field('Client secret', clientSecret, 'Stored sealed; never shown again.');
    const certF = field('Certificate (PEM)', cert, 'Read in your browser and sent to the server, which seals it.');
    const keyF = field('Private key (PEM, PKCS#8)', key, 'May be encrypted; then add its pass phrase file.');
    const passF = field('Pass phrase file (if the key is encrypted)', pass);
    const standardNote = h('p', { class: 'hint', text: 'Standard needs one approval in Qualtrics after saving: until then the test cannot pass, so use “Save anyway”, then “Authorize in Qualtrics” on the connection\'s page. Register this server\'s /oauth/callback address with the OAuth client.' });

    // Where the rows go.
    const dest = h('input', { type: 'text', id: 'conn-destination', name: 'destination', required: true, placeholder: 'postgres://USER@HOST:5432/DATABASE', autocapitalize: 'none', spellcheck: 'false' });
    const destPass = h('input', { type: 'password', id: 'conn-destination-password', name: 'destination_password', autocomplete: 'new-password' });
    const schema = h('input', { type: 'text', id: 'conn-schema', name: 'schema', value: 'qualtrics', spellcheck: 'false' });
    const every = scheduleSelect('conn-every', '6h', true);

    const submit = h('button', { type: 'submit', id: 'conn-save', text: 'Save & Test' });
    const result = h('div', { id: 'conn-result', 'aria-live': 'polite' });

    const form = h('form', { novalidate: true, id: 'conn-form' },
      h('fieldset', { class: 'card' }, h('legend', { text: 'Connection' }),
        field('Name', name, 'Letters, digits, “_”, “.” and “-”. Used in URLs and commands.')),
      h('fieldset', { class: 'card' }, h('legend', { text: 'Qualtrics account' }), where, h('div', { class: 'field' }), urlF, dcF, orgF),
      h('fieldset', { class: 'card' }, h('legend', { text: 'Authentication' }), auth, h('div', { class: 'field' }),
        tokenF, clientIdF, clientSecretF, certF, keyF, passF, standardNote,
        h('details', null, h('summary', { text: 'More options' }),
          h('div', null,
            field('Extra CA certificate (PEM)', ca, 'Only for a private certificate authority, e.g. a test server.'),
            field('XM Directory id', directory, 'Found by the test when empty.')))),
      h('fieldset', { class: 'card' }, h('legend', { text: 'Destination' }),
        field('Destination URL', dest, 'postgres://USER@HOST:5432/DATABASE or sqlite:/path/to/file.db. A password is better given below.'),
        field('Destination password', destPass, 'Optional. Sealed in the vault; never shown again.'),
        h('div', { class: 'grid2' },
          field('Schema', schema, 'Tables are created in this schema.'),
          field('Sync frequency', every))),
      h('div', { class: 'actions row' }, submit,
        h('span', { class: 'muted small', text: 'Saves the connection, then checks each table group it can read.' })),
      result);

    const show = () => {
      const w = form.querySelector('input[name=where]:checked').value;
      urlF.hidden = w !== 'url';
      dcF.hidden = w !== 'datacenter';
      orgF.hidden = w !== 'organization';
      const a = form.querySelector('input[name=auth]:checked').value;
      tokenF.hidden = a !== 'token';
      clientIdF.hidden = clientSecretF.hidden = a === 'token';
      certF.hidden = keyF.hidden = passF.hidden = a !== 'advanced';
      standardNote.hidden = a !== 'standard';
    };
    form.addEventListener('change', show);
    show();

    async function body(saveAnyway) {
      const w = form.querySelector('input[name=where]:checked').value;
      const a = form.querySelector('input[name=auth]:checked').value;
      const b = { name: name.value.trim(), auth: a };
      const missing = [];
      if (!b.name) missing.push('a name');
      const place = { url, datacenter: dc, organization: org }[w].value.trim();
      if (!place) missing.push(w === 'url' ? 'the account URL' : w === 'datacenter' ? 'the data center id' : 'the organization id');
      b[w] = place;
      if (a === 'token') {
        if (!token.value) missing.push('the API token');
        b.api_token = token.value;
      } else {
        if (!clientId.value.trim()) missing.push('the client id');
        if (!clientSecret.value) missing.push('the client secret');
        b.client_id = clientId.value.trim();
        b.client_secret = clientSecret.value;
      }
      if (a === 'advanced') {
        b.certificate = await readFile(cert);
        b.key = await readFile(key);
        const p = await readFile(pass);
        if (p !== undefined) b.passphrase = p.replace(/\r?\n$/, '');
        if (!b.certificate) missing.push('the certificate file');
        if (!b.key) missing.push('the private key file');
      }
      const caPem = await readFile(ca);
      if (caPem) b.ca_cert = caPem;
      if (directory.value.trim()) b.directory = directory.value.trim();
      if (!dest.value.trim()) missing.push('the destination URL');
      if (missing.length) throw new ApiError(0, 'invalid', 'Missing: ' + missing.join(', ') + '.', 'Fill in the fields named, then Save & Test again.');
      b.destination = withPassword(dest.value.trim(), destPass.value);
      b.schema = schema.value.trim() || 'qualtrics';
      if (every.value) b.every = every.value;
      if (saveAnyway) b.save_anyway = true;
      return b;
    }

    // The secrets typed or chosen leave the page once saved.
    function forgetSecrets() {
      for (const el of [token, clientSecret, destPass]) el.value = '';
      for (const el of [cert, key, pass, ca]) el.value = '';
    }

    async function save(saveAnyway, button) {
      clear(result);
      let data;
      try {
        const b = await body(saveAnyway);
        data = await busy(button, saveAnyway ? 'Saving…' : 'Saving and testing…', () => api('POST', '/connections', b));
      } catch (err) {
        if (err.handled) return;
        const report = err.body && (err.body.test || (err.body.error && err.body.error.test));
        result.appendChild(errorBox(err));
        if (report) {
          result.appendChild(testReport(report, err));
          const anyway = h('button', { type: 'button', class: 'secondary', id: 'conn-save-anyway', text: 'Save anyway' });
          anyway.addEventListener('click', () => save(true, anyway));
          result.appendChild(h('div', { class: 'row' }, anyway,
            h('span', { class: 'muted small', text: 'Keeps the connection although it cannot sync yet; fix it and test again from its page.' })));
        }
        result.querySelector('.msg').focus?.();
        return;
      }
      forgetSecrets();
      const conn = (data && data.connection) || {};
      const cname = conn.name || name.value.trim();
      const test = data && data.test;
      const ok = test && test.ok;
      result.appendChild(ok ? okBox('Saved “' + cname + '”: the test passed.') : warnBox('Saved “' + cname + '”' + (saveAnyway ? ' anyway' : '') + '. The test did not pass; see below.'));
      if (test) result.appendChild(testReport(test));
      result.appendChild(h('p', null, h('a', { class: 'button', id: 'conn-open', href: '#/connections/' + enc(cname), text: 'Open ' + cname })));
      submit.disabled = true;
    }

    form.addEventListener('submit', (ev) => { ev.preventDefault(); save(false, submit); });
    root.appendChild(form);
  }

  // The per-table-group report of Save & Test, with each group's fix.
  // `shownAbove`: the API's error is already on the page (a refused Save & Test repeats the
  // report's error in its own), so the report does not say it twice.
  function testReport(test, shownAbove) {
    const groups = listOf(test, 'groups');
    const box = h('section', { class: 'card', id: 'test-report', 'aria-label': 'Test report' });
    box.appendChild(h('h3', null, 'Test: ', pill(test.ok ? 'ok' : 'failed')));
    const who = pick(test, 'identity.user_name', 'identity.user');
    const dcn = pick(test, 'identity.datacenter');
    if (who || dcn) box.appendChild(h('p', { class: 'muted small', text: [who ? 'Signed in as ' + who : null, dcn ? 'data center ' + dcn : null].filter(Boolean).join(', ') }));
    const msg = pick(test, 'error.message', 'message');
    if (msg && !(shownAbove && shownAbove.message && shownAbove.message.startsWith(msg))) {
      box.appendChild(errorBox({ message: msg, fix: pick(test, 'error.fix', 'fix') }));
    }
    if (groups.length) {
      const ul = h('ul', { class: 'report' });
      for (const g of groups) {
        const gname = pick(g, 'name', 'group', 'id') || '?';
        let st = pick(g, 'status', 'access');
        if (st === undefined && typeof g.ok === 'boolean') st = g.ok ? 'ok' : 'skipped';
        const tables = Array.isArray(g.tables) ? g.tables.join(', ') : '';
        const fix = pick(g, 'fix');
        const why = pick(g, 'message');
        ul.appendChild(h('li', { 'data-group': gname },
          h('span', { class: 'name', text: gname }), pill(st),
          g.required ? h('span', { class: 'muted small', text: 'required' }) : null,
          tables ? h('span', { class: 'muted small mono', text: tables }) : null,
          why ? h('span', { class: 'fix', text: why }) : null,
          fix ? h('span', { class: 'fix' }, h('b', { text: 'Fix: ' }), fix) : null));
      }
      box.appendChild(ul);
    }
    // The destination is opened once too: whether the rows will have somewhere to go.
    const d = test.destination;
    if (d && typeof d === 'object') {
      box.appendChild(h('ul', { class: 'report' },
        h('li', { 'data-group': 'destination' },
          h('span', { class: 'name', text: 'destination' }), pill(d.ok ? 'ok' : 'failed'),
          d.url ? h('span', { class: 'muted small mono', text: d.url }) : null,
          d.message ? h('span', { class: 'fix', text: d.message }) : null,
          d.fix && !d.ok ? h('span', { class: 'fix' }, h('b', { text: 'Fix: ' }), d.fix) : null)));
    }
    return box;
  }

  async function viewConnection(root, my, cname) {
    document.title = cname + ' · xmbridge';
    const [conn, hist] = await Promise.all([
      api('GET', '/connections/' + enc(cname)),
      api('GET', '/connections/' + enc(cname) + '/syncs'),
    ]);
    const c = (conn && (conn.connection || conn)) || {};
    const cfg = syncConfig(c);
    const runs = listOf(hist, 'syncs');

    root.appendChild(h('p', null, h('a', { href: '#/connections', text: '← Connections' })));
    const head = h('div', { class: 'spread' }, h('h1', { text: cname }));
    root.appendChild(head);

    // What it is.
    const facts = [
      ['Account', pick(c, 'base_url', 'url', 'datacenter', 'organization')],
      ['Authentication', pick(c, 'auth', 'auth_mode')],
      ['Data center', pick(c, 'datacenter')],
      ['Destination', pick(cfg, 'destination') || 'not set'],
      ['Schema', pick(cfg, 'schema')],
      ['Tables', Array.isArray(cfg.tables) ? cfg.tables.join(', ') : 'all'],
      ['Client id', pick(c, 'client_id')],
      ['Stored secrets', Array.isArray(c.secrets) && c.secrets.length ? c.secrets.join(', ') + ' (sealed)' : undefined],
    ].filter(([, v]) => v !== undefined);
    const dl = h('dl', { class: 'grid2' }, facts.map(([k, v]) => h('div', null, h('dt', { class: 'muted small', text: k }), h('dd', { class: 'mono', text: String(v) }))));
    const actions = h('div', { class: 'row' });
    const testOut = h('div', { 'aria-live': 'polite' });
    if (isAdmin()) {
      const testBtn = h('button', { type: 'button', class: 'secondary', id: 'conn-test', text: 'Test connection' });
      testBtn.addEventListener('click', async () => {
        clear(testOut);
        try {
          const r = await busy(testBtn, 'Testing…', () => api('POST', '/connections/' + enc(cname) + '/test'));
          testOut.appendChild(testReport((r && (r.test || r)) || {}));
        } catch (err) {
          if (err.handled) return;
          testOut.appendChild(errorBox(err));
          const report = err.body && err.body.test;
          if (report) testOut.appendChild(testReport(report, err));
        }
      });
      actions.appendChild(testBtn);
      if (pick(c, 'auth', 'auth_mode') === 'standard') {
        // OAuth code flow through the server's own /oauth/callback: this tab goes to Qualtrics
        // and comes back to the server's page, which links here.
        const authBtn = h('button', { type: 'button', class: 'secondary', id: 'conn-authorize', text: 'Authorize in Qualtrics' });
        authBtn.addEventListener('click', async () => {
          clear(testOut);
          try {
            const r = await busy(authBtn, 'Starting…', () => api('POST', '/connections/' + enc(cname) + '/authorize'));
            const to = pick(r || {}, 'authorize_url');
            if (to && /^https?:\/\//.test(to)) location.assign(to);
            else testOut.appendChild(errorBox({ message: 'The server gave no address to open.' }));
          } catch (err) { if (!err.handled) testOut.appendChild(errorBox(err)); }
        });
        actions.appendChild(authBtn);
      }
      const del = h('button', { type: 'button', class: 'danger', id: 'conn-remove', text: 'Remove' });
      del.addEventListener('click', async () => {
        if (!confirm('Remove the connection “' + cname + '”? Its synced tables stay in the destination.')) return;
        try {
          await busy(del, 'Removing…', () => api('DELETE', '/connections/' + enc(cname)));
          go('#/connections', okBox('Removed “' + cname + '”.'));
        } catch (err) { if (!err.handled) testOut.appendChild(errorBox(err)); }
      });
      actions.appendChild(del);
    }
    root.appendChild(h('section', { class: 'card', 'aria-labelledby': 'conn-facts' },
      h('h2', { id: 'conn-facts', class: 'sr-only', text: 'Details' }), dl, actions, testOut));

    // Schedule: admins change it, members see it.
    const every = pick(cfg, 'every', 'schedule.every') || '';
    const paused = !!pick(cfg, 'paused', 'schedule.paused');
    const schedOut = h('div', { id: 'sched-result', 'aria-live': 'polite' });
    const sched = h('section', { class: 'card', 'aria-labelledby': 'sched-h' }, h('h2', { id: 'sched-h', text: 'Schedule' }));
    if (isAdmin()) {
      const sel = scheduleSelect('sched-every', every, true);
      const pausedBox = h('input', { type: 'checkbox', id: 'sched-paused', checked: paused });
      const save = h('button', { type: 'submit', id: 'sched-save', text: 'Save schedule' });
      const form = h('form', null,
        h('div', { class: 'row' },
          h('div', { class: 'field' }, h('label', { for: 'sched-every', text: 'Sync frequency' }), sel),
          h('div', { class: 'field' }, h('span', { class: 'label spacer', 'aria-hidden': 'true', text: '\u00a0' }),
            h('label', { for: 'sched-paused', class: 'check' }, pausedBox, 'Paused (scheduled syncs stop; “Sync now” still works)'))),
        h('div', { class: 'actions' }, save), schedOut);
      form.addEventListener('submit', async (ev) => {
        ev.preventDefault();
        clear(schedOut);
        try {
          const r = await busy(save, 'Saving…', () => api('PUT', '/connections/' + enc(cname) + '/schedule',
            { every: sel.value || null, paused: pausedBox.checked }));
          const cf = (r && syncConfig(r.connection || r)) || {};
          const ev2 = pick(cf, 'every') || sel.value;
          const p2 = pick(cf, 'paused');
          schedOut.appendChild(okBox('Schedule saved: ' + (ev2 ? 'every ' + (EVERY_LABEL[ev2] || ev2) : 'manual only') +
            ((p2 === undefined ? pausedBox.checked : p2) ? ', paused.' : '.')));
        } catch (err) { if (!err.handled) schedOut.appendChild(errorBox(err)); }
      });
      sched.appendChild(form);
    } else {
      sched.appendChild(h('p', null, paused ? pill('paused') : null, ' ', every ? 'Every ' + (EVERY_LABEL[every] || every) : 'Manual only'));
    }
    root.appendChild(sched);

    // Sync now and live progress.
    const live = h('div', { id: 'sync-live' });
    const syncBtn = h('button', { type: 'button', id: 'sync-now', text: 'Sync now' });
    syncBtn.addEventListener('click', async () => {
      clear(live);
      try {
        const r = await busy(syncBtn, 'Queuing…', () => api('POST', '/connections/' + enc(cname) + '/syncs'));
        const id = pick(r || {}, 'id', 'run.id');
        if (r && (r.running || r.already_queued)) {
          live.appendChild(warnBox(r.already_queued
            ? 'A sync was already queued behind the running one (run #' + id + '); nothing new was queued.'
            : 'A sync is running (run #' + r.running + '); this one (run #' + id + ') is queued and starts after it.'));
        }
        if (id !== undefined) watch(id);
      } catch (err) { if (!err.handled) live.appendChild(errorBox(err)); }
    });
    root.appendChild(h('section', { class: 'card', 'aria-labelledby': 'sync-h' },
      h('div', { class: 'spread' }, h('h2', { id: 'sync-h', text: 'Sync' }), isAdmin() ? syncBtn : null),
      isAdmin() ? null : h('p', { class: 'muted', text: 'Administrators start syncs; the schedule runs them on its own. A run in progress shows here.' }),
      live));

    // History and chart.
    const histBox = h('section', { class: 'card', 'aria-labelledby': 'hist-h' });
    root.appendChild(histBox);
    drawHistory(histBox, runs);

    async function refreshHistory() {
      try {
        const hst = await api('GET', '/connections/' + enc(cname) + '/syncs');
        if (my === gen) drawHistory(histBox, listOf(hst, 'syncs'));
      } catch (err) { if (!err.handled) showError(err); }
    }

    // Polls one run about once a second until it finishes or the user leaves the page.
    let watching = null;
    async function watch(id) {
      watching = id;
      const card = h('div', { class: 'progress', id: 'sync-progress', 'data-run': String(id) });
      live.appendChild(card);
      let last = null;
      while (my === gen && watching === id) {
        let run;
        try {
          run = await api('GET', '/syncs/' + enc(id));
        } catch (err) {
          if (err.handled) return;
          clear(card).appendChild(errorBox(err));
          return;
        }
        if (my !== gen) return;
        drawProgress(card, run);
        if (FINISHED.includes(run.status)) {
          if (last !== run.status) refreshHistory();
          return;
        }
        if (last !== run.status) refreshHistory();
        last = run.status;
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
    // Redrawn about once a second: the parts are made once, so the Cancel button keeps the
    // keyboard focus and a screen reader hears only the outcome (the status boxes), not every tick.
    function drawProgress(card, run) {
      const st = run.status;
      const done = FINISHED.includes(st);
      if (!card.parts) {
        const cancel = h('button', { type: 'button', class: 'secondary small', id: 'sync-cancel', text: 'Cancel this run' });
        cancel.addEventListener('click', async () => {
          try { await busy(cancel, 'Cancelling…', () => api('POST', '/syncs/' + enc(card.dataset.run) + '/cancel')); }
          catch (err) { if (!err.handled) card.parts.tail.appendChild(errorBox(err)); }
        });
        card.parts = {
          head: h('p'),
          bar: h('progress', { 'aria-label': 'Sync in progress' }),
          cancel: h('p', null, cancel),
          streams: h('div'),
          tail: h('div'),
        };
        append(card, [card.parts.head, card.parts.bar, card.parts.cancel, card.parts.streams, card.parts.tail]);
      }
      const p = card.parts;
      append(clear(p.head), ['Run #' + run.id + ' ', pill(st), ' ',
        h('span', { class: 'muted', text: run.started_at ? (done ? 'took ' : 'running for ') + fmtDuration(seconds(run.started_at, run.finished_at)) : 'waiting to start' })]);
      p.bar.hidden = done;
      p.cancel.hidden = done || !isAdmin();
      clear(p.streams);
      const prog = run.progress && typeof run.progress === 'object' ? run.progress : {};
      if (!done) {
        const list = streamProgress(prog);
        if (list) p.streams.appendChild(list);
        return;
      }
      clear(p.tail);
      // The run's totals are known when it ends; while it runs, the streams say more.
      p.tail.appendChild(h('ul', { class: 'stats' },
        h('li', null, h('b', { text: fmtNum(runRows(run)) }), ' rows changed'),
        h('li', null, h('b', { text: fmtNum(run.responses || 0) }), ' responses'),
        h('li', null, h('b', { text: fmtNum(run.api_calls || 0) }), ' API calls'),
        run.throttled ? h('li', null, h('b', { text: fmtNum(run.throttled) }), ' throttled retries') : null));
      if (st === 'succeeded') p.tail.appendChild(okBox('The sync finished.'));
      if (st === 'cancelled') p.tail.appendChild(warnBox('The run was cancelled; the batches it committed are kept.'));
      if (run.error) p.tail.appendChild(errorBox(run.error));
    }

    const active = runs.find((r) => r.status === 'running' || r.status === 'queued');
    if (active) watch(active.id);
  }

  // Rows per stream while a run goes: {"streams": {NAME: {done, total, finished}}}; a bar for
  // each stream whose total is known. Another shape is shown as "key: value" lines.
  function streamProgress(prog) {
    const streams = prog && prog.streams && typeof prog.streams === 'object' ? Object.entries(prog.streams) : null;
    if (!streams) {
      const items = progressItems(prog);
      return items.length ? h('ul', { class: 'progress-list' }, items.map((t) => h('li', { text: t }))) : null;
    }
    if (!streams.length) return null;
    return h('ul', { class: 'progress-list streams', 'aria-label': 'Rows per stream' }, streams.map(([name, st]) => {
      const doneN = (st && st.done) || 0;
      const total = st && typeof st.total === 'number' ? st.total : null;
      const fin = !!(st && st.finished);
      return h('li', { 'data-stream': name },
        h('span', { class: 'mono', text: name }), ' ',
        fmtNum(doneN) + (total !== null ? ' of ' + fmtNum(total) : '') + ' rows',
        fin ? h('span', { class: 'muted', text: ' · done' }) : null,
        total ? h('progress', { max: String(total), value: String(Math.min(doneN, total)), 'aria-label': name + ' progress' }) : null);
    }));
  }

  // The progress object holds per-stream numbers; whatever its exact shape, show "name: n".
  function progressItems(prog) {
    const out = [];
    const walk = (prefix, v) => {
      if (v === null || v === undefined) return;
      if (typeof v === 'object' && !Array.isArray(v)) {
        for (const [k, x] of Object.entries(v)) walk(prefix ? prefix + ' · ' + k : k, x);
      } else out.push(prefix + ': ' + (typeof v === 'number' ? fmtNum(v) : String(v)));
    };
    walk('', prog);
    return out.slice(0, 40);
  }

  function drawHistory(box, runs) {
    clear(box);
    box.appendChild(h('h2', { id: 'hist-h', text: 'History' }));
    if (!runs.length) {
      box.appendChild(h('p', { class: 'muted', text: 'No sync has run yet.' }));
      return;
    }
    box.appendChild(runChart(runs));
    // Each run is one row; its per-table counts and error go in a full-width row under it,
    // so the table names keep their width on any screen.
    const rows = runs.flatMap((r) => {
      const tables = Object.entries(r.tables || {});
      const detail = [];
      if (tables.length) {
        detail.push(tableOf(['Table', ['Inserted', 'num'], ['Updated', 'num'], ['Deleted', 'num']],
          tables.map(([t, c]) => h('tr', null, h('td', { class: 'mono', text: t }),
            h('td', { class: 'num', text: fmtNum(c.inserted || 0) }),
            h('td', { class: 'num', text: fmtNum(c.updated || 0) }),
            h('td', { class: 'num', text: fmtNum(c.deleted || 0) })))));
      }
      if (r.error) detail.push(errorBox(r.error));
      const row = h('tr', { 'data-run': String(r.id), class: detail.length ? 'run has-detail' : 'run' },
        h('td', null, '#' + r.id),
        h('td', null, pill(r.status)),
        h('td', { text: r.trigger || '—' }),
        h('td', { class: 'nowrap', text: fmtTime(r.started_at || r.queued_at) }),
        h('td', { class: 'num', text: r.started_at ? fmtDuration(seconds(r.started_at, r.finished_at)) : '—' }),
        h('td', { class: 'num', text: fmtNum(runRows(r)) }),
        h('td', { class: 'num', text: fmtNum(r.responses || 0) }),
        h('td', { class: 'num', text: fmtNum(r.api_calls || 0) }));
      if (!detail.length) return [row];
      const summary = (r.error ? 'Error' + (tables.length ? ' and ' : '') : '')
        + (tables.length ? tables.length + ' table(s)' : '') + ' of run #' + r.id;
      return [row, h('tr', { 'data-run': String(r.id), class: 'run-detail' },
        h('td', { colspan: '8' },
          h('details', null, h('summary', { text: summary }), h('div', { class: 'run-tables' }, detail))))];
    });
    box.appendChild(tableOf(['Run', 'Status', 'Trigger', 'Started', ['Duration', 'num'], ['Rows', 'num'], ['Responses', 'num'], ['API calls', 'num']], rows));
  }

  // Rows written (bars) and duration (line) of the last runs, oldest on the left.
  function runChart(runs) {
    const list = runs.filter((r) => FINISHED.includes(r.status)).slice(0, 20).reverse();
    const wrap = h('figure', { class: 'chart-box' });
    if (!list.length) return wrap;
    // A narrower drawing on a phone, so its labels stay readable once scaled to the screen.
    const W = window.innerWidth < 640 ? 360 : 720, H = 200, L = 48, R = 48, T = 12, B = 28;
    const rows = list.map(runRows);
    const durs = list.map((r) => seconds(r.started_at, r.finished_at) || 0);
    const maxRows = Math.max(1, ...rows), maxDur = Math.max(0.001, ...durs);
    const step = (W - L - R) / list.length;
    const bw = Math.max(4, Math.min(36, step * 0.6));
    const y = (v, max) => T + (H - T - B) * (1 - v / max);
    const summary = 'Rows changed and duration of the last ' + list.length + ' finished runs; most rows ' + fmtNum(Math.max(...rows)) + ', longest ' + fmtDuration(Math.max(...durs)) + '.';
    const svg = s('svg', { class: 'chart', viewBox: '0 0 ' + W + ' ' + H, role: 'img', 'aria-label': summary });
    svg.appendChild(s('line', { class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B }));
    svg.appendChild(s('text', { x: L - 6, y: T + 10, 'text-anchor': 'end' }, fmtNum(maxRows)));
    svg.appendChild(s('text', { x: L - 6, y: H - B, 'text-anchor': 'end' }, '0'));
    svg.appendChild(s('text', { x: W - R + 6, y: T + 10 }, fmtDuration(maxDur)));
    const pts = [];
    list.forEach((r, i) => {
      const cx = L + step * i + step / 2;
      const by = y(rows[i], maxRows);
      svg.appendChild(s('rect', { class: 'bar ' + r.status, x: cx - bw / 2, y: by, width: bw, height: Math.max(1, H - B - by) },
        s('title', null, 'Run #' + r.id + ': ' + fmtNum(rows[i]) + ' rows, ' + fmtDuration(durs[i]) + ', ' + r.status)));
      svg.appendChild(s('text', { x: cx, y: H - B + 16, 'text-anchor': 'middle' }, '#' + r.id));
      pts.push([cx, y(durs[i], maxDur)]);
    });
    svg.appendChild(s('polyline', { class: 'line', points: pts.map((p) => p.join(',')).join(' ') }));
    for (const [px, py] of pts) svg.appendChild(s('circle', { class: 'dot', cx: px, cy: py, r: 3 }));
    wrap.appendChild(svg);
    wrap.appendChild(h('figcaption', { class: 'legend' },
      h('span', null, h('span', { class: 'sw rows' }), 'rows changed (left axis)'),
      h('span', null, h('span', { class: 'sw dur' }), 'duration (right axis)')));
    return wrap;
  }

  // ---------------------------------------------------------------- workflows
  function countsOf(w) {
    return w.counts || pick(w, 'status.counts') || {};
  }

  async function viewWorkflows(root) {
    document.title = 'Workflows · xmbridge';
    const data = await api('GET', '/workflows');
    const list = listOf(data, 'workflows');
    root.appendChild(h('h1', { text: 'Workflows' }));
    if (!list.length) {
      root.appendChild(h('div', { class: 'card' }, h('p', { text: 'No workflow yet. Workflows are TOML files added with `xmbridge workflow add`.' })));
      return;
    }
    const rows = list.map((w) => {
      const c = countsOf(w);
      const paused = pick(w, 'paused', 'state.paused');
      return h('tr', null,
        h('td', null, h('a', { href: '#/workflows/' + enc(w.name), text: w.name })),
        h('td', { text: pick(w, 'owner', 'state.creator') || '—' }),
        h('td', { text: pick(w, 'trigger.type', 'trigger') && typeof pick(w, 'trigger.type', 'trigger') === 'string' ? pick(w, 'trigger.type', 'trigger') : '—' }),
        h('td', null, paused ? pill('paused') : pill('active')),
        h('td', { class: 'num', text: fmtNum(c.pending || 0) }),
        h('td', { class: 'num', text: fmtNum(c.done || 0) }),
        h('td', { class: 'num' }, c.dead ? h('a', { href: '#/workflows/' + enc(w.name), text: fmtNum(c.dead) }) : '0'));
    });
    root.appendChild(h('div', { class: 'card' },
      tableOf(['Name', 'Owner', 'Trigger', 'State', ['Pending', 'num'], ['Done', 'num'], ['Dead', 'num']], rows)));
  }

  async function viewWorkflow(root, my, wname) {
    document.title = wname + ' · xmbridge';
    const data = await api('GET', '/workflows/' + enc(wname));
    const w = (data && (data.workflow || data)) || {};
    const c = countsOf(w);
    const paused = !!pick(w, 'paused', 'state.paused');
    root.appendChild(h('p', null, h('a', { href: '#/workflows', text: '← Workflows' })));
    root.appendChild(h('h1', { text: wname }));
    const out = h('div', { id: 'wf-result', 'aria-live': 'polite' });

    const status = h('section', { class: 'card', 'aria-labelledby': 'wf-status-h' },
      h('div', { class: 'spread' }, h('h2', { id: 'wf-status-h', text: 'Status' }), paused ? pill('paused') : pill('active')),
      h('ul', { class: 'stats' }, Object.keys(c).length
        ? Object.entries(c).map(([k, n]) => h('li', { 'data-count': k }, h('b', { text: fmtNum(n) }), ' ' + k))
        : h('li', { text: 'no events yet' })));
    if (w.description) status.appendChild(h('p', { text: w.description }));
    const steps = Array.isArray(w.steps) ? w.steps.map((st) => st.name + ' (' + st.action + ')').join(' → ') : '';
    if (w.trigger || steps) status.appendChild(h('p', { class: 'small' }, w.trigger ? h('span', null, h('b', { text: 'Trigger: ' }), String(w.trigger), ' ') : null, steps ? h('span', null, h('b', { text: 'Steps: ' }), steps) : null));
    const owner = pick(w, 'owner', 'state.creator');
    if (owner) status.appendChild(h('p', { class: 'muted small', text: 'Owner: ' + owner + (pick(w, 'last_editor', 'state.last_editor') ? ' · last edited by ' + pick(w, 'last_editor', 'state.last_editor') : '') }));
    if (paused) {
      const reason = pick(w, 'reason', 'state.reason');
      status.appendChild(warnBox('Paused' + (reason ? ': ' + reason : '') + '. Events wait in the outbox until it is resumed.'));
      const fix = pick(w, 'fix', 'state.fix');
      if (fix) status.appendChild(h('p', { class: 'small' }, h('b', { text: 'Fix: ' }), fix));
    }
    const toggle = h('button', { type: 'button', class: 'secondary', id: paused ? 'wf-resume' : 'wf-pause', text: paused ? 'Resume' : 'Pause' });
    toggle.addEventListener('click', async () => {
      clear(out);
      try {
        await busy(toggle, paused ? 'Resuming…' : 'Pausing…', () => api('POST', '/workflows/' + enc(wname) + (paused ? '/resume' : '/pause'), {}));
        go(location.hash, okBox(paused ? 'Resumed “' + wname + '”.' : 'Paused “' + wname + '”: its events wait until it is resumed.'));
      } catch (err) { if (!err.handled) out.appendChild(errorBox(err)); }
    });
    status.appendChild(h('div', { class: 'row' }, toggle));
    status.appendChild(out);
    root.appendChild(status);

    // Events, dead letters first: the ones that need a person.
    const evBox = h('section', { class: 'card', 'aria-labelledby': 'wf-events-h' });
    const filter = h('select', { id: 'wf-filter' },
      h('option', { value: 'dead', text: 'Dead letters' }),
      h('option', { value: 'pending', text: 'Pending' }),
      h('option', { value: 'done', text: 'Done' }));
    const list = h('div', { id: 'wf-events' });
    evBox.appendChild(h('div', { class: 'spread' }, h('h2', { id: 'wf-events-h', text: 'Events' }),
      h('div', { class: 'field' }, h('label', { for: 'wf-filter', text: 'Show' }), filter)));
    evBox.appendChild(list);
    root.appendChild(evBox);
    filter.addEventListener('change', () => loadEvents(filter.value));
    await loadEvents('dead');

    async function loadEvents(which) {
      let evs;
      try {
        evs = listOf(await api('GET', '/workflows/' + enc(wname) + '/events?status=' + enc(which)), 'events');
      } catch (err) {
        if (!err.handled) clear(list).appendChild(errorBox(err));
        return;
      }
      clear(list);
      if (!evs.length) {
        list.appendChild(h('p', { class: 'muted', text: which === 'dead' ? 'No dead letters: every event was delivered or is still on its way.' : 'No ' + which + ' events.' }));
        return;
      }
      if (which === 'dead') {
        const all = h('button', { type: 'button', class: 'secondary', id: 'wf-replay-all', text: 'Replay all ' + evs.length });
        all.addEventListener('click', () => replay({ all: true }, all, 'all dead events'));
        list.appendChild(h('div', { class: 'row' }, all,
          h('span', { class: 'muted small', text: 'Puts the events back in the outbox with fresh attempts. Fix the cause first, or they come back here.' })));
      }
      for (const e of evs) list.appendChild(eventItem(e, which));
    }

    function eventItem(e, which) {
      const err = pick(e, 'last_error', 'error.message', 'error');
      const fix = pick(e, 'fix', 'error.fix');
      const body = h('div', null,
        h('dl', { class: 'grid3 small' },
          [['Event', e.id], ['Source', pick(e, 'source')], ['State', pick(e, 'state', 'status')], ['Attempts', e.attempts],
            ['Failed step', pick(e, 'last_step', 'step')], ['Created', fmtTime(e.created_at)], ['Last change', fmtTime(e.updated_at)]]
            .filter(([, v]) => v !== undefined && v !== null)
            .map(([k, v]) => h('div', null, h('dt', { class: 'muted', text: k }), h('dd', { class: 'mono', text: String(v) })))),
        err ? errorBox({ message: typeof err === 'string' ? err : JSON.stringify(err), fix }) : null,
        e.payload !== undefined ? h('details', null, h('summary', { text: 'Event data' }), h('pre', { class: 'mono small', text: JSON.stringify(e.payload, null, 2) })) : null);
      if (which === 'dead') {
        const btn = h('button', { type: 'button', class: 'replay', 'data-event': e.id, text: 'Replay this event' });
        btn.addEventListener('click', () => replay({ events: [e.id] }, btn, 'event ' + e.id));
        body.appendChild(h('div', { class: 'row' }, btn));
      }
      return h('details', { class: 'event card', 'data-event': e.id },
        h('summary', null, h('span', { class: 'mono', text: e.id }), ' ', pill(pick(e, 'state', 'status') || which), ' ',
          h('span', { class: 'muted small', text: err ? String(typeof err === 'string' ? err : '').slice(0, 90) : '' })),
        body);
    }

    async function replay(bodyObj, btn, what) {
      clear(out);
      try {
        const r = await busy(btn, 'Replaying…', () => api('POST', '/workflows/' + enc(wname) + '/replay', bodyObj));
        const n = pick(r || {}, 'replayed', 'count');
        go(location.hash, okBox('Replayed ' + (n !== undefined ? n + ' ' : '') + 'event(s) (' + what + '): back in the outbox with fresh attempts.'));
      } catch (err) {
        if (err.handled) return;
        flash(errorBox(err));
        window.scrollTo(0, 0);
      }
    }
  }

  // ---------------------------------------------------------------- accounts
  async function viewAccounts(root) {
    document.title = 'Accounts · xmbridge';
    const data = await api('GET', '/accounts');
    const list = listOf(data, 'accounts');
    root.appendChild(h('h1', { text: 'Linked accounts' }));
    root.appendChild(h('p', { class: 'muted', text: 'The Salesforce and ServiceNow accounts workflows act with. Each user links their own (up to 5 Salesforce accounts); administrators link brand accounts and share them with users.' }));
    const out = h('div', { id: 'acct-result', 'aria-live': 'polite' });
    root.appendChild(out);
    if (!list.length) {
      root.appendChild(h('div', { class: 'card' }, h('p', { text: 'No linked account yet: link one below.' })));
      root.appendChild(linkForm());
      return;
    }
    const rows = list.map((a) => {
      const aname = a.name;
      const brand = pick(a, 'scope') === 'brand';
      const btns = h('div', { class: 'row' });
      const test = h('button', { type: 'button', class: 'secondary small', text: 'Test', 'aria-label': 'Test ' + aname });
      test.addEventListener('click', async () => {
        clear(out);
        try {
          const r = (await busy(test, 'Testing…', () => api('POST', '/accounts/' + enc(aname) + '/test'))) || {};
          if (r.ok === false) out.appendChild(errorBox({ message: '“' + aname + '”: ' + (r.message || 'the test failed'), fix: r.fix }));
          else out.appendChild(okBox('“' + aname + '” works' + (r.message ? ': ' + r.message : '.')));
        } catch (err) { if (!err.handled) out.appendChild(errorBox(err)); }
      });
      btns.appendChild(test);
      const rename = h('button', { type: 'button', class: 'secondary small', text: 'Rename', 'aria-label': 'Rename ' + aname });
      rename.addEventListener('click', () => {
        const input = h('input', { type: 'text', value: aname, id: nextId('rename'), spellcheck: 'false', autocapitalize: 'none' });
        const ok = h('button', { type: 'submit', class: 'small', text: 'Save name' });
        const cancel = h('button', { type: 'button', class: 'link small', text: 'Cancel' });
        const f = h('form', { class: 'row' }, h('label', { for: input.id, class: 'sr-only', text: 'New name for ' + aname }), input, ok, cancel);
        cancel.addEventListener('click', () => { f.replaceWith(btns); rename.focus(); });
        f.addEventListener('submit', async (ev) => {
          ev.preventDefault();
          clear(out);
          const to = input.value.trim();
          try {
            await busy(ok, 'Saving…', () => api('PATCH', '/accounts/' + enc(aname), { name: to }));
            go('#/accounts', okBox('Renamed “' + aname + '” to “' + to + '”.'));
          } catch (err) { if (!err.handled) out.appendChild(errorBox(err)); }
        });
        btns.replaceWith(f);
        input.focus();
      });
      btns.appendChild(rename);
      if (isAdmin() && brand) {
        const share = h('button', { type: 'button', class: 'secondary small', text: 'Share…', 'aria-label': 'Share ' + aname + ' with users' });
        share.addEventListener('click', () => {
          const input = h('input', { type: 'text', id: nextId('share'), placeholder: 'pat, lee', spellcheck: 'false', autocapitalize: 'none' });
          const ok = h('button', { type: 'submit', class: 'small', text: 'Share' });
          const cancel = h('button', { type: 'button', class: 'link small', text: 'Cancel' });
          const f = h('form', { class: 'row' }, h('label', { for: input.id, text: 'Users (comma separated)' }), input, ok, cancel);
          cancel.addEventListener('click', () => { f.replaceWith(btns); share.focus(); });
          f.addEventListener('submit', async (ev) => {
            ev.preventDefault();
            clear(out);
            const users = input.value.split(/[\s,]+/).map((x) => x.trim()).filter(Boolean);
            try {
              await busy(ok, 'Sharing…', () => api('POST', '/accounts/' + enc(aname) + '/share', { with: users }));
              go('#/accounts', okBox('Shared “' + aname + '” with ' + users.join(', ') + '.'));
            } catch (err) { if (!err.handled) out.appendChild(errorBox(err)); }
          });
          btns.replaceWith(f);
          input.focus();
        });
        btns.appendChild(share);
      }
      const del = h('button', { type: 'button', class: 'danger small', text: 'Remove', 'aria-label': 'Remove ' + aname });
      del.addEventListener('click', async () => {
        if (!confirm('Remove the account “' + aname + '”? Workflows that use it stop until another is linked.')) return;
        clear(out);
        try {
          await busy(del, 'Removing…', () => api('DELETE', '/accounts/' + enc(aname)));
          go('#/accounts', okBox('Removed “' + aname + '”.'));
        } catch (err) { if (!err.handled) out.appendChild(errorBox(err)); }
      });
      btns.appendChild(del);
      const grants = Array.isArray(a.grants) ? a.grants.map((g) => (typeof g === 'string' ? g : pick(g, 'user', 'name'))).filter(Boolean) : [];
      return h('tr', { 'data-account': aname },
        h('td', { class: 'mono', text: aname }),
        h('td', { text: pick(a, 'system') || '—' }),
        h('td', { text: pick(a, 'owner') || '—' }),
        h('td', null, brand ? pill('brand') : h('span', { class: 'muted', text: 'private' }),
          grants.length ? h('div', { class: 'small muted', text: 'shared with ' + grants.join(', ') }) : null),
        h('td', null, accountStatus(a)),
        h('td', null, btns));
    });
    root.appendChild(h('div', { class: 'card' }, tableOf(['Name', 'System', 'Owner', 'Scope', 'Status', 'Actions'], rows)));
    root.appendChild(linkForm());
  }

  // What is known of an account's credentials, never more: refused, or when they were last
  // tested and how it went; an untested account says so.
  function accountStatus(a) {
    if (a.token_ok === false) return pill('expired');
    const c = a.last_check;
    if (c && typeof c === 'object') {
      return h('span', null, pill(c.ok ? 'ok' : 'failed'),
        h('div', { class: 'small muted', text: 'tested ' + fmtTime(c.at) }));
    }
    return h('span', { class: 'muted', text: 'not tested' });
  }

  // Link an account: Salesforce (sign in through the browser, or server to server) or
  // ServiceNow (basic, OAuth password or client credentials). The secrets typed here are sent
  // once and the fields emptied.
  function linkForm() {
    const name = h('input', { type: 'text', id: 'acct-name', spellcheck: 'false', autocapitalize: 'none', placeholder: 'sf-prod' });
    const system = h('div', { class: 'choices', role: 'radiogroup', 'aria-label': 'System' },
      choice('acct-system', 'salesforce', 'Salesforce', null, true),
      choice('acct-system', 'servicenow', 'ServiceNow', null, false));
    const sfMode = h('div', { class: 'choices', role: 'radiogroup', 'aria-label': 'How it signs in' },
      choice('acct-sf-mode', 'login', 'Sign in with Salesforce', 'This tab goes to Salesforce and comes back here (the connected app\'s callback is this server\'s /oauth/callback).', true),
      choice('acct-sf-mode', 's2s', 'Server to server', 'OAuth client credentials of a connected app.', false));
    const snMode = h('div', { class: 'choices', role: 'radiogroup', 'aria-label': 'How it signs in' },
      choice('acct-sn-mode', 'basic', 'User name and password', null, true),
      choice('acct-sn-mode', 'oauth_password', 'OAuth with a user\'s password', null, false),
      choice('acct-sn-mode', 'client_credentials', 'OAuth client credentials', null, false));
    const loginUrl = h('input', { type: 'text', id: 'acct-login-url', value: 'https://login.salesforce.com', spellcheck: 'false' });
    const tokenUrl = h('input', { type: 'text', id: 'acct-token-url', spellcheck: 'false', placeholder: 'https://MYDOMAIN.my.salesforce.com/services/oauth2/token' });
    const instance = h('input', { type: 'text', id: 'acct-instance', spellcheck: 'false', placeholder: 'https://acme.service-now.com' });
    const clientId = h('input', { type: 'text', id: 'acct-client-id', spellcheck: 'false', autocomplete: 'off' });
    const clientSecret = h('input', { type: 'password', id: 'acct-client-secret', autocomplete: 'off' });
    const user = h('input', { type: 'text', id: 'acct-user', spellcheck: 'false', autocomplete: 'off' });
    const password = h('input', { type: 'password', id: 'acct-password', autocomplete: 'off' });
    const brand = h('input', { type: 'checkbox', id: 'acct-brand' });
    const F = {
      loginUrl: field('Login URL', loginUrl), tokenUrl: field('Token URL', tokenUrl), instance: field('Instance URL', instance),
      clientId: field('Client id', clientId), clientSecret: field('Client secret', clientSecret, 'Sealed in the vault; never shown again.'),
      user: field('User name', user), password: field('Password', password, 'Sealed in the vault; never shown again.'),
    };
    const submit = h('button', { type: 'submit', id: 'acct-link', text: 'Link account' });
    const res = h('div', { id: 'acct-link-result', 'aria-live': 'polite' });
    const form = h('form', { class: 'card', id: 'acct-form', novalidate: true }, h('h2', { text: 'Link an account' }),
      field('Name', name, 'Workflow steps name it as their account.'),
      h('span', { class: 'label', 'aria-hidden': 'true', text: 'System' }), system, h('div', { class: 'field' }),
      h('span', { class: 'label', 'aria-hidden': 'true', text: 'How it signs in' }),
      h('div', { id: 'acct-sf' }, sfMode), h('div', { id: 'acct-sn' }, snMode), h('div', { class: 'field' }),
      F.loginUrl, F.tokenUrl, F.instance, F.clientId, F.clientSecret, F.user, F.password,
      isAdmin() ? h('div', { class: 'field' }, h('label', { for: 'acct-brand', class: 'check' }, brand, 'A brand account (shared by administrators with users)')) : null,
      h('div', { class: 'actions' }, submit), res);
    const val = (n) => (form.querySelector('input[name=' + n + ']:checked') || {}).value;
    const show = () => {
      const sys = val('acct-system');
      const sf = val('acct-sf-mode');
      const sn = val('acct-sn-mode');
      $('#acct-sf', form).hidden = sys !== 'salesforce';
      $('#acct-sn', form).hidden = sys !== 'servicenow';
      F.loginUrl.hidden = !(sys === 'salesforce' && sf === 'login');
      F.tokenUrl.hidden = !(sys === 'salesforce' && sf === 's2s');
      F.instance.hidden = sys !== 'servicenow';
      F.clientId.hidden = F.clientSecret.hidden = sys === 'servicenow' && sn === 'basic';
      F.user.hidden = F.password.hidden = !(sys === 'servicenow' && sn !== 'client_credentials');
    };
    form.addEventListener('change', show);
    show();
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      clear(res);
      const sys = val('acct-system');
      const b = { name: name.value.trim(), system: sys };
      if (isAdmin() && brand.checked) b.brand = true;
      if (sys === 'salesforce') {
        if (val('acct-sf-mode') === 'login') b.login_url = loginUrl.value.trim();
        else { b.server_to_server = true; b.token_url = tokenUrl.value.trim(); }
        b.client_id = clientId.value.trim();
        b.client_secret = clientSecret.value;
      } else {
        b.instance_url = instance.value.trim();
        const m = val('acct-sn-mode');
        if (m === 'basic') { b.basic_user = user.value.trim(); b.password = password.value; }
        if (m === 'oauth_password') { b.oauth_password = true; b.client_id = clientId.value.trim(); b.client_secret = clientSecret.value; b.user = user.value.trim(); b.password = password.value; }
        if (m === 'client_credentials') { b.client_credentials = true; b.client_id = clientId.value.trim(); b.client_secret = clientSecret.value; }
      }
      try {
        const r = await busy(submit, 'Linking…', () => api('POST', '/accounts', b));
        clientSecret.value = password.value = '';
        const to = r && r.authorize_url;
        if (to && /^https?:\/\//.test(to)) { location.assign(to); return; }
        go('#/accounts', okBox('Linked “' + b.name + '”.'));
      } catch (err) { if (!err.handled) res.appendChild(errorBox(err)); }
    });
    return form;
  }

  // ---------------------------------------------------------------- users (admins)
  async function viewUsers(root) {
    document.title = 'Users · xmbridge';
    root.appendChild(h('h1', { text: 'Users' }));
    if (!isAdmin()) {
      root.appendChild(errorBox({ message: 'Only an administrator manages users.' }));
      return;
    }
    const data = await api('GET', '/users');
    const list = listOf(data, 'users');
    const out = h('div', { id: 'users-result', 'aria-live': 'polite' });
    root.appendChild(out);
    const rows = list.map((u) => {
      const tok = h('button', { type: 'button', class: 'secondary small', text: 'New API token', 'aria-label': 'New API token for ' + u.name });
      tok.addEventListener('click', () => tokenForm(u.name, tok));
      const del = h('button', { type: 'button', class: 'danger small', text: 'Remove', 'aria-label': 'Remove ' + u.name });
      del.addEventListener('click', async () => {
        if (!confirm('Remove the user “' + u.name + '”? Their sessions end and their API tokens stop working.')) return;
        clear(out);
        try {
          await busy(del, 'Removing…', () => api('DELETE', '/users/' + enc(u.name)));
          go('#/users', okBox('Removed “' + u.name + '”.'));
        } catch (err) { if (!err.handled) out.appendChild(errorBox(err)); }
      });
      return h('tr', { 'data-user': u.name },
        h('td', { class: 'mono', text: u.name }),
        h('td', null, pill(u.role)),
        h('td', { text: fmtTime(u.created_at) }),
        h('td', null, h('div', { class: 'row' }, tok, u.name === me.name ? null : del)));
    });
    root.appendChild(h('div', { class: 'card' }, tableOf(['Name', 'Role', 'Created', 'Actions'], rows)));

    function tokenForm(user, anchor) {
      const sel = h('select', { id: nextId('expires') },
        h('option', { value: '30d', text: '30 days' }),
        h('option', { value: '90d', text: '90 days', selected: true }),
        h('option', { value: '365d', text: '1 year' }),
        h('option', { value: '', text: 'never' }));
      const ok = h('button', { type: 'submit', class: 'small', text: 'Create token' });
      const f = h('form', { class: 'card' }, h('h3', { text: 'New API token for ' + user }),
        h('div', { class: 'row' }, h('label', { for: sel.id, text: 'Expires after' }), sel, ok));
      f.addEventListener('submit', async (ev) => {
        ev.preventDefault();
        clear(out);
        try {
          const r = await busy(ok, 'Creating…', () => api('POST', '/users/' + enc(user) + '/tokens', sel.value ? { expires: sel.value } : {}));
          const secret = pick(r || {}, 'token', 'secret');
          const id = pick(r || {}, 'id', 'info.id', 'token_info.id');
          f.replaceWith(h('div', { class: 'msg ok', role: 'status' },
            h('p', { text: 'API token for ' + user + (id ? ' (id ' + id + ')' : '') + '. Copy it now: it is shown once and stored only as a hash.' }),
            h('p', null, h('code', { class: 'mono', id: 'new-token', text: typeof secret === 'string' ? secret : '' })),
            h('p', { class: 'small', text: 'Use it as `Authorization: Bearer TOKEN`.' })));
        } catch (err) { if (!err.handled) out.appendChild(errorBox(err)); }
      });
      anchor.closest('.card').after(f);
      sel.focus();
    }

    // Add a user.
    const uname = h('input', { type: 'text', id: 'user-name', autocomplete: 'off', autocapitalize: 'none', spellcheck: 'false' });
    const role = h('select', { id: 'user-role' }, h('option', { value: 'member', text: 'member' }), h('option', { value: 'admin', text: 'admin' }));
    const pw = h('input', { type: 'password', id: 'user-password', autocomplete: 'new-password' });
    const add = h('button', { type: 'submit', id: 'user-add', text: 'Add user' });
    const addOut = h('div', { 'aria-live': 'polite' });
    const form = h('form', { class: 'card', novalidate: true }, h('h2', { text: 'Add a user' }),
      h('div', { class: 'grid2' }, field('Name', uname, 'Letters, digits, “_”, “.” and “-”.'), field('Role', role, 'Admins manage connections, schedules, brand accounts, users and every workflow.')),
      field('Initial password', pw, 'At least 12 characters. They can change it with `xmbridge user passwd`.'),
      h('div', { class: 'actions' }, add), addOut);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      clear(addOut);
      try {
        await busy(add, 'Adding…', () => api('POST', '/users', { name: uname.value.trim(), role: role.value, password: pw.value }));
        pw.value = '';
        go('#/users', okBox('Added “' + uname.value.trim() + '” (' + role.value + ').'));
      } catch (err) {
        pw.value = '';
        if (!err.handled) addOut.appendChild(errorBox(err));
      }
    });
    root.appendChild(form);
  }

  // ---------------------------------------------------------------- audit (admins)
  async function viewAudit(root) {
    document.title = 'Audit log · xmbridge';
    root.appendChild(h('h1', { text: 'Audit log' }));
    if (!isAdmin()) {
      root.appendChild(errorBox({ message: 'Only an administrator reads the audit log.' }));
      return;
    }
    const data = await api('GET', '/audit');
    const list = listOf(data, 'entries').length ? listOf(data, 'entries') : listOf(data, 'audit');
    if (!list.length) {
      root.appendChild(h('div', { class: 'card' }, h('p', { text: 'Nothing recorded yet.' })));
      return;
    }
    const rows = list.map((e) => h('tr', null,
      h('td', { class: 'nowrap', text: fmtTime(e.at) }),
      h('td', { class: 'mono nowrap', text: e.actor }),
      h('td', { class: 'nowrap', text: e.via }),
      h('td', { class: 'mono nowrap', text: e.action }),
      h('td', { class: 'mono nowrap', text: e.target }),
      h('td', { class: 'mono nowrap', text: e.address || '—' }),
      h('td', { class: 'mono small', text: e.detail && Object.keys(e.detail).length ? JSON.stringify(e.detail) : '' })));
    root.appendChild(h('div', { class: 'card' }, tableOf(['When', 'Who', 'Via', 'Action', 'Target', 'From', 'Detail'], rows)));
  }

  // ---------------------------------------------------------------- start
  async function start() {
    $('#logout').addEventListener('click', logout);
    window.addEventListener('hashchange', () => {
      render();
      $('#main').focus({ preventScroll: false });
    });
    try {
      await loadMe();
    } catch (err) {
      if (!err.handled) {
        if (err.status === 401) signedOut(null);
        else clear($('#main')).appendChild(errorBox(err));
      }
      return;
    }
    render();
  }
  document.addEventListener('DOMContentLoaded', start);
})();
