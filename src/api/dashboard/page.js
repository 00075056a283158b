'use strict';
// The runq dashboard. Every value from the API is put in the page as text (textContent,
// createTextNode, attributes): job args and errors are user data, never markup.

const TOKEN_KEY = 'runq.token';
const PAGE_SIZE = 25;
const REFRESH_MS = 5000;
const FINISHED = ['succeeded', 'failed', 'cancelled'];
const STATUSES = ['queued', 'running', 'retrying', 'succeeded', 'failed', 'cancelled'];
const RETRYABLE = ['failed', 'cancelled'];
// The statuses each bulk action applies to (the API refuses a status filter outside them).
const ACTION_STATUSES = { retry: RETRYABLE, cancel: ['queued', 'retrying', 'running'], delete: FINISHED };
const OPERATIONS_SHOWN = 10;

const $ = (id) => document.getElementById(id);

/** Builds an element; string children become text nodes, never HTML. */
function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
function badge(status) { return el('span', { class: 'badge s-' + status }, status); }
function pad(n, w = 2) { return String(n).padStart(w, '0'); }
function fmtTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}
function fmtDuration(ms) {
  if (ms < 0) ms = 0;
  if (ms < 1000) return Math.round(ms) + ' ms';
  if (ms < 60000) return (ms / 1000).toFixed(1) + ' s';
  const m = Math.floor(ms / 60000);
  return m + ' min ' + Math.round((ms % 60000) / 1000) + ' s';
}
function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }
function showError(msg) { $('error').textContent = msg || ''; }

// ---- the token and the API ----

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function forgetToken(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  closeJob();
  $('app').hidden = true;
  $('forget').hidden = true;
  $('login').hidden = false;
  showError(message || '');
}

class ApiFailure extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

/** Calls the API with the token; a 401 asks for a new token. */
async function api(path, opts = {}) {
  const headers = Object.assign({ Authorization: 'Bearer ' + token() }, opts.headers || {});
  const resp = await fetch(path, Object.assign({}, opts, { headers, credentials: 'omit', cache: 'no-store' }));
  if (resp.status === 401) {
    forgetToken('The token was refused (401): paste a valid one.');
    throw new ApiFailure(401, 'unauthorized');
  }
  return resp;
}

/** The JSON body of a 2xx answer, else an ApiFailure with the problem's detail. */
async function body(resp) {
  if (!resp.ok) {
    let detail = 'HTTP ' + resp.status;
    try { const p = await resp.json(); if (p && p.detail) detail = p.detail; } catch (_) { /* not JSON */ }
    throw new ApiFailure(resp.status, detail);
  }
  return resp.json();
}

async function getJson(path, opts) { return body(await api(path, opts)); }

// ---- stats ----

async function refreshStats() {
  let stats;
  try {
    stats = await getJson('dashboard/stats');
  } catch (e) {
    if (e.status === 403) {
      $('stats-error').hidden = false;
      $('stats-error').textContent = 'Counts across all jobs need an admin token; the list below shows your jobs.';
      return;
    }
    throw e;
  }
  $('stats-error').hidden = true;
  renderStatusCards(stats.by_status);
  renderThroughput(stats.throughput);
  renderDepth(stats.unfinished_by_priority);
  renderByFunction(stats.by_function);
}

function renderStatusCards(byStatus) {
  const cards = clear($('status-cards'));
  for (const s of STATUSES) {
    cards.appendChild(el('div', {
      class: 'card s-' + s, title: 'list ' + s + ' jobs',
      onclick: () => { $('f-status').value = s; location.hash = ''; loadJobs(null, []).catch((e) => showError(e.message)); },
    }, el('div', { class: 'muted' }, s), el('div', { class: 'n' }, (byStatus[s] || 0).toLocaleString())));
  }
}

function renderThroughput(t) {
  const chart = clear($('throughput'));
  const perMinute = t.finished_per_minute;
  const max = Math.max(1, ...perMinute.map((m) => m.finished));
  perMinute.forEach((m, i) => {
    const bar = el('div', {
      class: i === perMinute.length - 1 ? 'bar current' : 'bar',
      title: fmtTime(m.minute).slice(11, 16) + ': ' + m.finished + ' finished' +
        (i === perMinute.length - 1 ? ' (this minute, so far)' : ''),
    });
    bar.style.height = (100 * m.finished / max) + '%';
    chart.appendChild(bar);
  });
  const axis = clear($('throughput-axis'));
  if (perMinute.length) {
    axis.appendChild(el('span', null, fmtTime(perMinute[0].minute).slice(11, 16)));
    axis.appendChild(el('span', null, 'peak ' + max + '/min'));
    axis.appendChild(el('span', null, 'now'));
  }
  clear($('last-hour')).append('Last hour: ', el('strong', null, String(t.last_hour.succeeded)), ' succeeded, ',
    el('strong', null, String(t.last_hour.failed)), ' failed');
}

function renderDepth(byPriority) {
  const cols = ['queued', 'running', 'retrying'];
  const table = clear($('depth'));
  table.appendChild(el('tr', null, el('th', null, 'priority'), cols.map((c) => el('th', { class: 'num' }, c))));
  for (const p of ['high', 'medium', 'low']) {
    const row = byPriority[p] || {};
    table.appendChild(el('tr', null, el('td', null, p), cols.map((c) => el('td', { class: 'num' }, String(row[c] || 0)))));
  }
}

