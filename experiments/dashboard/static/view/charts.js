// Charts of the uncertainty view, drawn with the vendored d3 (window.d3, 6.7.0).
// bandChart: quantile bands of each group over epochs; histogramChart: one epoch's bins, groups overlaid.
'use strict';

const UQ = window.UQ = window.UQ || {};

// right / wrong predictions in two colours that stay apart for colour-blind readers (blue, vermillion)
UQ.COLOURS = {right: '#1f5fa8', wrong: '#d1461f', all: '#3b7d3b'};
UQ.GROUP_LABELS = {right: 'right predictions', wrong: 'wrong predictions', all: 'all values'};
UQ.NAMES = {
  u: 'u — uncertainty mass', p_max: 'max p̂ — confidence', strength: 'S — Dirichlet strength',
  entropy: 'H(p̂) — entropy of p̂', mutual_information: 'mutual information', disagreement: 'member disagreement',
  voter_variance: 'voter variance', neg_log_density: '−log p(x)',
};
UQ.label = name => UQ.NAMES[name] || (name.startsWith('sigma.') ? `σ — the weights' posterior std. of ${name.slice(6)}` : name);
// the symbol on axes: the name up to its ' — '
UQ.symbol = name => UQ.label(name).split(' — ')[0];

const fmt = d3.format('.3~g');
UQ.fmt = fmt;
// tick labels of log axes: 0.001 ... 1000 as numbers, beyond as powers of ten (10⁴, 10⁻⁴)
const plain = d3.format(',~g');
const SUPERSCRIPT = {'-': '⁻', 0: '⁰', 1: '¹', 2: '²', 3: '³', 4: '⁴', 5: '⁵', 6: '⁶', 7: '⁷', 8: '⁸', 9: '⁹'};
function logTick(v) {
  if (v === 0 || (Math.abs(v) >= 1e-3 && Math.abs(v) < 1e4)) return plain(v);
  const k = Math.log10(Math.abs(v));
  if (Math.abs(k - Math.round(k)) > 1e-9) return d3.format('.1e')(v);
  return (v < 0 ? '−' : '') + '10' + String(Math.round(k)).split('').map(c => SUPERSCRIPT[c]).join('');
}
const MARGIN = {top: 12, right: 16, bottom: 44, left: 72};

function frame(svg, width, height) {
  svg.attr('viewBox', `0 0 ${width} ${height}`).attr('width', width).attr('height', height);
  svg.selectAll('*').remove();
  return svg.append('g').attr('transform', `translate(${MARGIN.left},${MARGIN.top})`);
}

// A value axis for values lo..hi (lowest positive: minPos): log where they span decades, symlog when zeros are
// among them, else linear over their range (within [0, 1] for bounded ones).
UQ.valueScale = function (lo, hi, minPos, unit) {
  if (lo > 0 && hi / lo >= 30) return {scale: d3.scaleLog().domain([lo / 1.3, hi * 1.3]), kind: 'log'};
  if (lo <= 0 && minPos > 0 && hi / minPos >= 30) {
    return {scale: d3.scaleSymlog().constant(minPos).domain([0, hi * 1.3]), kind: 'symlog'};
  }
  const pad = (hi - lo) * 0.08 || Math.abs(hi) * 0.1 || 0.1;
  let domain = [lo - pad, hi + pad];
  if (unit) domain = [Math.max(0, domain[0]), Math.min(1, domain[1])];
  return {scale: d3.scaleLinear().domain(domain).nice(), kind: 'linear'};
};

function valueAxis(g, scale, kind, height, label, vertical) {
  const axis = vertical ? d3.axisLeft(scale) : d3.axisBottom(scale);
  if (kind === 'log') {
    const [a, b] = scale.domain();
    const decades = d3.range(Math.ceil(Math.log10(a)), Math.floor(Math.log10(b)) + 1).map(k => Math.pow(10, k));
    // every decade when there are a few, else one in two or three; within one decade d3's own ticks
    const step = Math.ceil(decades.length / 7);
    if (decades.length >= 2) axis.tickValues(decades.filter((_, i) => i % step === 0)).tickFormat(logTick);
    else axis.ticks(4).tickFormat(logTick);
  } else if (kind === 'symlog') axis.tickValues(symlogTicks(scale)).tickFormat(logTick);
  else {  // as many digits as the ticks' spacing needs; fewer ticks across, where labels are side by side
    const n = vertical ? 6 : 4;
    axis.ticks(n).tickFormat(scale.tickFormat(n, ',~r'));
  }
  const a = g.append('g').attr('class', vertical ? 'axis y-axis' : 'axis x-axis');
  if (!vertical) a.attr('transform', `translate(0,${height})`);
  a.call(axis);
  return a;
}

