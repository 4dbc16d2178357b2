// The console's icons: simple stroked paths on a 24x24 grid, drawn for
// this project. icon('rules') returns an <svg> hidden from screen readers
// (the button or link around it carries the text).

import { svg } from './dom.js';

const PATHS = {
  dashboard: ['M4 4h7v7H4z', 'M13 4h7v4h-7z', 'M13 11h7v9h-7z', 'M4 14h7v6H4z'],
  clients: ['M4 4h16v6H4z', 'M4 14h16v6H4z', 'M8 7h.01', 'M8 17h.01', 'M12 7h4', 'M12 17h4'],
  rules: ['M4 7h12', 'M13 4l3 3-3 3', 'M20 17H8', 'M11 14l-3 3 3 3'],
  users: [
    'M15 20v-1.5a3.5 3.5 0 0 0-3.5-3.5h-5A3.5 3.5 0 0 0 3 18.5V20',
    'M12.5 8a3.5 3.5 0 1 1-7 0 3.5 3.5 0 0 1 7 0z',
    'M21 20v-1.5a3.5 3.5 0 0 0-2.6-3.4',
    'M15.5 4.6a3.5 3.5 0 0 1 0 6.8',
  ],
  audit: ['M9 3h6v3H9z', 'M9 4.5H6v16h12v-16h-3', 'M9 11h6', 'M9 15h4'],
  metrics: ['M3 12h4l3-8 4 16 3-8h4'],
  settings: ['M4 6h9', 'M17 6h3', 'M15 4v4', 'M4 12h3', 'M11 12h9', 'M9 10v4', 'M4 18h11', 'M19 18h1', 'M17 16v4'],
  logout: ['M15 4h3a2 2 0 0 1 2 2v12a2 2 0 0 1-2 2h-3', 'M10 8l-4 4 4 4', 'M6 12h10'],
  menu: ['M4 6h16', 'M4 12h16', 'M4 18h16'],
  close: ['M6 6l12 12', 'M18 6L6 18'],
  plus: ['M12 5v14', 'M5 12h14'],
  copy: ['M9 9h11v11H9z', 'M5 15H4V4h11v1'],
  check: ['M5 12.5l4.5 4.5L19 7.5'],
  trash: ['M4 7h16', 'M10 11v6', 'M14 11v6', 'M6 7l1 13h10l1-13', 'M9 7V4h6v3'],
  refresh: ['M20 11a8 8 0 0 0-14.6-4.4L4 8', 'M4 4v4h4', 'M4 13a8 8 0 0 0 14.6 4.4L20 16', 'M20 20v-4h-4'],
  sun: [
    'M16 12a4 4 0 1 1-8 0 4 4 0 0 1 8 0z', 'M12 2v2', 'M12 20v2', 'M4.9 4.9l1.4 1.4',
    'M17.7 17.7l1.4 1.4', 'M2 12h2', 'M20 12h2', 'M4.9 19.1l1.4-1.4', 'M17.7 6.3l1.4-1.4',
  ],
  moon: ['M20 14.5A8 8 0 0 1 9.5 4a8 8 0 1 0 10.5 10.5z'],
  monitor: ['M3 5h18v11H3z', 'M8 20h8', 'M12 16v4'],
  download: ['M12 4v11', 'M7 10l5 5 5-5', 'M5 20h14'],
  alert: ['M12 3.5l9 16H3z', 'M12 10v4', 'M12 17h.01'],
  lock: ['M6 11h12v9H6z', 'M8.5 11V8a3.5 3.5 0 0 1 7 0v3'],
  key: ['M11.5 8a4 4 0 1 1-8 0 4 4 0 0 1 8 0z', 'M10.5 11l9 9', 'M16.5 17l2-2', 'M14 14.5l2-2'],
  edit: ['M4 20h4L19 9l-4-4L4 16z', 'M13 7l4 4'],
  ban: ['M20 12a8 8 0 1 1-16 0 8 8 0 0 1 16 0z', 'M6.5 6.5l11 11'],
  back: ['M19 12H5', 'M11 6l-6 6 6 6'],
  shield: ['M12 3l8 3v6c0 5-3.5 8-8 9-4.5-1-8-4-8-9V6z', 'M9 12l2 2 4-4'],
  eye: ['M2 12s3.5-7 10-7 10 7 10 7-3.5 7-10 7S2 12 2 12z', 'M15 12a3 3 0 1 1-6 0 3 3 0 0 1 6 0z'],
  eyeOff: ['M2 12s3.5-7 10-7 10 7 10 7-3.5 7-10 7S2 12 2 12z', 'M15 12a3 3 0 1 1-6 0 3 3 0 0 1 6 0z', 'M4 4l16 16'],
  plug: ['M9 7V3', 'M15 7V3', 'M6 7h12v4a6 6 0 0 1-12 0z', 'M12 17v4'],
  info: ['M20 12a8 8 0 1 1-16 0 8 8 0 0 1 16 0z', 'M12 11v5', 'M12 8h.01'],
  pause: ['M8 5v14', 'M16 5v14'],
  play: ['M7 4l13 8-13 8z'],
  chevron: ['M9 6l6 6-6 6'],
  search: ['M17 10.5a6.5 6.5 0 1 1-13 0 6.5 6.5 0 0 1 13 0z', 'M15.5 15.5L20 20'],
  activity: ['M4 19V9', 'M10 19V5', 'M16 19v-7', 'M22 19H2'],
  target: ['M20 12a8 8 0 1 1-16 0 8 8 0 0 1 16 0z', 'M15 12a3 3 0 1 1-6 0 3 3 0 0 1 6 0z'],
  link: ['M10 14a4 4 0 0 0 5.7 0l3-3a4 4 0 0 0-5.7-5.7l-1 1', 'M14 10a4 4 0 0 0-5.7 0l-3 3a4 4 0 0 0 5.7 5.7l1-1'],
};

export function icon(name, extraClass = '') {
  const paths = PATHS[name] || PATHS.info;
  return svg('svg', {
    class: ['icon', extraClass],
    viewBox: '0 0 24 24',
    width: 20,
    height: 20,
    fill: 'none',
    stroke: 'currentColor',
    'stroke-width': 1.8,
    'stroke-linecap': 'round',
    'stroke-linejoin': 'round',
    'aria-hidden': 'true',
    focusable: 'false',
  }, paths.map((d) => svg('path', { d })));
}

/** The Portunus mark: a gate with a way through it. */
export function logo() {
  return svg('svg', { class: 'logo', viewBox: '0 0 32 32', width: 28, height: 28, 'aria-hidden': 'true', focusable: 'false' },
    svg('rect', { width: 32, height: 32, rx: 8, class: 'logo-bg' }),
    svg('path', { d: 'M9 24V13a7 7 0 0 1 14 0v11', class: 'logo-line' }),
    svg('path', { d: 'M12 19h8m-3-3 3 3-3 3', class: 'logo-line' }));
}