function renderByFunction(byFunction) {
  const table = clear($('by-function'));
  table.appendChild(el('tr', null, el('th', null, 'function'), STATUSES.map((s) => el('th', { class: 'num' }, s))));
  const names = Object.keys(byFunction).sort();
  for (const f of names) {
    const row = byFunction[f];
    table.appendChild(el('tr', null, el('td', null, el('a', {
      href: '#', onclick: (ev) => { ev.preventDefault(); $('f-function').value = f; loadJobs(null, []); },
    }, f)), STATUSES.map((s) => el('td', { class: 'num' }, row[s] ? String(row[s]) : ''))));
  }
  if (!names.length) table.appendChild(el('tr', null, el('td', { class: 'muted' }, 'no jobs yet')));
  const list = clear($('functions'));
  for (const f of names) list.appendChild(el('option', { value: f }));
}

// ---- acting: per-function stats, signals, workers (admins) ----

function fmtMs(ms) { return ms === null || ms === undefined ? '' : fmtDuration(ms); }
function fmtAge(secs) {
  if (secs === null || secs === undefined) return '';
  return fmtDuration(secs * 1000);
}

async function refreshInsights() {
  const w = encodeURIComponent($('fn-window').value);
  let fns, signals, workers;
  try {
    [fns, signals, workers] = await Promise.all([getJson('dashboard/functions?window=' + w),
      getJson('dashboard/signals'), getJson('dashboard/workers?window=' + w)]);
  } catch (e) {
    if (e.status === 403) {
      $('insights-error').hidden = false;
      $('insights-error').textContent = 'Function stats, signals and workers need an admin token.';
      return;
    }
    throw e;
  }
  $('insights-error').hidden = true;
  renderFunctionStats(fns.functions);
  renderSignals(signals.signals);
  renderWorkers(workers.workers);
}

function renderFunctionStats(functions) {
  const tbody = clear($('fn-stats').tBodies[0]);
  for (const f of functions) {
    const errors = f.top_errors.map((k) => k.kind + ' ' + k.count).join(', ');
    tbody.appendChild(el('tr', null,
      el('td', null, el('a', {
        href: '#', onclick: (ev) => { ev.preventDefault(); applyFilters('function=' + encodeURIComponent(f.function)); showJobs(); },
      }, f.function)),
      el('td', { class: 'num' }, f.runs.toLocaleString()),
      el('td', { class: 'num' }, f.runs_per_minute.toFixed(2)),
      el('td', { class: 'num' }, fmtMs(f.duration_ms.p50)),
      el('td', { class: 'num' }, fmtMs(f.duration_ms.p95)),
      el('td', { class: 'num' }, fmtMs(f.duration_ms.p99)),
      el('td', { class: 'num' }, (100 * f.failure_rate).toFixed(1) + '%'),
      el('td', { class: 'wrap' }, errors)));
  }
  if (!functions.length) tbody.appendChild(el('tr', null, el('td', { class: 'muted', colspan: '8' }, 'no runs ended in the window')));
}

/** Each signal's count opens the jobs list filtered by its link. */
function renderSignals(signals) {
  const tbody = clear($('signals').tBodies[0]);
  for (const s of signals) {
    const query = s.link.replace(/^[^?]*\?/, '');
    tbody.appendChild(el('tr', { class: s.count > 0 ? 'hot' : null, 'data-kind': s.kind },
      el('td', { class: 'wrap' }, s.label),
      el('td', { class: 'num' }, el('a', {
        href: '#', class: 'signal', title: 'list them: ' + s.link,
        onclick: (ev) => { ev.preventDefault(); applyFilters(query); showJobs(); },
      }, s.count.toLocaleString())),
      el('td', { class: 'num' }, fmtAge(s.oldest_age_secs))));
  }
}

function renderWorkers(workers) {
  const tbody = clear($('workers').tBodies[0]);
  for (const w of workers) {
    const running = w.running.map((r) => [el('a', { href: '#job/' + encodeURIComponent(r.id), title: r.id,
      class: r.lease_expired ? 'lost' : null }, r.function + ' ' + r.id.slice(-8)), r.lease_expired ? ' (lease lost) ' : ' ']);
    tbody.appendChild(el('tr', null,
      el('td', { class: 'mono' }, w.worker_id),
      el('td', null, fmtTime(w.last_seen)),
      el('td', { class: 'num' }, w.finished.toLocaleString()),
      el('td', { class: 'wrap' }, running.length ? running : el('span', { class: 'muted' }, 'idle'))));
  }
  if (!workers.length) tbody.appendChild(el('tr', null, el('td', { class: 'muted', colspan: '4' }, 'no workers seen in the window')));
}

/** Lists the jobs the filters select, from the first page, and scrolls to them. */
function showJobs() {
  if (location.hash) location.hash = '';
  loadJobs(null, []).then(() => $('jobs').scrollIntoView()).catch((e) => showError('jobs: ' + e.message));
}

/** The listing's filter as a bulk operation's (`POST /operations`): flags become booleans. */
function operationFilter() {
  const filter = {};
  for (const [k, v] of listFilters()) {
    filter[k] = FLAG_FILTERS.includes(k) && (v === 'true' || v === 'false') ? v === 'true' : v;
  }
  return filter;
}

const ACTED = { cancel: 'cancelled', retry: 'retried', delete: 'deleted' };

/** "Act on these": the dry run's count in a confirmation, then the operation and its progress. */
async function actOnFilter() {
  const action = $('act-action').value;
  const filter = operationFilter();
  $('act-result').textContent = '';
  const dry = await postOperation({ action, filter, dry_run: true });
  if (dry.count === 0) {
    $('act-result').textContent = 'none of the listed jobs can be ' + ACTED[action] + ': nothing to do';
    return;
  }
  const question = 'This will ' + action + ' ' + plural(dry.count, 'job') + ' (' + describeFilter(filter) + '). Go ahead?';
  if (!confirm(question)) { $('act-result').textContent = 'not started'; return; }
  const op = await postOperation({ action, filter });
  $('act-result').textContent = action + ' of ' + plural(dry.count, 'job') + ' started';
  await followOperation(op);
  const done = await getJson('operations/' + encodeURIComponent(op.id));
  $('act-result').textContent = action + ': ' + plural(done.affected, 'job') + ' changed (' + done.status + ')';
}

