// The uncertainty view of one run (/view/run/UUID[?compare=UUID2]): per distribution, the quantile bands over
// epochs and the histogram of the selected epoch; polls /api/dashboard/histograms while the run trains.
'use strict';

const UUID = decodeURIComponent(location.pathname.split('/').filter(Boolean).pop());
const OTHER = new URLSearchParams(location.search).get('compare');
// ?embed=1: in labml-app's run page (links.js): the first distribution only, its two charts side by side
const EMBED = new URLSearchParams(location.search).has('embed');
if (EMBED) document.body.classList.add('embed');
const POLL_MS = 2000;  // while a run trains; every 10 s otherwise (a finished run's last lines may come later)
const state = {runs: {}, selected: null, follow: true};

async function getJSON(url) {
  const r = await fetch(url, {credentials: 'same-origin', headers: {Accept: 'application/json'}});
  if (!r.ok) {
    let reason = `HTTP ${r.status}`;
    try { reason += ': ' + (await r.json()).error; } catch (e) { /* no JSON body */ }
    throw new Error(reason);
  }
  return r.json();
}

// Fetches the epochs of `uuid` after those already held; true when something changed.
async function refresh(uuid) {
  const held = state.runs[uuid] || (state.runs[uuid] = {epochs: [], run: {}, status: ''});
  const after = held.epochs.length ? held.epochs[held.epochs.length - 1].epoch : 0;
  const data = await getJSON(`/api/dashboard/histograms/${encodeURIComponent(uuid)}?after=${after}`);
  const changed = data.epochs.length > 0 || data.status !== held.status || !held.loaded;
  for (const e of data.epochs) {
    const i = held.epochs.findIndex(x => x.epoch === e.epoch);
    if (i >= 0) held.epochs[i] = e; else held.epochs.push(e);
  }
  held.epochs.sort((a, b) => a.epoch - b.epoch);
  Object.assign(held, {run: data.run || {}, status: data.status || '', name: data.name || '', loaded: true});
  return changed;
}

function distributionNames(epochs) {
  const names = [];
  for (const e of epochs.slice().reverse()) {
    for (const n of Object.keys(e.distributions)) if (!names.includes(n)) names.push(n);
  }
  return names;
}

function bandSeries(held, name, dashed, title) {
  const groups = {};
  for (const e of held.epochs) {
    const d = e.distributions[name];
    if (!d) continue;
    for (const [g, v] of Object.entries(d.groups)) {
      if (v.quantiles) (groups[g] = groups[g] || []).push({epoch: e.epoch, q: v.quantiles});
    }
  }
  return Object.entries(groups).map(([g, points]) => ({
    group: g, colour: UQ.COLOURS[g], dashed, points, title: `${title}${UQ.GROUP_LABELS[g]}`}));
}

function summary(held) {
  const run = held.run, last = held.epochs[held.epochs.length - 1];
  const parts = [];
  if (run.preset) parts.push(`preset <b>${esc(run.preset)}</b>`);
  parts.push(`status <b>${esc(held.status || 'unknown')}</b>`);
  if (last) parts.push(`epoch <b>${last.epoch} / ${last.epochs}</b>`);
  const acc = last && last.metrics['accuracy.valid'];
  if (acc != null) parts.push(`validation accuracy <b>${(100 * acc).toFixed(2)} %</b>`);
  if (last && last.n_valid) parts.push(`${last.n_valid.toLocaleString('en')} validation images`);
  return parts.join(' · ');
}