function symlogTicks(scale) {
  const hi = scale.domain()[1], c = scale.constant(), ticks = [0];
  for (let t = Math.pow(10, Math.ceil(Math.log10(c))); t <= hi; t *= 10) ticks.push(t);
  return ticks;
}

// Band chart: for each series {group, colour, dashed, points: [{epoch, q: [q10, q25, q50, q75, q90]}]} the 10-90 %
// and 25-75 % bands and the median over epochs; `selected` epoch marked; onPick(epoch) on a click.
UQ.bandChart = function (svg, series, opts) {
  const width = opts.width, height = opts.height;
  const w = width - MARGIN.left - MARGIN.right, h = height - MARGIN.top - MARGIN.bottom;
  const g = frame(svg, width, height);
  const epochs = [...new Set(series.flatMap(s => s.points.map(p => p.epoch)))].sort((a, b) => a - b);
  const maxEpoch = Math.max(opts.epochs || 1, epochs[epochs.length - 1] || 1);
  const x = d3.scaleLinear().domain([Math.min(1, epochs[0] || 1) - 0.4, maxEpoch + 0.4]).range([0, w]);
  const values = series.flatMap(s => s.points.flatMap(p => p.q));
  const lo = d3.min(values), hi = d3.max(values), minPos = d3.min(values.filter(v => v > 0));
  const vs = UQ.valueScale(lo, hi, minPos, opts.unit);
  const y = vs.scale.range([h, 0]);
  const clampY = v => y(vs.kind === 'log' ? Math.max(v, y.domain()[0]) : v);

  const tickValues = maxEpoch <= 15 ? d3.range(1, maxEpoch + 1) : x.ticks(10).filter(Number.isInteger);
  g.append('g').attr('class', 'axis x-axis epoch-axis').attr('transform', `translate(0,${h})`)
    .call(d3.axisBottom(x).tickValues(tickValues.filter(t => t >= 1)).tickFormat(d3.format('d')));
  valueAxis(g, y, vs.kind, h, opts.label, true);
  g.append('text').attr('class', 'axis-label').attr('x', w / 2).attr('y', h + 36).attr('text-anchor', 'middle')
    .text('epoch');
  g.append('text').attr('class', 'axis-label').attr('transform', 'rotate(-90)').attr('x', -h / 2).attr('y', -58)
    .attr('text-anchor', 'middle').text(opts.label + (vs.kind === 'linear' ? '' : ` (${vs.kind} scale)`));

  if (opts.selected != null) {
    g.append('line').attr('class', 'selected-epoch').attr('x1', x(opts.selected)).attr('x2', x(opts.selected))
      .attr('y1', 0).attr('y2', h);
  }
  for (const s of series) {
    // a single epoch is drawn as a short band around it
    const pts = s.points.length === 1 ? [{...s.points[0], epoch: s.points[0].epoch - 0.25},
      {...s.points[0], epoch: s.points[0].epoch + 0.25}] : s.points;
    const layer = g.append('g').attr('class', `band-series group-${s.group}` + (s.dashed ? ' compared' : ''));
    const area = (i, j) => d3.area().x(p => x(p.epoch)).y0(p => clampY(p.q[i])).y1(p => clampY(p.q[j]));
    if (!s.dashed) {
      layer.append('path').attr('class', 'band band-10-90').attr('d', area(0, 4)(pts))
        .attr('fill', s.colour).attr('fill-opacity', 0.14);
      layer.append('path').attr('class', 'band band-25-75').attr('d', area(1, 3)(pts))
        .attr('fill', s.colour).attr('fill-opacity', 0.28);
    } else {
      for (const i of [0, 4]) {
        layer.append('path').attr('class', 'band-edge').attr('fill', 'none').attr('stroke', s.colour)
          .attr('stroke-width', 1).attr('stroke-dasharray', '2 3')
          .attr('d', d3.line().x(p => x(p.epoch)).y(p => clampY(p.q[i]))(pts));
      }
    }
    layer.append('path').attr('class', 'median').attr('fill', 'none').attr('stroke', s.colour)
      .attr('stroke-width', 2.2).attr('stroke-dasharray', s.dashed ? '6 4' : null)
      .attr('d', d3.line().x(p => x(p.epoch)).y(p => clampY(p.q[2]))(pts));
    layer.selectAll('circle').data(s.points).join('circle').attr('r', 3).attr('fill', s.colour)
      .attr('cx', p => x(p.epoch)).attr('cy', p => clampY(p.q[2]))
      .append('title').text(p => `${s.title}, epoch ${p.epoch}: median ${fmt(p.q[2])}, ` +
        `25–75 % ${fmt(p.q[1])}–${fmt(p.q[3])}, 10–90 % ${fmt(p.q[0])}–${fmt(p.q[4])}`);
  }
  if (opts.onPick) {
    g.append('rect').attr('class', 'pick').attr('width', w).attr('height', h).attr('fill', 'transparent')
      .style('cursor', 'pointer').on('click', event => {
        const e = Math.round(x.invert(d3.pointer(event)[0]));
        if (epochs.includes(e)) opts.onPick(e);
      });
  }
};