// ---- the jobs list (keyset paging: a stack of the cursors of the pages before this one) ----

const list = { cursor: null, before: [], next: null };

// Filters a signal's link set that have no input of their own (queue, held_on, ...), shown
// beside the inputs until cleared.
let extraFilters = new URLSearchParams();
const INPUT_FILTERS = { status: 'f-status', function: 'f-function', id: 'f-id', error: 'f-error', arg: 'f-arg' };
// The filters whose values are true or false: JSON booleans in a bulk operation's filter.
const FLAG_FILTERS = ['due', 'held', 'publish_failing', 'dead_lettered', 'lease_expired'];

/** The listing's filters now: the inputs', then the extra ones. */
function listFilters() {
  const params = new URLSearchParams();
  for (const [name, id] of Object.entries(INPUT_FILTERS)) {
    const v = $(id).value.trim();
    if (v) params.set(name, v);
  }
  for (const [k, v] of extraFilters) if (!params.has(k)) params.set(k, v);
  return params;
}

/** Sets the filters from a query string (a signal's link): inputs first, the rest as extras. */
function applyFilters(query) {
  const q = new URLSearchParams(query);
  extraFilters = new URLSearchParams();
  for (const [name, id] of Object.entries(INPUT_FILTERS)) $(id).value = q.get(name) || '';
  for (const [k, v] of q) if (!(k in INPUT_FILTERS) && k !== 'limit' && k !== 'cursor') extraFilters.set(k, v);
  renderExtraFilters();
}

function renderExtraFilters() {
  const parts = [...extraFilters].map(([k, v]) => k + ' = ' + v);
  $('f-extra').textContent = parts.length ? 'and ' + parts.join(', ') : '';
}

async function loadJobs(cursor, before) {
  const params = listFilters();
  params.set('limit', String(PAGE_SIZE));
  if (cursor) params.set('cursor', cursor);
  const page = await getJson('jobs?' + params.toString());
  list.cursor = cursor;
  list.before = before;
  list.next = page.next_cursor || null;
  renderJobs(page.jobs);
}

function renderJobs(jobs) {
  const tbody = clear($('job-table').tBodies[0]);
  for (const j of jobs) {
    const bar = el('span');
    bar.style.width = (100 * (j.progress || 0)) + '%';
    tbody.appendChild(el('tr', { onclick: () => { location.hash = '#job/' + encodeURIComponent(j.id); } },
      el('td', { class: 'mono', title: j.id }, j.id.slice(-12)),
      el('td', null, j.function),
      el('td', null, j.priority),
      el('td', null, badge(j.status)),
      el('td', { title: j.message || '' }, el('span', { class: 'mini' }, bar), ' ', Math.round(100 * (j.progress || 0)) + '%'),
      el('td', { class: 'num' }, j.attempt + '/' + j.max_attempts),
      el('td', null, fmtTime(j.created_at)),
      el('td', null, fmtTime(j.finished_at))));
  }
  if (!jobs.length) tbody.appendChild(el('tr', null, el('td', { class: 'muted', colspan: '8' }, 'no jobs')));
  $('prev').disabled = list.before.length === 0;
  $('first').disabled = list.cursor === null;
  $('next').disabled = list.next === null;
  $('page-label').textContent = 'page ' + (list.before.length + 1);
}

// ---- one job: details, live progress (status long-poll with If-None-Match), runs ----

let view = null; // { id, etag, status, attempt, ctl }

function closeJob() {
  if (view) view.ctl.abort();
  view = null;
  $('job').hidden = true;
  $('jobs').hidden = false;
  $('stats').hidden = false;
  $('insights').hidden = false;
  $('bulk').hidden = false;
}

async function openJob(id) {
  closeJob();
  const v = { id, etag: null, status: null, attempt: null, ctl: new AbortController() };
  view = v;
  $('jobs').hidden = true;
  $('stats').hidden = true;
  $('insights').hidden = true;
  $('bulk').hidden = true;
  $('job').hidden = false;
  $('cancel-result').textContent = '';
  try {
    await loadJob(v);
  } catch (e) {
    if (view === v) showError('job ' + id + ': ' + e.message);
    return;
  }
  follow(v);
}

async function loadJob(v) {
  const path = 'jobs/' + encodeURIComponent(v.id);
  const [job, runs] = await Promise.all([getJson(path, { signal: v.ctl.signal }),
    getJson(path + '/runs', { signal: v.ctl.signal })]);
  if (view !== v) return;
  renderJob(job);
  renderRuns(job, runs.runs);
}

/** Follows the job until it finishes: each long-poll answers when the ETag changes (or 304 after 25 s). */
async function follow(v) {
  if (v.following) return;
  v.following = true;
  try { await followLoop(v); } finally { v.following = false; }
}

async function followLoop(v) {
  const path = 'jobs/' + encodeURIComponent(v.id) + '/status';
  while (view === v) {
    try {
      const headers = v.etag ? { 'If-None-Match': v.etag } : {};
      const resp = await api(v.etag ? path + '?wait=25' : path, { headers, signal: v.ctl.signal });
      if (view !== v) return;
      if (resp.status === 304) continue;
      const st = await body(resp);
      v.etag = resp.headers.get('ETag');
      renderProgress(st);
      if (st.status !== v.status || st.attempt !== v.attempt) await loadJob(v); // a new run or an outcome
      if (FINISHED.includes(st.status)) return;
    } catch (e) {
      if (v.ctl.signal.aborted || e.status === 401) return;
      showError('following the job: ' + e.message);
      await sleep(3000);
    }
  }
}

