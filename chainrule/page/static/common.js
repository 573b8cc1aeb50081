"use strict";
// Helpers every view uses: making SVG and HTML elements, and formatting numbers.
const Chainrule = {
  svg(tag, attrs, parent) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
    if (parent) parent.appendChild(el);
    return el;
  },
  html(tag, attrs, parent, text) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    if (parent) parent.appendChild(el);
    return el;
  },
  number(x) {
    if (x === null || x === undefined) return "—";
    if (typeof x === "string") return x;  // "nan", "inf", "-inf"
    if (x === 0) return "0";
    const a = Math.abs(x);
    return (a >= 1e4 || a < 1e-3) ? x.toExponential(3) : x.toPrecision(4);
  },
};
