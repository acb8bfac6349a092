// Added to labml-app's page: on a run's page a card with the run's uncertainty view (its first distribution, u
// for the evidential family, in a frame), and a button to the full view; on the run list a button to the run
// table. The page routes itself, so this follows the address.
'use strict';
(function () {
  const button = document.createElement('a');
  button.id = 'uncertainty-link';
  button.style.cssText = 'position:fixed;right:18px;bottom:18px;z-index:1000;padding:.55rem .9rem;' +
    'border-radius:6px;background:#1f5fa8;color:#fff;font:600 14px sans-serif;text-decoration:none;' +
    'box-shadow:0 2px 8px #0003';

  function card(uuid) {
    const div = document.createElement('div');
    div.id = 'uncertainty-card';
    div.className = 'labml-card';
    div.dataset.run = uuid;
    const h3 = document.createElement('h3');
    h3.className = 'header';
    h3.textContent = 'Uncertainty · right vs wrong predictions';
    const frame = document.createElement('iframe');
    frame.src = `/view/run/${uuid}?embed=1`;
    frame.title = 'uncertainty view';
    frame.style.cssText = 'width:100%;height:400px;border:0;display:block';
    div.append(h3, frame);
    return div;
  }

  function update() {
    const m = location.pathname.match(/^\/run\/([A-Za-z0-9_-]+)(\/.*)?$/);
    button.href = m ? `/view/run/${m[1]}` : '/view/runs';
    button.textContent = m ? 'Uncertainty view ▸' : 'Run table ▸';
    if (!button.isConnected && document.body) document.body.appendChild(button);
    const existing = document.getElementById('uncertainty-card');
    const anchor = document.querySelector('.run.page .button-row.process-row');
    if (!m || m[2] || !anchor) {
      if (existing) existing.remove();
      return;
    }
    if (existing && existing.dataset.run === m[1] && existing.previousElementSibling === anchor) return;
    if (existing) existing.remove();
    anchor.after(card(m[1]));
  }
  window.addEventListener('message', event => {
    const frame = document.querySelector('#uncertainty-card iframe');
    if (event.origin === location.origin && frame && event.source === frame.contentWindow &&
        Number.isFinite(event.data && event.data.uncertaintyHeight)) {
      frame.style.height = `${Math.min(2000, Math.max(200, event.data.uncertaintyHeight))}px`;
    }
  });
  update();
  setInterval(update, 500);
})();