function renderProgress(st) {
  const s = $('job-status');
  s.className = 'badge s-' + st.status;
  s.textContent = st.status;
  $('job-bar').style.width = (100 * (st.progress || 0)) + '%';
  $('job-message').textContent = Math.round(100 * (st.progress || 0)) + '%' + (st.message ? ' · ' + st.message : '');
  $('cancel').disabled = FINISHED.includes(st.status);
  $('retry').disabled = !RETRYABLE.includes(st.status);
  $('delete').disabled = !FINISHED.includes(st.status);
}

function json(value) { return value === null || value === undefined ? '—' : JSON.stringify(value, null, 2); }

function renderJob(job) {
  if (view) { view.status = job.status; view.attempt = job.attempt; }
  $('job-function').textContent = job.function;
  $('job-id').textContent = job.id;
  renderProgress(job);
  const fields = clear($('job-fields'));
  const row = (k, ...v) => fields.appendChild(el('tr', null, el('th', null, k), el('td', { class: 'wrap' }, ...v)));
  row('priority', job.priority);
  row('attempt', job.attempt + ' of ' + job.max_attempts);
  row('created', fmtTime(job.created_at));
  row('run after', fmtTime(job.run_after));
  row('started', fmtTime(job.started_at));
  row('finished', fmtTime(job.finished_at));
  if (job.cancel_requested) row('cancel', 'requested');
  if (job.idempotency_key) row('idempotency key', job.idempotency_key);
  if (job.unique_key) row('unique key', job.unique_key);
  if (job.parent_id) row('parent', el('a', { href: '#job/' + encodeURIComponent(job.parent_id) }, job.parent_id));
  if (job.children) {
    const counts = Object.entries(job.children).map(([s, n]) => [badge(s), ' ' + n + '  ']);
    row('children', counts, ' ', el('a', {
      href: '#', onclick: (ev) => { ev.preventDefault(); listChildren(job.id); },
    }, 'list them'));
  }
  if (job.result_uri) row('result uri', job.result_uri);
  if (job.workflow) {
    row('workflow', el('a', { href: '#workflow/' + encodeURIComponent(job.workflow.workflow_id) }, job.workflow.workflow_id),
      ' step ' + job.workflow.step + ' (' + job.workflow.finished + ' of ' + job.workflow.total + ' jobs finished)');
  }
  $('job-args').textContent = json(job.args);
  $('job-result').textContent = json(job.result);
  $('job-error').textContent = json(job.error);
}

/** Shows the children of a fan-out in the runs table's place. */
async function listChildren(parent) {
  const page = await getJson('jobs?parent=' + encodeURIComponent(parent) + '&limit=200');
  const table = clear($('runs'));
  table.appendChild(el('tr', null, ['child', 'function', 'status', 'attempt', 'finished'].map((h) => el('th', null, h))));
  for (const c of page.jobs) {
    table.appendChild(el('tr', null, el('td', { class: 'mono' }, el('a', { href: '#job/' + encodeURIComponent(c.id) }, c.id)),
      el('td', null, c.function), el('td', null, badge(c.status)), el('td', null, c.attempt + '/' + c.max_attempts),
      el('td', null, fmtTime(c.finished_at))));
  }
}

/**
 * The timeline: queued time, each run as a bar coloured by its outcome, and between a retrying
 * run and the next one its backoff (until retry_at) then the wait for dispatch.
 */
function renderRuns(job, runs) {
  const t0 = Date.parse(job.created_at);
  const now = Date.now();
  const ends = runs.map((r) => Date.parse(r.finished_at || r.retry_at || new Date(now).toISOString()));
  const t1 = Math.max(t0 + 1, job.finished_at ? Date.parse(job.finished_at) : now, ...ends);
  const line = clear($('timeline'));
  const seg = (cls, from, to, title) => {
    const d = el('div', { class: cls, title });
    d.style.left = (100 * (from - t0) / (t1 - t0)) + '%';
    d.style.width = Math.max(0, 100 * (to - from) / (t1 - t0)) + '%';
    line.appendChild(d);
  };
  let cursor = t0;
  runs.forEach((r) => {
    const start = Date.parse(r.started_at);
    if (start > cursor) seg('t-wait', cursor, start, 'waiting to be claimed: ' + fmtDuration(start - cursor));
    const end = r.finished_at ? Date.parse(r.finished_at) : now;
    seg('s-' + (r.outcome || 'running'), start, end,
      'attempt ' + r.attempt + ' on ' + r.worker_id + ': ' + (r.outcome || 'running') + ', ' + fmtDuration(end - start));
    cursor = end;
    if (r.retry_at) {
      const due = Date.parse(r.retry_at);
      seg('t-backoff', end, due, 'backoff before attempt ' + (r.attempt + 1) + ': ' + fmtDuration(due - end));
      cursor = Math.max(cursor, due);
    }
  });
  if (!runs.length && !FINISHED.includes(job.status)) seg('t-wait', t0, now, 'waiting to be claimed');

  const legend = clear($('legend'));
  for (const [cls, label] of [['t-wait', 'waiting'], ['s-running', 'running'], ['s-retrying', 'failed, will retry'],
    ['t-backoff', 'backoff'], ['s-succeeded', 'succeeded'], ['s-failed', 'failed']]) {
    legend.appendChild(el('span', null, el('i', { class: cls }), label));
  }

  const table = clear($('runs'));
  table.appendChild(el('tr', null, ['attempt', 'worker', 'started', 'ran for', 'outcome', 'error', 'retry due',
    'next run started'].map((h) => el('th', null, h))));
  runs.forEach((r, i) => {
    const start = Date.parse(r.started_at);
    const end = r.finished_at ? Date.parse(r.finished_at) : null;
    const next = runs[i + 1] ? Date.parse(runs[i + 1].started_at) : null;
    table.appendChild(el('tr', null,
      el('td', { class: 'num' }, String(r.attempt)),
      el('td', { class: 'mono' }, r.worker_id),
      el('td', null, fmtTime(r.started_at)),
      el('td', { class: 'num' }, end === null ? 'running' : fmtDuration(end - start)),
      el('td', null, badge(r.outcome || 'running')),
      el('td', { class: 'wrap' }, r.error ? r.error.kind + ': ' + r.error.message : ''),
      el('td', null, r.retry_at ? fmtTime(r.retry_at) + ' (backoff ' + fmtDuration(Date.parse(r.retry_at) - end) + ')' : ''),
      el('td', null, next !== null && end !== null ? fmtDuration(next - end) + ' after it ended' : '')));
  });
  if (!runs.length) table.appendChild(el('tr', null, el('td', { class: 'muted', colspan: '8' }, 'not run yet')));
}

