// The run table (/view/runs): every run with its uuid prefix, preset, key settings, status, epoch and latest
// validation accuracy, from /api/dashboard/runs; refreshed every few seconds.
'use strict';

const ticked = new Set();

function settingsText(row) {
  const label = row.label || '';
  const open = label.indexOf('(');
  return open >= 0 && label.endsWith(')') ? label.slice(open + 1, -1) : '';
}

function render(rows) {
  d3.select('#message').text(rows.length ? '' : 'No runs yet: start one with dashboard=' + location.origin);
  const tr = d3.select('#rows').selectAll('tr').data(rows, r => r.run_uuid).join('tr')
    .attr('data-run', r => r.run_uuid);
  tr.html(r => {
    const uuid = encodeURIComponent(r.run_uuid);
    const epoch = r.epoch != null ? `${r.epoch} / ${r.epochs}` : (r.epochs ? `– / ${r.epochs}` : '–');
    const acc = r.accuracy_valid != null ? (100 * r.accuracy_valid).toFixed(2) + ' %' : '–';
    const started = r.start_time ? new Date(1000 * r.start_time).toLocaleString() : '';
    const status = r.status || 'unknown';
    return `<td><input type="checkbox" class="pick" aria-label="compare"></td>` +
      `<td><a class="uuid" href="/view/run/${uuid}">${esc(r.run_uuid.slice(0, 8))}</a></td>` +
      `<td>${esc(r.name || '')}</td><td>${esc(r.preset || (r.label ? "defaults" : "–"))}</td><td>${esc(settingsText(r))}</td>` +
      `<td class="status status-${status.replace(/ /g, '-')}">${esc(status)}</td>` +
      `<td class="epoch">${epoch}</td><td class="accuracy">${acc}</td><td>${esc(started)}</td>` +
      `<td><a href="/view/run/${uuid}">uncertainty</a> · <a href="/run/${uuid}">labml page</a> · ` +
      `<a href="/run/${uuid}/configs">configurations</a></td>`;
  });
  tr.select('input.pick').property('checked', r => ticked.has(r.run_uuid)).on('change', function (event, r) {
    if (this.checked) ticked.add(r.run_uuid); else ticked.delete(r.run_uuid);
    while (ticked.size > 2) ticked.delete(ticked.values().next().value);
    render(rows);
  });
  d3.select('#compare').property('disabled', ticked.size !== 2);
}

function esc(s) {
  return String(s).replace(/[&<>"']/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'})[c]);
}

d3.select('#compare').on('click', () => {
  const [a, b] = [...ticked];
  location.href = `/view/run/${encodeURIComponent(a)}?compare=${encodeURIComponent(b)}`;
});

async function poll() {
  try {
    const r = await fetch('/api/dashboard/runs', {credentials: 'same-origin'});
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    render((await r.json()).runs);
  } catch (e) {
    d3.select('#message').text(`Could not load the runs: ${e.message}`);
  }
  setTimeout(poll, 5000);
}

poll();