function esc(s) {
  return String(s).replace(/[&<>"']/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'})[c]);
}

function render() {
  const held = state.runs[UUID], other = OTHER ? state.runs[OTHER] : null;
  const title = held.run.label || `${held.name || 'run'} ${UUID.slice(0, 8)}`;
  document.title = `Uncertainty · ${title}`;
  d3.select('#title').text(title);
  d3.select('#summary').html(summary(held));
  d3.select('#labml-link').attr('href', `/run/${encodeURIComponent(UUID)}`);
  d3.select('#configs-link').attr('href', `/run/${encodeURIComponent(UUID)}/configs`);
  d3.select('#full-link').attr('href', `/view/run/${encodeURIComponent(UUID)}`);
  if (other) {
    d3.select('#compare-note').html(`compared with <b>${esc(other.run.label || OTHER.slice(0, 8))}</b> ` +
      `(dashed: its medians and 10–90 % bands) · ${summary(other)}`);
  }
  const epochs = held.epochs;
  const slider = d3.select('#epoch');
  d3.select('#message').text(epochs.length ? '' : (held.status === 'in progress'
    ? 'Waiting for the first validation of this run…'
    : 'This run has no histograms on the dashboard (trained without it? python -m experiments.dashboard import RUN).'));
  if (!epochs.length) return;
  const numbers = epochs.map(e => e.epoch);
  if (state.follow || !numbers.includes(state.selected)) state.selected = numbers[numbers.length - 1];
  slider.attr('min', numbers[0]).attr('max', numbers[numbers.length - 1]).property('disabled', numbers.length < 2)
    .property('value', state.selected);
  d3.select('#epoch-label').text(`${state.selected} of ${numbers[numbers.length - 1]}`);

  const container = document.getElementById('distributions');
  const full = Math.max(360, container.clientWidth - 34);
  const chartWidth = full >= (EMBED ? 560 : 900) ? Math.floor((full - 16) / 2) : full;
  const height = EMBED ? 270 : 300;
  const names = distributionNames(epochs).slice(0, EMBED ? 1 : undefined);
  const cards = d3.select(container).selectAll('section.dist').data(names, n => n).join(enter => {
    const s = enter.append('section').attr('class', 'dist').attr('data-name', n => n);
    const header = s.append('header');
    header.append('h2').text(n => UQ.label(n));
    header.append('div').attr('class', 'legend');
    const charts = s.append('div').attr('class', 'charts');
    const band = charts.append('figure').attr('class', 'band');
    band.append('figcaption').text('median, 25–75 % and 10–90 % over epochs');
    band.append('svg').attr('class', 'band-chart');
    const hist = charts.append('figure').attr('class', 'hist');
    hist.append('figcaption');
    hist.append('svg').attr('class', 'histogram-chart');
    return s;
  });
  cards.each(function (name) {
    const card = d3.select(this);
    const series = bandSeries(held, name, false, '');
    if (other) series.push(...bandSeries(other, name, true, 'compared run, '));
    const last = epochs[epochs.length - 1];
    const d = last.distributions[name] || {};
    const entries = Object.keys(d.groups || {}).map(g => ({colour: UQ.COLOURS[g], text: UQ.GROUP_LABELS[g]}));
    if (other) entries.push({colour: '#555', text: 'compared run', dashed: true});
    UQ.legend(card.select('.legend').node(), entries);
    UQ.bandChart(card.select('svg.band-chart'), series, {
      width: chartWidth, height, label: UQ.symbol(name), unit: d.scale === 'unit',
      epochs: last.epochs, selected: state.selected, onPick: pick});
    renderHistogram(card, name, chartWidth, height);
  });
  if (EMBED && window.parent !== window) {  // the frame in labml-app's page takes the height of its content
    window.parent.postMessage({uncertaintyHeight: document.documentElement.scrollHeight}, location.origin);
  }
}

function renderHistogram(card, name, width, height) {
  const e = state.runs[UUID].epochs.find(x => x.epoch === state.selected);
  const hist = e && e.distributions[name];
  const caption = card.select('figure.hist figcaption');
  if (!hist) {
    caption.text(`epoch ${state.selected}: not recorded`);
    card.select('svg.histogram-chart').selectAll('*').remove();
    return;
  }
  caption.text(`epoch ${state.selected}: ` + Object.entries(hist.groups)
    .map(([g, v]) => `${UQ.GROUP_LABELS[g]} ${v.n.toLocaleString('en')}`).join(' · '));
  UQ.histogramChart(card.select('svg.histogram-chart'), hist,
    {width, height, label: UQ.symbol(name), share: d3.select('#hist-mode').property('value') === 'share'});
}

function pick(epoch) {
  const numbers = state.runs[UUID].epochs.map(e => e.epoch);
  state.selected = epoch;
  state.follow = epoch === numbers[numbers.length - 1];
  render();
}

d3.select('#epoch').on('input', function () { pick(+this.value); });
d3.select('#hist-mode').on('change', () => render());
window.addEventListener('resize', () => { if (state.runs[UUID]) render(); });

async function poll() {
  let live = false;
  try {
    let changed = await refresh(UUID);
    if (OTHER) changed = (await refresh(OTHER)) || changed;
    if (changed) render();
    live = [UUID, OTHER].some(u => u && state.runs[u].status === 'in progress');
  } catch (e) {
    d3.select('#message').text(`Could not load the histograms: ${e.message}`);
    live = true;
  }
  document.body.dataset.live = live ? 'yes' : 'no';
  setTimeout(poll, live ? POLL_MS : 5 * POLL_MS);
}

poll();