/** A refusal's problem detail (or the status it left the job in), as text. */
async function detailOf(resp) {
  try { const b = await resp.json(); return b.detail || (b.status ? 'now ' + b.status : ''); } catch (_) { return ''; }
}

async function cancelJob() {
  if (!view || !confirm('Cancel job ' + view.id + '?')) return;
  const v = view;
  const resp = await api('jobs/' + encodeURIComponent(v.id) + '/cancel', { method: 'POST' });
  const detail = await detailOf(resp);
  $('cancel-result').textContent = resp.status === 202 ? 'cancel requested: the run stops when it notices'
    : resp.ok ? 'cancelled' : 'refused (' + resp.status + '): ' + detail;
  if (view === v) await loadJob(v);
}

/** Retries a failed or cancelled job (a fresh attempt budget, its runs kept), then follows it again. */
async function retryJob() {
  if (!view || !confirm('Retry job ' + view.id + '?')) return;
  const v = view;
  const resp = await api('jobs/' + encodeURIComponent(v.id) + '/retry', { method: 'POST' });
  const detail = resp.ok ? '' : await detailOf(resp);
  $('cancel-result').textContent = resp.ok ? 'queued again' : 'refused (' + resp.status + '): ' + detail;
  if (view !== v) return;
  await loadJob(v);
  v.etag = null;
  follow(v);
}

/** Deletes a finished job (its runs and GCS result with it), then goes back to the list. */
async function deleteJob() {
  if (!view || !confirm('Delete job ' + view.id + ' and its runs? This cannot be undone.')) return;
  const v = view;
  const resp = await api('jobs/' + encodeURIComponent(v.id), { method: 'DELETE' });
  if (resp.status === 204) { if (view === v) location.hash = ''; return; }
  $('cancel-result').textContent = 'refused (' + resp.status + '): ' + await detailOf(resp);
}

// ---- bulk operations: the dry run's count first, then the operation and its progress ----

let pendingBulk = null; // the request the confirmation would start
let followedOp = null; // the id of the operation whose progress is shown

function fillBulkStatuses() {
  const sel = $('b-status');
  const keep = sel.value;
  while (sel.options.length > 1) sel.remove(1);
  const allowed = ACTION_STATUSES[$('b-action').value] || [];
  for (const st of allowed) sel.appendChild(el('option', { value: st }, st));
  sel.value = allowed.includes(keep) ? keep : '';
}

/** The error kinds the API knows, from its own OpenAPI description (so they never drift). */
async function loadErrorKinds() {
  try {
    const resp = await fetch('openapi.json', { credentials: 'omit', cache: 'no-store' });
    const spec = await resp.json();
    const kinds = spec.components.schemas.OperationFilter.properties.error_kind.enum || [];
    const sel = $('b-error-kind');
    const keep = sel.value;
    while (sel.options.length > 1) sel.remove(1);
    for (const k of kinds) sel.appendChild(el('option', { value: k }, k));
    selectKind(keep);
  } catch (_) { /* the filter then offers "any" only */ }
}

/** Selects an error kind, adding it if the list doesn't have it (yet). */
function selectKind(kind) {
  const sel = $('b-error-kind');
  if (kind && ![...sel.options].some((o) => o.value === kind)) sel.appendChild(el('option', { value: kind }, kind));
  sel.value = kind || '';
}

/** A datetime-local input (the browser's time zone) as an RFC 3339 UTC time, or undefined. */
function isoOf(input) {
  if (!input.value) return undefined;
  const d = new Date(input.value);
  return Number.isNaN(d.getTime()) ? undefined : d.toISOString();
}

function bulkRequest() {
  const filter = {};
  const fn = $('b-function').value.trim();
  if (fn) filter.function = fn;
  if ($('b-status').value) filter.status = $('b-status').value;
  if ($('b-error-kind').value) filter.error_kind = $('b-error-kind').value;
  const after = isoOf($('b-after'));
  if (after) filter.created_after = after;
  const before = isoOf($('b-before'));
  if (before) filter.created_before = before;
  return { action: $('b-action').value, filter };
}

function describeFilter(filter) {
  const parts = Object.entries(filter || {}).map(([k, v]) => k + ' = ' + v);
  return parts.length ? parts.join(', ') : 'all jobs the action applies to';
}

function plural(n, what) { return n.toLocaleString() + ' ' + what + (n === 1 ? '' : 's'); }

async function postOperation(req) {
  const resp = await api('operations', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(req),
  });
  return body(resp);
}

