// sluice admin dashboard: reads the admin API of the port that served it
// (with the admin token kept in sessionStorage) and draws each backend's
// last minutes with uPlot. No other host is ever called; everything shown
// is set as text, never as HTML.
'use strict';

(() => {
  const TOKEN_KEY = 'sluice.adminToken';
  const TICK_MS = 2000;
  const DEAD_EVERY_MS = 10000;
  const CLIENTS_EVERY_MS = 5000;
  const CHART_HEIGHT = 170;

  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    authMode: document.body.dataset.auth === 'token' ? 'token' : 'none',
    windowSec: 300,
    intervalSec: 2,
    historySec: 600,
    lastAt: '', // the newest point's at, as the server wrote it
    emptyPolls: 0,
    series: new Map(), // backend name -> columns of its history
    cards: new Map(), // backend name -> card
    names: [],
    running: false,
    timer: 0,
    lastDead: 0,
    lastClients: 0,
    fullReload: false,
  };

  // ---- API ---------------------------------------------------------------

  class APIError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
      this.detail = detail;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    if (state.token) headers.Authorization = 'Bearer ' + state.token;
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (e) {
      throw new APIError(0, 'sluice did not answer');
    }
    const text = await resp.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      data = null;
    }
    if (!resp.ok) {
      const detail = (data && (data.detail || data.title)) || resp.statusText || 'error';
      const err = new APIError(resp.status, detail);
      if (resp.status === 401) signOut('The token was not accepted. Enter it again.');
      throw err;
    }
    return data;
  }

  const enc = encodeURIComponent;

  // ---- Formatting --------------------------------------------------------

  const nf = [0, 1, 2].map((d) => new Intl.NumberFormat(undefined, { maximumFractionDigits: d }));
  const compact = new Intl.NumberFormat(undefined, { notation: 'compact', maximumFractionDigits: 1 });
  const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  const minuteFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
  const dateTimeFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

  const ok = (v) => v !== null && v !== undefined && Number.isFinite(v);
  const num = (v, d = 1) => (ok(v) ? nf[d].format(v) : '—');
  const axisNum = (v) => (Math.abs(v) >= 10000 ? compact.format(v) : nf[2].format(v));
  function bytes(v) {
    if (!ok(v)) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return nf[i === 0 ? 0 : 1].format(v) + ' ' + units[i];
  }
  function seconds(v) {
    if (!ok(v)) return '—';
    if (v < 60) return num(v, 1) + ' s';
    if (v < 3600) return num(v / 60, 1) + ' min';
    return num(v / 3600, 1) + ' h';
  }
  function ago(iso) {
    const t = Date.parse(iso);
    if (!Number.isFinite(t)) return '—';
    const s = Math.max(0, (Date.now() - t) / 1000);
    if (s < 60) return Math.round(s) + ' s ago';
    if (s < 3600) return Math.round(s / 60) + ' min ago';
    if (s < 86400) return Math.round(s / 3600) + ' h ago';
    return Math.round(s / 86400) + ' d ago';
  }
  const when = (iso) => {
    const t = Date.parse(iso);
    return Number.isFinite(t) ? dateTimeFmt.format(t) : '—';
  };
  const breakerText = { closed: 'breaker closed', half_open: 'breaker half-open', open: 'breaker open' };

  // el builds an element; children are nodes or text (never HTML).
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  function say(node, text, kind) {
    node.textContent = text;
    node.classList.toggle('ok', kind === 'ok');
    node.classList.toggle('error', kind === 'error');
  }

  const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

  // ---- Sign in -----------------------------------------------------------

  function showLogin(message) {
    $('#app').hidden = true;
    $('#signout').hidden = true;
    $('#login').hidden = false;
    const e = $('#login-error');
    e.hidden = !message;
    e.textContent = message || '';
    setLive('idle', 'signed out');
    $('#token').focus();
  }

  function signOut(message) {
    stop();
    state.token = '';
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(message);
  }

  $('#login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const token = $('#token').value.trim();
    if (!token) return;
    state.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
    $('#token').value = '';
    start();
  });

  $('#signout').addEventListener('click', () => signOut(''));

  function setLive(kind, text) {
    const live = $('#live');
    live.dataset.state = kind;
    $('.text', live).textContent = text;
  }

  // ---- History -----------------------------------------------------------

  const emptySeries = () => ({
    t: [], delivered: [], retried: [], failed: [], p50: [], p99: [],
    depth: [], backlog: [], limit: [], inflight: [], breaker: [],
  });

  function ingest(hist, full) {
    state.intervalSec = hist.interval_seconds || 2;
    state.historySec = hist.window_seconds || 600;
    let added = 0;
    for (const bh of hist.backends || []) {
      let s = state.series.get(bh.name);
      if (full || !s) {
        s = emptySeries();
        state.series.set(bh.name, s);
      }
      for (const p of bh.points || []) {
        const t = Date.parse(p.at) / 1000;
        if (!Number.isFinite(t) || (s.t.length && t <= s.t[s.t.length - 1])) continue;
        s.t.push(t);
        s.delivered.push(p.delivered_per_second ?? null);
        s.retried.push(p.retried_per_second ?? null);
        s.failed.push(p.failed_per_second ?? null);
        s.p50.push(p.latency_p50_ms ?? null);
        s.p99.push(p.latency_p99_ms ?? null);
        s.depth.push(p.queue_depth ?? null);
        s.backlog.push(p.backlog_seconds ?? null);
        s.limit.push(p.concurrency ?? null);
        s.inflight.push(p.in_flight ?? null);
        s.breaker.push(p.breaker || 'closed');
        if (!state.lastAt || Date.parse(p.at) > Date.parse(state.lastAt)) state.lastAt = p.at;
        added++;
      }
      const cut = lastTime() - state.historySec;
      let i = 0;
      while (i < s.t.length && s.t[i] < cut) i++;
      if (i > 0) for (const k of Object.keys(s)) s[k].splice(0, i);
    }
    return added;
  }

  // lastTime is the newest point's time (the server's clock), or now.
  function lastTime() {
    const t = Date.parse(state.lastAt) / 1000;
    return Number.isFinite(t) ? t : Date.now() / 1000;
  }

  // visible returns the columns of s inside the chart window.
  function visible(s, keys) {
    const from = lastTime() - state.windowSec;
    let i = 0;
    while (i < s.t.length && s.t[i] < from) i++;
    return [s.t.slice(i), ...keys.map((k) => s[k].slice(i))];
  }

  // ---- Charts ------------------------------------------------------------

  const chartKinds = {
    throughput: {
      keys: ['delivered', 'retried', 'failed'],
      series: [
        { label: 'delivered', color: '--s1', unit: '/s' },
        { label: 'retried', color: '--s2', unit: '/s' },
        { label: 'failed', color: '--s3', unit: '/s' },
      ],
    },
    latency: {
      keys: ['p50', 'p99'],
      series: [
        { label: 'p50', color: '--s1', unit: ' ms' },
        { label: 'p99', color: '--s4', unit: ' ms' },
      ],
    },
    queue: {
      keys: ['depth', 'backlog'],
      series: [
        { label: 'queued', color: '--s1', unit: '' },
        { label: 'backlog', color: '--s2', unit: ' s', scale: 'sec' },
      ],
    },
    concurrency: {
      keys: ['limit', 'inflight'],
      series: [
        { label: 'limit', color: '--s4', unit: '', stepped: true },
        { label: 'in flight', color: '--s1', unit: '' },
      ],
    },
  };

  function zeroBased(u, min, max) {
    if (!ok(max) || max <= 0) return [0, 1];
    return [0, max * 1.15];
  }

  function makeChart(kind, plot) {
    const def = chartKinds[kind];
    const muted = cssVar('--muted');
    const grid = cssVar('--grid');
    const font = '11px ' + cssVar('--font');
    const axis = { stroke: muted, font, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1, size: 4 } };
    const hasSec = def.series.some((s) => s.scale === 'sec');
    const opts = {
      width: Math.max(200, plot.clientWidth),
      height: CHART_HEIGHT,
      cursor: { drag: { x: false, y: false, setScale: false }, points: { size: 6 } },
      legend: { live: true },
      scales: { x: { time: true }, y: { range: zeroBased } },
      axes: [
        {
          ...axis,
          space: 70,
          // Times of day only: the chart spans minutes, never a date.
          values: (u, splits) => splits.map((v) => (state.windowSec <= 120 ? timeFmt : minuteFmt).format(v * 1000)),
        },
        { ...axis, size: 44, values: (u, splits) => splits.map(axisNum) },
      ],
      series: [
        { value: (u, v) => (ok(v) ? timeFmt.format(v * 1000) : '—') },
        ...def.series.map((s) => ({
          label: s.label,
          stroke: cssVar(s.color),
          width: 1.6,
          scale: s.scale || 'y',
          spanGaps: false,
          points: { show: false },
          paths: s.stepped ? uPlot.paths.stepped({ align: 1 }) : undefined,
          value: (u, v) => (ok(v) ? num(v, v < 10 ? 2 : 1) + s.unit : ''),
        })),
      ],
    };
    if (hasSec) {
      opts.scales.sec = { range: zeroBased };
      opts.axes.push({ ...axis, scale: 'sec', side: 1, size: 40, grid: { show: false }, values: (u, splits) => splits.map((v) => axisNum(v) + 's') });
    }
    return new uPlot(opts, [[], ...def.keys.map(() => [])], plot);
  }

  // ---- Backend cards -----------------------------------------------------

  function makeCard(name) {
    const node = $('#backend-card').content.firstElementChild.cloneNode(true);
    node.dataset.backend = name;
    $('.backend-name', node).textContent = name;
    const card = { name, node, charts: {}, backend: null };
    const form = $('.controls', node);
    form.addEventListener('input', () => {
      form.dataset.dirty = '1';
    });
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      apply(card);
    });
    $('.pause', node).addEventListener('click', () => togglePause(card));
    $('.reset', node).addEventListener('click', () => resetTuning(card));
    $('.strip', node).setAttribute('aria-label', 'Breaker state of ' + name + ' over the chart window');
    return card;
  }

  function buildCharts(card) {
    for (const fig of $$('.chart', card.node)) {
      const kind = fig.dataset.chart;
      const plot = $('.plot', fig);
      if (card.charts[kind]) card.charts[kind].destroy();
      plot.textContent = '';
      card.charts[kind] = makeChart(kind, plot);
    }
  }

  function renderBackends(list) {
    const names = list.map((b) => b.name);
    const host = $('#backend-list');
    if (names.join('\n') !== state.names.join('\n')) {
      for (const c of state.cards.values()) for (const u of Object.values(c.charts)) u.destroy();
      state.cards.clear();
      host.textContent = '';
      for (const n of names) {
        const card = makeCard(n);
        state.cards.set(n, card);
        host.append(card.node);
        buildCharts(card);
      }
      state.names = names;
      fillDeadSelect(names);
    }
    for (const b of list) updateCard(state.cards.get(b.name), b);
  }

  function limitOf(b) {
    const st = b.stats || {};
    return ok(st.concurrency_limit) ? st.concurrency_limit : b.concurrency;
  }

  function updateCard(card, b) {
    card.backend = b;
    const n = card.node;
    const st = b.stats || {};
    const br = $('.breaker', n);
    const state_ = st.breaker || 'closed';
    br.className = 'badge breaker ' + state_;
    br.textContent = breakerText[state_] || state_;
    $('.paused-badge', n).hidden = !b.paused;
    $('.adaptive-badge', n).hidden = !b.adaptive;
    $('.tuned-badge', n).hidden = !b.tuning;
    $('.reset', n).hidden = !b.tuning;
    // With several worker processes, in flight and the limit are theirs
    // together (b.cluster), and a line lists each one.
    const c = b.cluster && Array.isArray(b.cluster.workers) && b.cluster.workers.length ? b.cluster : null;

    const s = state.series.get(b.name) || emptySeries();
    const last = (k) => (s[k].length ? s[k][s[k].length - 1] : null);
    const delivered = last('delivered');
    kpi(n, 'delivered', num(delivered, 1), ok(delivered) ? '/s' : '');
    const p50 = last('p50');
    const p99 = last('p99');
    kpi(n, 'latency', ok(p50) || ok(p99) ? num(p50, 0) + ' / ' + num(p99, 0) : '—', ok(p50) || ok(p99) ? 'ms' : '');
    kpi(n, 'queue', num(st.queue_depth, 0), st.stalled ? 'stalled' : '');
    kpi(n, 'backlog', seconds(st.backlog_seconds), '');
    const limit = c ? c.concurrency_limit : limitOf(b);
    const inFlight = c ? c.in_flight : st.in_flight;
    kpi(n, 'concurrency', num(inFlight, 0) + ' / ' + num(limit, 0), b.adaptive && limit !== b.concurrency ? 'of ' + b.concurrency : '');
    const workers = $('.workers', n);
    workers.hidden = !c;
    if (c) {
      workers.textContent = c.workers.length === 1 ? '1 worker: ' : c.workers.length + ' workers: ';
      c.workers.forEach((w, i) => {
        if (i) workers.append(' · ');
        workers.append(el('b', { text: (w.host || '?') + ':' + w.pid }), ' ' + num(w.in_flight, 0) + ' / ' + num(w.concurrency_limit, 0) +
          ' in flight, ' + num(w.delivered_per_second, 1) + '/s');
      });
    }
    kpi(n, 'rate', b.rate > 0 ? num(b.rate, 2) : 'unlimited', b.rate > 0 ? '/s' : '');

    const pause = $('.pause', n);
    pause.textContent = b.paused ? 'Resume' : 'Pause';
    const form = $('.controls', n);
    if (!form.dataset.dirty && !form.contains(document.activeElement)) fillForm(form, b);
  }

  function kpi(node, key, value, unit) {
    const dd = $(`[data-kpi="${key}"]`, node);
    dd.textContent = value;
    if (unit) dd.append(el('small', { text: unit }));
  }

  function fillForm(form, b) {
    form.elements.rate.value = String(b.rate);
    form.elements.concurrency.value = String(b.concurrency);
    form.elements.adaptive.checked = !!b.adaptive;
  }

  function drawCharts() {
    for (const card of state.cards.values()) {
      const s = state.series.get(card.name) || emptySeries();
      const to = lastTime();
      for (const [kind, u] of Object.entries(card.charts)) {
        const data = visible(s, chartKinds[kind].keys);
        u.batch(() => {
          u.setData(data);
          u.setScale('x', { min: to - state.windowSec, max: to });
        });
        if (kind === 'latency') {
          const any = data.slice(1).some((col) => col.some(ok));
          $('.chart[data-chart="latency"] .chart-note', card.node).hidden = any;
        }
      }
      drawStrip(card, s, to);
    }
  }

  function drawStrip(card, s, to) {
    const canvas = $('.strip', card.node);
    const w = canvas.clientWidth;
    const h = canvas.clientHeight;
    if (!w || !h) return;
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    const g = canvas.getContext('2d');
    g.scale(dpr, dpr);
    g.clearRect(0, 0, w, h);
    const from = to - state.windowSec;
    const colors = { closed: cssVar('--ok'), half_open: cssVar('--warn'), open: cssVar('--bad') };
    const x = (t) => ((t - from) / state.windowSec) * w;
    for (let i = 0; i < s.t.length; i++) {
      const t1 = s.t[i];
      if (t1 < from) continue;
      const t0 = Math.max(from, i > 0 ? s.t[i - 1] : t1 - state.intervalSec);
      g.fillStyle = colors[s.breaker[i]] || colors.closed;
      g.globalAlpha = s.breaker[i] === 'closed' ? 0.55 : 1;
      g.fillRect(x(t0), 0, Math.max(1, x(t1) - x(t0)), h);
    }
    g.globalAlpha = 1;
  }

  function resizeCharts() {
    for (const card of state.cards.values()) {
      for (const [kind, u] of Object.entries(card.charts)) {
        const plot = $(`.chart[data-chart="${kind}"] .plot`, card.node);
        const w = Math.max(200, plot.clientWidth);
        if (Math.abs(u.width - w) > 1) u.setSize({ width: w, height: CHART_HEIGHT });
      }
    }
    drawCharts();
  }

  let resizeQueued = false;
  new ResizeObserver(() => {
    if (resizeQueued) return;
    resizeQueued = true;
    requestAnimationFrame(() => {
      resizeQueued = false;
      resizeCharts();
    });
  }).observe($('#backend-list'));

  window.matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => {
    for (const card of state.cards.values()) buildCharts(card);
    drawCharts();
  });

  for (const b of $$('.segmented [data-window]')) {
    b.addEventListener('click', () => {
      state.windowSec = Number(b.dataset.window);
      for (const o of $$('.segmented [data-window]')) o.setAttribute('aria-pressed', String(o === b));
      drawCharts();
    });
  }

  // ---- Controls ----------------------------------------------------------

  async function apply(card) {
    const form = $('.controls', card.node);
    const answer = $('.answer', form);
    const b = card.backend;
    const patch = {};
    const rate = form.elements.rate.value.trim();
    const conc = form.elements.concurrency.value.trim();
    if (rate !== '' && Number(rate) !== b.rate) patch.rate = Number(rate);
    if (conc !== '' && Number(conc) !== b.concurrency) patch.concurrency = Number(conc);
    if (form.elements.adaptive.checked !== !!b.adaptive) patch.adaptive = form.elements.adaptive.checked;
    if (Object.values(patch).some((v) => typeof v === 'number' && !Number.isFinite(v))) {
      say(answer, 'Rate and concurrency must be numbers.', 'error');
      return;
    }
    if (!Object.keys(patch).length) {
      delete form.dataset.dirty;
      say(answer, 'Nothing to change.', '');
      return;
    }
    await send(card, patch, (nb) => {
      const parts = [];
      if ('rate' in patch) parts.push('rate ' + (nb.rate > 0 ? num(nb.rate, 2) + '/s' : 'unlimited'));
      if ('concurrency' in patch) parts.push('concurrency ' + nb.concurrency);
      if ('adaptive' in patch) parts.push('adaptive ' + (nb.adaptive ? 'on' : 'off'));
      return 'Applied: ' + parts.join(', ') + '.';
    });
  }

  async function togglePause(card) {
    const paused = !card.backend.paused;
    await send(card, { paused }, () =>
      paused ? 'Paused: requests wait in the queue until resumed.' : 'Resumed: deliveries go on.',
    );
  }

  async function resetTuning(card) {
    await send(card, null, (nb) => 'Back to the config: rate ' + (nb.rate > 0 ? num(nb.rate, 2) + '/s' : 'unlimited') +
      ', concurrency ' + nb.concurrency + ', in every process.');
  }

  // send PATCHes the backend with patch, or with null drops its tuning
  // (DELETE …/tuning).
  async function send(card, patch, describe) {
    const form = $('.controls', card.node);
    const answer = $('.answer', form);
    const buttons = $$('button', form);
    buttons.forEach((x) => (x.disabled = true));
    say(answer, 'Sending…', '');
    try {
      const path = '/admin/backends/' + enc(card.name);
      const nb = patch === null ? await api('DELETE', path + '/tuning') : await api('PATCH', path, patch);
      delete form.dataset.dirty;
      updateCard(card, nb);
      fillForm(form, nb);
      say(answer, describe(nb), 'ok');
    } catch (err) {
      if (err.status !== 401) say(answer, 'Not applied: ' + err.detail + (err.status ? ' (' + err.status + ')' : ''), 'error');
    } finally {
      buttons.forEach((x) => (x.disabled = false));
    }
  }

  // ---- Dead letters ------------------------------------------------------

  function fillDeadSelect(names) {
    const sel = $('#dl-backend');
    const cur = sel.value;
    sel.textContent = '';
    sel.append(el('option', { value: '', text: 'All backends' }));
    for (const n of names) sel.append(el('option', { value: n, text: n }));
    sel.value = names.includes(cur) ? cur : '';
    syncReplayAll();
  }

  function syncReplayAll() {
    const b = $('#dl-backend').value;
    const btn = $('#dl-replay-all');
    btn.disabled = !b;
    btn.textContent = b ? 'Replay all of ' + b : 'Replay all';
    btn.title = b ? '' : 'Choose a backend to replay all of its dead letters';
  }

  async function loadDead() {
    state.lastDead = Date.now();
    const b = $('#dl-backend').value;
    const data = await api('GET', '/admin/dead-letters?limit=100' + (b ? '&backend=' + enc(b) : ''));
    const rows = $('#dl-rows');
    rows.textContent = '';
    const items = (data && data.items) || [];
    for (const it of items) {
      rows.append(
        el('tr', {},
          el('td', { class: 'id', text: it.id }),
          el('td', { text: it.backend }),
          el('td', { text: it.route || '—' }),
          el('td', { class: 'num', text: num(it.attempts, 0) }),
          el('td', { class: 'err', text: it.last_error || '—' }),
          el('td', { title: when(it.dead_lettered_at), text: ago(it.dead_lettered_at) }),
          el('td', { class: 'actions' },
            el('button', { type: 'button', class: 'small ghost lookup', text: 'Attempts', onclick: () => lookup(it.id) }),
            el('button', { type: 'button', class: 'small replay', text: 'Replay', onclick: (ev) => replay(it.backend, [it.id], ev.currentTarget) }),
          ),
        ),
      );
    }
    $('#dl-empty').hidden = items.length > 0;
  }

  async function replay(backend, ids, button) {
    const answer = $('#dl-answer');
    if (button) button.disabled = true;
    try {
      const body = { backend };
      if (ids) body.ids = ids;
      const r = await api('POST', '/admin/dead-letters/replay', body);
      const n = r ? r.replayed : 0;
      say(answer, 'Replayed ' + n + ' request' + (n === 1 ? '' : 's') + ' to ' + backend + '.', 'ok');
      await loadDead();
    } catch (err) {
      if (err.status !== 401) say(answer, 'Replay failed: ' + err.detail + (err.status ? ' (' + err.status + ')' : ''), 'error');
      if (button) button.disabled = false;
    }
  }

  $('#dl-backend').addEventListener('change', () => {
    syncReplayAll();
    loadDead().catch(shown($('#dl-answer')));
  });
  $('#dl-refresh').addEventListener('click', () => {
    say($('#dl-answer'), '', '');
    loadDead().catch(shown($('#dl-answer')));
  });
  $('#dl-replay-all').addEventListener('click', () => {
    const b = $('#dl-backend').value;
    if (!b || !window.confirm('Replay every dead letter of ' + b + '? They go through its rate limit again.')) return;
    replay(b, null, $('#dl-replay-all'));
  });

  // shown returns a catch handler that writes the error into node.
  const shown = (node) => (err) => {
    if (err.status !== 401) say(node, err.detail + (err.status ? ' (' + err.status + ')' : ''), 'error');
  };

  // ---- Request lookup ----------------------------------------------------

  function lookup(id) {
    $('#lookup-id').value = id;
    $('#lookup').scrollIntoView({ behavior: 'smooth', block: 'start' });
    runLookup();
  }

  $('#lookup-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    runLookup();
  });

  async function runLookup() {
    const id = $('#lookup-id').value.trim();
    const answer = $('#lookup-answer');
    const result = $('#lookup-result');
    if (!id) return;
    say(answer, 'Looking up…', '');
    result.hidden = true;
    let r;
    try {
      r = await api('GET', '/admin/requests/' + enc(id));
    } catch (err) {
      if (err.status === 401) return;
      if (err.status === 404 && /^no admin endpoint/.test(err.detail)) {
        say(answer, 'This sluice cannot look requests up: it has no GET /admin/requests/<id> yet.', 'error');
      } else if (err.status === 404) {
        say(answer, 'No request ' + id + ': unknown, or its outcome has expired.', 'error');
      } else {
        say(answer, err.detail + (err.status ? ' (' + err.status + ')' : ''), 'error');
      }
      return;
    }
    say(answer, '', '');
    const sum = $('#lookup-summary');
    sum.textContent = '';
    const item = (k, v, cls) => sum.append(el('div', {}, el('dt', { text: k }), el('dd', { class: cls, text: v })));
    item('Status', r.status + (r.dead_lettered ? ' (dead-lettered)' : ''), 'status-' + r.status);
    item('Route', r.route || '—');
    item('Backend', r.backend || '—');
    item('Attempts', num(r.attempts, 0));
    item('Accepted', when(r.accepted_at));
    item('Completed', r.completed_at ? when(r.completed_at) : '—');
    if (r.response) item('Backend answered', String(r.response.status) + (r.response.truncated ? ' (body truncated)' : ''));
    if (r.last_error) item('Last error', r.last_error);
    const rows = $('#lookup-attempts');
    rows.textContent = '';
    const log = Array.isArray(r.attempt_log) ? r.attempt_log : null;
    for (const a of log || []) {
      rows.append(
        el('tr', {},
          el('td', { class: 'num', text: num(a.attempt, 0) }),
          el('td', { text: when(a.at) }),
          el('td', { class: 'num', text: a.status ? String(a.status) : '—' }),
          el('td', { class: 'err', text: a.error || '' }),
          el('td', { class: 'num', text: ok(a.duration_ms) ? num(a.duration_ms, 0) + ' ms' : '—' }),
        ),
      );
    }
    const note = $('#lookup-no-log');
    note.hidden = !!(log && log.length);
    note.textContent = log ? 'No attempts yet.' : 'This sluice keeps no attempt log for its requests.';
    $('table', result).hidden = !(log && log.length);
    result.hidden = false;
  }

  const MAX_CLIENT_ROWS = 200;

  // ---- Clients -----------------------------------------------------------

  async function loadClients() {
    state.lastClients = Date.now();
    const data = await api('GET', '/admin/clients');
    const rows = $('#client-rows');
    rows.textContent = '';
    // One row per client and route; the busiest first, at most
    // MAX_CLIENT_ROWS of them, so thousands of clients cannot swamp the page.
    const all = [];
    for (const c of (data && data.clients) || []) {
      for (const r of c.routes || []) all.push([c, r]);
    }
    const total = (r) => r.accepted + Object.values(r.rejected || {}).reduce((s, v) => s + v, 0);
    all.sort(([ca, ra], [cb, rb]) => total(rb) - total(ra) || ca.client.localeCompare(cb.client) || ra.route.localeCompare(rb.route));
    let n = 0;
    for (const [c, r] of all.slice(0, MAX_CLIENT_ROWS)) {
      {
        const rejected = el('td', {});
        const codes = Object.entries(r.rejected || {}).sort(([a], [b]) => a.localeCompare(b));
        for (const [code, count] of codes) rejected.append(el('span', { class: 'chip', title: count + ' answered ' + code, text: code + ' × ' + num(count, 0) }));
        if (!codes.length) rejected.append(el('span', { class: 'muted', text: '—' }));
        rows.append(
          el('tr', {},
            c.client ? el('td', { text: c.client }) : el('td', { class: 'anon', text: 'anonymous' }),
            el('td', { text: r.route }),
            el('td', { class: 'num', text: num(r.accepted, 0) }),
            el('td', { class: 'num', text: bytes(r.bytes) }),
            rejected,
          ),
        );
        n++;
      }
    }
    $('#clients-empty').hidden = n > 0;
    const more = $('#clients-more');
    more.hidden = all.length <= MAX_CLIENT_ROWS;
    more.textContent = (all.length - MAX_CLIENT_ROWS) + ' quieter client and route pairs not shown (GET /admin/clients has them all).';
  }

  // ---- Readiness ---------------------------------------------------------

  async function loadReady() {
    const node = $('#ready');
    const headers = state.token ? { Authorization: 'Bearer ' + state.token } : {};
    try {
      // /readyz answers 503 with the same body while a part is down.
      const resp = await fetch('/readyz', { headers, cache: 'no-store' });
      if (resp.status === 401) return;
      const parts = await resp.json();
      const down = Object.entries(parts).filter(([, v]) => v !== 'ok').map(([k]) => k);
      node.hidden = false;
      node.classList.toggle('bad', down.length > 0);
      node.textContent = down.length ? down.join(', ') + ' unavailable' : 'broker and results ready';
    } catch (e) {
      node.hidden = true;
    }
  }

  // ---- The loop ----------------------------------------------------------

  async function refresh() {
    const full = state.fullReload || !state.lastAt;
    const [bk, hist] = await Promise.all([
      api('GET', '/admin/backends'),
      api('GET', '/admin/history' + (full ? '' : '?since=' + enc(state.lastAt))),
    ]);
    const list = (bk && bk.backends) || [];
    const added = ingest(hist, full);
    // A restarted sluice starts its history anew: reload it whole when
    // nothing new came for a few intervals, or a backend is new.
    state.emptyPolls = added ? 0 : state.emptyPolls + 1;
    state.fullReload = state.emptyPolls >= 3 || list.some((b) => !state.series.has(b.name));
    if (state.fullReload) state.lastAt = '';
    renderBackends(list);
    drawCharts();
  }

  async function tick() {
    if (!state.running) return;
    try {
      await refresh();
      setLive('ok', 'live · ' + timeFmt.format(Date.now()));
      const now = Date.now();
      if (now - state.lastClients >= CLIENTS_EVERY_MS) loadClients().catch(() => {});
      if (now - state.lastDead >= DEAD_EVERY_MS) {
        loadDead().catch(shown($('#dl-answer')));
        loadReady();
      }
    } catch (err) {
      if (err.status === 401 || !state.running) return;
      setLive('error', err.status ? 'error: ' + err.detail : 'connection lost · retrying');
    }
    if (state.running) state.timer = setTimeout(tick, TICK_MS);
  }

  function stop() {
    state.running = false;
    clearTimeout(state.timer);
  }

  function start() {
    stop();
    $('#login').hidden = true;
    $('#app').hidden = false;
    $('#signout').hidden = state.authMode !== 'token' && !state.token;
    setLive('idle', 'connecting…');
    state.lastAt = '';
    state.fullReload = true;
    state.lastDead = 0;
    state.lastClients = 0;
    state.running = true;
    tick();
  }

  if (state.authMode === 'token' && !state.token) showLogin('');
  else start();
})();
