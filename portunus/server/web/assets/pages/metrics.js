// The server's Prometheus metrics as text (superadmins), the same as the
// metrics listener serves; refreshed every 10 s, filterable, copyable.

import { get } from '../api.js';
import { h, mount } from '../dom.js';
import { icon } from '../icons.js';
import { button, copyButton, emptyState, errorState, input, loadingState, pageHeader, staleBanner } from '../ui.js';

const POLL_MS = 10000;

export async function metricsPage(root, ctx) {
  let text = null;
  let auto = true;
  const banner = h('div');
  const body = h('div', null, loadingState('Loading metrics…'));
  const status = h('span', { class: 'muted small', role: 'status' });
  const filter = input('filter', { type: 'search', placeholder: 'Filter lines, e.g. portunus_rule_bytes', 'aria-label': 'Filter metrics' });
  const hideHelp = h('input', { type: 'checkbox', checked: true });
  const autoButton = button('Pause', { iconName: 'pause' });
  filter.addEventListener('input', draw);
  hideHelp.addEventListener('change', draw);
  autoButton.addEventListener('click', () => {
    auto = !auto;
    mount(autoButton, icon(auto ? 'pause' : 'play'), auto ? 'Pause' : 'Resume');
    if (auto) load();
  });

  async function load() {
    try {
      text = await get('/v1/metrics', { signal: ctx.signal });
      mount(banner);
    } catch (e) {
      if (e.name === 'AbortError' || !ctx.active) return;
      if (text === null) mount(body, errorState(e, load));
      else mount(banner, staleBanner(e));
      return;
    }
    if (ctx.active) draw();
  }

  function shownLines() {
    const q = filter.value.trim().toLowerCase();
    return String(text).split('\n').filter((line) => {
      if (!line) return false;
      if (hideHelp.checked && line.startsWith('#')) return false;
      return !q || line.toLowerCase().includes(q);
    });
  }

  function draw() {
    if (text === null) return;
    const lines = shownLines();
    const series = String(text).split('\n').filter((l) => l && !l.startsWith('#')).length;
    status.textContent = `${series} series · updated ${new Date().toLocaleTimeString()}${auto ? '' : ' · paused'}`;
    mount(body, lines.length
      ? h('pre', { class: 'code metrics-text', tabindex: '0', 'aria-label': 'Metrics text', 'data-testid': 'metrics-text' }, lines.join('\n'))
      : emptyState({ title: 'No line matches', text: 'Change the filter.', iconName: 'search' }));
  }

  mount(root,
    pageHeader({
      title: 'Metrics',
      subtitle: 'Prometheus text from GET /v1/metrics. Scrape the metrics listener for monitoring; this page is for a quick look.',
      actions: [copyButton(() => String(text ?? ''), 'Copy all')],
    }),
    h('div', { class: 'toolbar' },
      h('div', { class: 'search grow' }, icon('search'), filter),
      h('label', { class: 'check' }, hideHelp, h('span', null, 'Hide HELP/TYPE')),
      autoButton, h('span', { class: 'toolbar-spacer' }), status),
    banner, body);
  ctx.every(POLL_MS, async () => { if (auto) await load(); });
}