/** Step one: a dry run, whose count the confirmation shows. Nothing changes yet. */
async function previewBulk() {
  const req = bulkRequest();
  pendingBulk = null;
  $('bulk-confirm').hidden = true;
  const answer = await postOperation(Object.assign({}, req, { dry_run: true }));
  pendingBulk = req;
  $('bulk-count').textContent = plural(answer.count, 'job') + ' match now (' + describeFilter(req.filter) + ').';
  $('bulk-start').textContent = req.action + ' ' + plural(answer.count, 'job');
  $('bulk-start').disabled = answer.count === 0;
  $('bulk-confirm').hidden = false;
}

/** Step two, on confirmation: starts the operation and follows its progress. */
async function startBulk() {
  const req = pendingBulk;
  if (!req) return;
  pendingBulk = null;
  $('bulk-confirm').hidden = true;
  const op = await postOperation(req);
  await followOperation(op);
}

function renderOperationProgress(op) {
  $('bulk-progress').hidden = false;
  const matched = op.matched === null || op.matched === undefined ? null : op.matched;
  $('bulk-bar').style.width = (matched ? 100 * op.done / matched : (op.status === 'running' ? 0 : 100)) + '%';
  $('bulk-status').textContent = op.action + ' ' + op.status + ': ' + op.done.toLocaleString() + ' of ' +
    (matched === null ? '?' : matched.toLocaleString()) + ' done, ' + op.affected.toLocaleString() + ' changed' +
    (op.error ? ' · ' + op.error : '');
}

async function followOperation(op) {
  followedOp = op.id;
  while (followedOp === op.id) {
    renderOperationProgress(op);
    if (op.status !== 'running') break;
    await sleep(1000);
    op = await getJson('operations/' + encodeURIComponent(op.id));
  }
  await refreshOperations();
  if (!view && list.cursor === null) await loadJobs(null, []);
}

async function refreshOperations() {
  const page = await getJson('operations?limit=' + OPERATIONS_SHOWN);
  const tbody = clear($('operations').tBodies[0]);
  for (const op of page.operations) {
    tbody.appendChild(el('tr', { title: op.id },
      el('td', null, fmtTime(op.created_at)),
      el('td', null, op.action),
      el('td', { class: 'filter' }, describeFilter(op.filter)),
      el('td', null, op.owner),
      el('td', null, op.status === 'running' ? badge('running') : op.status === 'failed' ? badge('failed') : op.status),
      el('td', { class: 'num' }, op.done.toLocaleString() + ' / ' + (op.matched === null ? '?' : op.matched.toLocaleString())),
      el('td', { class: 'num' }, op.affected.toLocaleString()),
      el('td', { title: op.error || '' }, op.error ? 'failed: ' + op.error : fmtTime(op.finished_at))));
  }
  if (!page.operations.length) tbody.appendChild(el('tr', null, el('td', { class: 'muted', colspan: '8' }, 'no operations yet')));
}

/** The limits with their use now, and the pauses (any token may read them). */
async function refreshFlow() {
  const [limits, pauses] = await Promise.all([getJson('limits'), getJson('pauses')]);
  const lbody = clear($('limits').tBodies[0]);
  for (const l of limits.limits) {
    const rate = l.rate_per_second === null ? '—' : l.rate_per_second + '/s (burst ' + l.burst + ')';
    const keys = l.keys.map((k) => k[0] + ': ' + k[1] + ' running, ' + k[2] + ' held').join('; ');
    lbody.appendChild(el('tr', null,
      el('td', null, l.name),
      el('td', null, l.key_by),
      el('td', null, l.functions.join(', ')),
      el('td', { class: 'num' }, l.concurrency === null ? '—' : String(l.concurrency)),
      el('td', null, rate),
      el('td', { class: 'num' }, l.running.toLocaleString()),
      el('td', { class: 'num' }, l.held.toLocaleString()),
      el('td', { class: 'filter' }, keys || '—'),
      el('td', null, l.overridden_by ? 'set by ' + l.overridden_by + ' ' + fmtTime(l.overridden_at) : 'as declared')));
  }
  if (!limits.limits.length) lbody.appendChild(el('tr', null, el('td', { class: 'muted', colspan: '9' }, 'no limits declared')));
  const select = $('l-name');
  const chosen = select.value;
  clear(select);
  for (const l of limits.limits) select.appendChild(el('option', { value: l.name }, l.name));
  if (chosen) select.value = chosen;
  const pbody = clear($('pauses').tBodies[0]);
  for (const p of pauses.pauses) {
    pbody.appendChild(el('tr', null, el('td', null, p.scope), el('td', null, p.name), el('td', null, p.paused_by),
      el('td', null, fmtTime(p.paused_at)), el('td', { class: 'num' }, p.held.toLocaleString())));
  }
  if (!pauses.pauses.length) pbody.appendChild(el('tr', null, el('td', { class: 'muted', colspan: '5' }, 'nothing paused')));
}

/** PUT (or DELETE, back to the declared values) of the chosen limit, then the panel again. */
async function changeLimit(reset) {
  const name = $('l-name').value;
  if (!name) return;
  const num = (id) => ($(id).value === '' ? null : Number($(id).value));
  const opts = reset ? { method: 'DELETE' } : {
    method: 'PUT',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ concurrency: num('l-concurrency'), rate_per_second: num('l-rate'), burst: num('l-burst') || 1 }),
  };
  await body(await api('limits/' + encodeURIComponent(name), opts));
  await refreshFlow();
}

/** POST .../pause or .../resume of the named queue or function, then the panel again. */
async function togglePause(verb) {
  const name = $('p-name').value.trim();
  if (!name) return;
  await body(await api($('p-scope').value + '/' + encodeURIComponent(name) + '/' + verb, { method: 'POST' }));
  await refreshFlow();
}