// Histogram of one epoch: {scale, edges, groups: {right: {n, counts}, ...}}; each group a filled step outline.
// opts.share: each group's bins as a share of its images (their shapes compare); else counts on a square-root
// axis, so that a small group (the wrong predictions) stays visible beside a large one.
UQ.histogramChart = function (svg, hist, opts) {
  const width = opts.width, height = opts.height;
  const w = width - MARGIN.left - MARGIN.right, h = height - MARGIN.top - MARGIN.bottom;
  const g = frame(svg, width, height);
  const edges = hist.edges, groups = Object.keys(hist.groups);
  const things = groups.includes('all') ? 'values' : 'images';  // 'all': values that belong to no image
  const logX = hist.scale === 'log';
  const x = (logX ? d3.scaleLog() : d3.scaleLinear()).domain([edges[0], edges[edges.length - 1]]).range([0, w]);
  const heights = k => hist.groups[k].counts.map(c => opts.share ? 100 * c / Math.max(1, hist.groups[k].n) : c);
  const top = d3.max(groups.flatMap(heights)) || 1;
  const y = (opts.share ? d3.scaleLinear() : d3.scaleSqrt()).domain([0, top]).range([h, 0]).nice();
  valueAxis(g, x, logX ? 'log' : 'linear', h, opts.label, false);
  const yAxis = d3.axisLeft(y).tickFormat(d3.format(',~r'));
  if (opts.share) yAxis.ticks(5);
  else yAxis.tickValues(countTicks(y));  // 1, 2, 5, 10, ...: the small counts a square-root axis spreads out
  g.append('g').attr('class', 'axis y-axis').call(yAxis);
  g.append('text').attr('class', 'axis-label').attr('x', w / 2).attr('y', h + 36).attr('text-anchor', 'middle')
    .text(opts.label + (logX ? ' (log scale)' : ''));
  g.append('text').attr('class', 'axis-label').attr('transform', 'rotate(-90)').attr('x', -h / 2).attr('y', -58)
    .attr('text-anchor', 'middle').text(opts.share ? `% of the group's ${things}` : `${things} (√ scale)`);
  for (const k of groups) {
    const values = heights(k);
    const pts = values.map((c, i) => ({x: edges[i], c})).concat([{x: edges[edges.length - 1], c: values[values.length - 1]}]);
    const area = d3.area().curve(d3.curveStepAfter).x(p => x(p.x)).y0(h).y1(p => y(p.c));
    g.append('path').attr('class', `histogram group-${k}`).attr('d', area(pts))
      .attr('fill', UQ.COLOURS[k]).attr('fill-opacity', 0.3).attr('stroke', UQ.COLOURS[k]).attr('stroke-width', 1.5);
  }
  // one hover target per bin with its counts
  const bins = edges.slice(0, -1).map((e, i) => ({lo: e, hi: edges[i + 1], i}));
  g.append('g').attr('class', 'bins').selectAll('rect').data(bins).join('rect')
    .attr('x', b => x(b.lo)).attr('width', b => Math.max(0, x(b.hi) - x(b.lo))).attr('y', 0).attr('height', h)
    .attr('fill', 'transparent')
    .append('title').text(b => `${fmt(b.lo)}–${fmt(b.hi)}: ` +
      groups.map(k => `${k} ${hist.groups[k].counts[b.i]}`).join(', '));
};

function countTicks(y) {
  const top = y.domain()[1], ticks = [0];
  for (let decade = 1; decade <= top; decade *= 10) {
    for (const m of [1, 2, 5]) {
      const t = m * decade;
      if (t <= top && y(ticks[ticks.length - 1]) - y(t) >= 16) ticks.push(t);
    }
  }
  return ticks;
}

// Legend entries [{colour, text, dashed}] into a container element.
UQ.legend = function (el, entries) {
  const div = d3.select(el).attr('class', 'legend');
  div.selectAll('*').remove();
  for (const e of entries) {
    const item = div.append('span').attr('class', 'legend-item');
    const sw = item.append('svg').attr('width', 26).attr('height', 12);
    sw.append('rect').attr('y', 1).attr('width', 26).attr('height', 10).attr('fill', e.colour).attr('fill-opacity', 0.25);
    sw.append('line').attr('x1', 0).attr('x2', 26).attr('y1', 6).attr('y2', 6).attr('stroke', e.colour)
      .attr('stroke-width', 2.2).attr('stroke-dasharray', e.dashed ? '6 4' : null);
    item.append('span').text(e.text);
  }
};
