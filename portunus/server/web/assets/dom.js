// Building DOM nodes. Everything on screen is made with h() or svg(),
// never from HTML strings, so text that came from the server is always
// text (no markup injection) and no inline style is needed (the CSP
// forbids it).

const SVG_NS = 'http://www.w3.org/2000/svg';

// Properties set as DOM properties rather than attributes.
const PROPERTIES = new Set(['value', 'checked', 'selected', 'indeterminate']);

function isProps(value) {
  return value !== null && typeof value === 'object' && !(value instanceof Node) && !Array.isArray(value);
}

function appendChildren(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false || child === true) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

function applyProps(el, props, late) {
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') {
      const names = Array.isArray(value) ? value.filter(Boolean).join(' ') : value;
      if (names) el.setAttribute('class', names);
    } else if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (key === 'ref' && typeof value === 'function') {
      late.push(() => value(el));
    } else if (PROPERTIES.has(key)) {
      late.push(() => { el[key] = value; });
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
}

function build(el, props, children) {
  if (!isProps(props)) {
    children.unshift(props);
    props = {};
  }
  const late = [];
  applyProps(el, props, late);
  appendChildren(el, children);
  // A <select>'s value can only be set once its options exist.
  for (const fn of late) fn();
  return el;
}

/** An HTML element: h('button', {class: 'btn', onClick}, 'Save'). */
export function h(tag, props, ...children) {
  return build(document.createElement(tag), props, children);
}

/** An SVG element, same calling convention as h(). */
export function svg(tag, props, ...children) {
  return build(document.createElementNS(SVG_NS, tag), props, children);
}

/** Replace everything inside el with the given children. */
export function mount(el, ...children) {
  el.replaceChildren();
  appendChildren(el, children);
  return el;
}

/** A unique id for label/aria wiring. */
let counter = 0;
export function uid(prefix = 'id') {
  counter += 1;
  return `${prefix}-${counter}`;
}