/** `#bulk?action=retry&function=f&status=...`: the form filled from a link, and its dry run shown. */
function openBulk(query) {
  const q = new URLSearchParams(query);
  if (ACTION_STATUSES[q.get('action')]) $('b-action').value = q.get('action');
  fillBulkStatuses();
  if (q.get('function')) $('b-function').value = q.get('function');
  if (q.get('status')) $('b-status').value = q.get('status');
  if (q.get('error_kind')) selectKind(q.get('error_kind'));
  $('bulk').scrollIntoView();
  previewBulk().catch((e) => showError('bulk: ' + e.message));
}

// ---- workflows ----

async function refreshWorkflows() {
  const page = await getJson('workflows?limit=20');
  const tbody = clear($('wf-table').tBodies[0]);
  for (const w of page.workflows) {
    tbody.appendChild(el('tr', { onclick: () => { location.hash = '#workflow/' + encodeURIComponent(w.id); } },
      el('td', { class: 'mono' }, w.id), el('td', null, w.name || '(submitted as JSON)'), el('td', null, badge(w.status)),
      el('td', null, Math.round(w.progress * 100) + '%'), el('td', null, String(w.total)), el('td', null, fmtTime(w.created_at))));
  }
  $('workflows').hidden = page.workflows.length === 0;
}

let wfView = null;

function closeWorkflow() {
  if (wfView) wfView.ctl.abort();
  wfView = null;
  $('workflow').hidden = true;
  $('flow').hidden = false;
}

/** A workflow as its steps in order, following it by long-poll; a waiting signal step gets its controls. */
async function openWorkflow(id) {
  closeJob();
  closeWorkflow();
  const v = { id, etag: null, ctl: new AbortController() };
  wfView = v;
  view = v;
  for (const s of ['jobs', 'stats', 'insights', 'bulk', 'workflows', 'flow']) $(s).hidden = true;
  $('workflow').hidden = false;
  $('wf-result').textContent = '';
  while (wfView === v) {
    try {
      const headers = v.etag ? { 'If-None-Match': v.etag } : {};
      const resp = await api('workflows/' + encodeURIComponent(id) + (v.etag ? '?wait=25' : ''), { headers, signal: v.ctl.signal });
      if (resp.status !== 304) {
        v.etag = resp.headers.get('ETag');
        const w = await body(resp);
        if (wfView !== v) return;
        renderWorkflow(w);
        if (['succeeded', 'failed', 'cancelled'].includes(w.status)) return;
        // Only a person moves a waiting workflow on: look again now and then, not by long-poll.
        if (w.status === 'waiting') { await sleep(2000); v.etag = null; }
      }
    } catch (e) {
      if (wfView === v) showError('workflow ' + id + ': ' + e.message);
      return;
    }
  }
}

function renderWorkflow(w) {
  $('wf-name').textContent = w.name || '';
  $('wf-id').textContent = w.id;
  const status = $('wf-status');
  status.textContent = w.status;
  status.className = 'badge s-' + w.status;
  $('wf-bar').style.width = Math.round(w.progress * 100) + '%';
  $('wf-cancel').disabled = ['succeeded', 'failed', 'cancelled'].includes(w.status);
  $('wf-retry').disabled = !['failed', 'cancelled'].includes(w.status);
  $('wf-failure').textContent = w.failure ? 'failed at ' + w.failure.step + ': ' + ((w.failure.error || {}).message || w.failure.status) : '';
  const tbody = clear($('wf-steps').tBodies[0]);
  for (const s of w.steps) {
    const first = s.jobs[0] || {};
    const name = s.total === 1 ? el('a', { href: '#job/' + encodeURIComponent(first.job_id) }, s.name) : s.name;
    const counts = Object.entries(s.counts).map(([k, n]) => k + ' ' + n).join(', ');
    const controls = s.signal && s.status === 'waiting' ? signalControls(w.id, s.name) : '';
    tbody.appendChild(el('tr', { class: 'step-' + s.status },
      el('td', null, name, s.signal ? ' (signal)' : ''), el('td', null, s.after.join(', ')), el('td', null, badge(s.status)),
      el('td', null, Math.round(s.progress * 100) + '%' + (s.message ? ' ' + s.message : '')),
      el('td', null, s.total === 1 ? '' : s.total + ': ' + counts), el('td', null, String(s.round)),
      el('td', null, fmtTime(first.started_at)), el('td', null, fmtTime(first.finished_at)), el('td', null, controls)));
  }
}

/** Approve, reject, or approve with edited data (JSON), for a waiting signal step. */
function signalControls(id, step) {
  const data = el('textarea', { class: 'signal-data', rows: 2, cols: 22, placeholder: '{"notes": "..."} (optional JSON)' });
  const send = async (decision) => {
    let parsed = {};
    try { if (data.value.trim()) parsed = JSON.parse(data.value); } catch (e) { $('wf-result').textContent = 'data is not JSON: ' + e.message; return; }
    const resp = await api('workflows/' + encodeURIComponent(id) + '/steps/' + encodeURIComponent(step) + '/signal',
      { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ decision, data: parsed }) });
    if (resp.ok) $('wf-result').textContent = decision + ' sent for ' + step;
    else $('wf-result').textContent = (await detailOf(resp));
  };
  return el('span', { class: 'signal' }, data,
    el('button', { type: 'button', class: 'approve', onclick: () => send('approve').catch((e) => showError(e.message)) }, 'Approve'),
    el('button', { type: 'button', class: 'danger reject', onclick: () => send('reject').catch((e) => showError(e.message)) }, 'Reject'));
}

// ---- wiring ----

function route() {
  const m = location.hash.match(/^#job\/(.+)$/);
  const wf = location.hash.match(/^#workflow\/(.+)$/);
  const bulk = location.hash.match(/^#bulk\?(.*)$/);
  if (wf) { openWorkflow(decodeURIComponent(wf[1])); return; }
  closeWorkflow();
  if (m) openJob(decodeURIComponent(m[1]));
  else { closeJob(); tick(); if (bulk) openBulk(bulk[1]); }
}

let ticking = false;
/** Refreshes the stats, and the job list when it shows the newest page (the job view follows its job itself). */
async function tick() {
  if (ticking || !token() || document.hidden || view) return;
  ticking = true;
  try {
    await refreshStats();
    if (!view) await refreshInsights();
    if (!view && list.cursor === null) await loadJobs(null, []);
    if (!view) await refreshOperations();
    if (!view) await refreshFlow();
    if (!view) await refreshWorkflows();
    $('refreshed').textContent = 'updated ' + new Date().toLocaleTimeString();
    showError('');
  } catch (e) {
    if (e.status !== 401) showError(e.message);
  } finally {
    ticking = false;
  }
}

function start() {
  $('login').hidden = true;
  $('app').hidden = false;
  $('forget').hidden = false;
  fillBulkStatuses();
  loadErrorKinds();
  route();
}

$('login-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const t = $('token').value.trim();
  if (!t) return;
  sessionStorage.setItem(TOKEN_KEY, t);
  $('token').value = '';
  start();
});
$('forget').addEventListener('click', () => forgetToken(''));
$('filters').addEventListener('submit', (ev) => { ev.preventDefault(); loadJobs(null, []).catch((e) => showError(e.message)); });
$('next').addEventListener('click', () => loadJobs(list.next, list.before.concat([list.cursor])).catch((e) => showError(e.message)));
$('prev').addEventListener('click', () => {
  const before = list.before.slice(0, -1);
  loadJobs(list.before[list.before.length - 1], before).catch((e) => showError(e.message));
});
$('f-clear').addEventListener('click', () => { applyFilters(''); loadJobs(null, []).catch((e) => showError(e.message)); });
$('act-form').addEventListener('submit', (ev) => { ev.preventDefault(); actOnFilter().catch((e) => showError('act: ' + e.message)); });
$('fn-window').addEventListener('change', () => refreshInsights().catch((e) => showError(e.message)));
$('first').addEventListener('click', () => loadJobs(null, []).catch((e) => showError(e.message)));
$('back').addEventListener('click', (ev) => { ev.preventDefault(); location.hash = ''; });
$('wf-back').addEventListener('click', (ev) => { ev.preventDefault(); location.hash = ''; });
$('wf-cancel').addEventListener('click', async () => {
  if (!wfView) return;
  const resp = await api('workflows/' + encodeURIComponent(wfView.id) + '/cancel', { method: 'POST' });
  $('wf-result').textContent = resp.ok ? 'cancel requested' : await detailOf(resp);
});
$('wf-retry').addEventListener('click', async () => {
  if (!wfView) return;
  const id = wfView.id;
  const resp = await api('workflows/' + encodeURIComponent(id) + '/retry', { method: 'POST' });
  if (!resp.ok) { $('wf-result').textContent = await detailOf(resp); return; }
  // Follow it again: the view had stopped at the finished state.
  openWorkflow(id).catch((e) => showError(e.message));
  $('wf-result').textContent = 'retried';
});
$('cancel').addEventListener('click', () => cancelJob().catch((e) => showError(e.message)));
$('retry').addEventListener('click', () => retryJob().catch((e) => showError(e.message)));
$('delete').addEventListener('click', () => deleteJob().catch((e) => showError(e.message)));
$('b-action').addEventListener('change', () => { fillBulkStatuses(); pendingBulk = null; $('bulk-confirm').hidden = true; });
// A changed filter must be previewed again before it can be started.
$('bulk-form').addEventListener('input', () => { pendingBulk = null; $('bulk-confirm').hidden = true; });
$('bulk-form').addEventListener('submit', (ev) => { ev.preventDefault(); previewBulk().catch((e) => showError('bulk: ' + e.message)); });
$('bulk-start').addEventListener('click', () => startBulk().catch((e) => showError('bulk: ' + e.message)));
$('bulk-abort').addEventListener('click', () => { pendingBulk = null; $('bulk-confirm').hidden = true; });
$('limit-form').addEventListener('submit', (ev) => { ev.preventDefault(); changeLimit(false).catch((e) => showError('limit: ' + e.message)); });
$('l-reset').addEventListener('click', () => changeLimit(true).catch((e) => showError('limit: ' + e.message)));
$('pause-form').addEventListener('submit', (ev) => { ev.preventDefault(); togglePause('pause').catch((e) => showError('pause: ' + e.message)); });
$('p-resume').addEventListener('click', () => togglePause('resume').catch((e) => showError('resume: ' + e.message)));
window.addEventListener('hashchange', () => { if (token()) route(); });
setInterval(tick, REFRESH_MS);

/**
 * A token may also come in the fragment (`/dashboard#token=...`, or `#job/ID&token=...`): a
 * link a script can open, which never reaches a server or a Referer. It moves to session storage
 * and leaves the address bar at once.
 */
function tokenFromFragment() {
  const m = location.hash.match(/(^#|&)token=([^&]*)/);
  if (!m) return;
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[2]));
  const rest = location.hash.replace(m[0], m[1] === '#' ? '#' : '').replace(/^#&/, '#');
  history.replaceState(null, '', location.pathname + location.search + (rest === '#' ? '' : rest));
}

tokenFromFragment();
if (token()) start(); else forgetToken('');
