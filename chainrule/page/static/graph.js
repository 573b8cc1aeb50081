// The graph view: a view's nodes laid out the way the lecture draws the computational graph
// (inputs and params at the left, the objective at the right, the backward graph mirrored in a
// band below), drawn in one SVG, and tied to the source line, the derivative rule, the value
// and the chain rule's steps of whichever node is selected.
const ChainruleGraph = (() => {
  const {svg, html, number} = Chainrule;
  const COLUMN_GAP = 36, ROW_GAP = 10, BAND_GAP = 50, BAND_LABEL_ROOM = 70;
  const AUTO_COLLAPSE = 400;  // more nodes than this start with their groups collapsed
  const LEGIBLE_SCALE = 0.45; // below this zoom a fitted graph's text cannot be read
  const TEXT_SCALE = 0.3;     // below this zoom no text is drawn at all
  const PINNED_PARAMS = 24;   // up to this many params stand at the left, as the lecture draws them
  const CHAR_WIDTH = 0.6;     // a character's width per unit of font size: no text measuring
  const SIZE = {name: 12, type: 10.5, label: 12};
  const PILL_HEIGHT = 24;     // an op's shape, above its output's name and type

  function textWidth(text, size) { return text.length * size * CHAR_WIDTH; }
  function clipped(text, limit) { return text.length > limit ? text.slice(0, limit - 1) + "…" : text; }
  function mean(xs) { return xs.reduce((a, b) => a + b, 0) / xs.length; }

  // ---- The view's index: nodes by id, groups with their ancestors and members -------------

  function indexView(view) {
    const byId = new Map(view.nodes.map(n => [n.id, n]));
    const groups = new Map(view.groups.map(g => [g.id, g]));
    const chains = new Map();  // group id -> its ancestors, outermost first, then itself
    function chain(id, seen = new Set()) {
      if (!chains.has(id)) {
        const parent = groups.get(id).parent;
        const outer = parent && groups.has(parent) && !seen.has(parent)
          ? chain(parent, seen.add(id)) : [];
        chains.set(id, [...outer, id]);
      }
      return chains.get(id);
    }
    const members = new Map(view.groups.map(g => [g.id, []]));
    for (const n of view.nodes) {
      if (n.group && groups.has(n.group)) for (const g of chain(n.group)) members.get(g).push(n);
    }
    return {view, byId, groups, members, chain: id => (id && groups.has(id) ? chain(id) : [])};
  }

  // ---- The scene: what is drawn for the current sides and collapsed groups -----------------

  function groupKey(id) { return "group:" + id; }
  function drawnId(key) { return key.replace(/^group:/, ""); }

  // A node is drawn as itself, or inside the outermost collapsed group around it. (The forward
  // and backward parts of a call or a loop step are groups apart, so a box is in one band.)
  function unitKeyOf(index, node, collapsed) {
    const closed = index.chain(node.group).find(g => collapsed.has(g));
    return closed ? groupKey(closed) : node.id;
  }

  function nodeUnit(node) {
    const name = clipped(node.name, 15), type = clipped(node.type, 17);
    if (node.kind === "constant") {
      return {w: Math.max(26, textWidth(node.label, SIZE.label) + 14), h: 22};
    }
    const textW = Math.max(textWidth(name, SIZE.name), textWidth(type, SIZE.type));
    if (node.kind !== "op") return {w: textW + 18, h: 36};
    return {w: Math.max(textW, pillWidth(opLabel(node))), h: 50};
  }

  function opLabel(node) { return clipped(node.label, 14); }
  function pillWidth(label) { return label.length <= 2 ? PILL_HEIGHT : textWidth(label, SIZE.label) + 14; }

  function buildScene(index, state) {
    const visible = n => state.sides[n.side];
    const units = new Map();
    for (const node of index.view.nodes) {
      if (!visible(node)) continue;
      const key = unitKeyOf(index, node, state.collapsed);
      if (!units.has(key)) {
        units.set(key, key === node.id
          ? {key, node, band: node.side, ...nodeUnit(node)}
          : {key, group: index.groups.get(drawnId(key)), w: 0, h: 44, members: []});
      }
      const unit = units.get(key);
      if (unit.group) unit.members.push(node);
    }
    for (const unit of units.values()) if (unit.group) sizeGroupUnit(unit);
    const edges = [], reuse = [], seen = new Set();
    for (const [from, to, type] of index.view.edges) {
      const a = index.byId.get(from), b = index.byId.get(to);
      if (!a || !b || !visible(a) || !visible(b)) continue;
      const ka = unitKeyOf(index, a, state.collapsed), kb = unitKeyOf(index, b, state.collapsed);
      if (ka === kb || seen.has(ka + ">" + kb + type)) continue;
      seen.add(ka + ">" + kb + type);
      // A backward value reading a forward one is drawn apart: it would cross the whole picture.
      (type === "reuse" ? reuse : edges).push({from: units.get(ka), to: units.get(kb), type,
                                               sameSide: a.side === b.side});
    }
    return {units, edges, reuse};
  }

  function sizeGroupUnit(unit) {
    unit.band = unit.members.some(n => n.side === "forward") ? "forward" : "backward";
    unit.title = unit.group.label;
    unit.caption = unit.members.length + " nodes";
    unit.w = Math.max(textWidth(clipped(unit.title, 22), SIZE.name) + 30,
                      textWidth(unit.caption, SIZE.type) + 20);
  }

  // ---- Layout: layers by longest path, orders by barycentre, the backward band mirrored ----

  function bandGraph(scene, band) {
    const units = [...scene.units.values()].filter(u => u.band === band);
    const preds = new Map(units.map(u => [u, []])), succs = new Map(units.map(u => [u, []]));
    for (const e of scene.edges) {
      if (e.sameSide && e.from.band === band && e.to.band === band) {
        preds.get(e.to).push(e.from);
        succs.get(e.from).push(e.to);
      }
    }
    return {units, preds, succs};
  }

  // Longest path from the band's sources, in the order the units came (topological for nodes;
  // an edge back to a unit not yet placed, which a collapsed group can make, is not followed).
  // A unit with no inputs that is not pinned (a constant) floats to just before its first use.
  function layers(band, pinned) {
    const level = new Map(), floating = [];
    for (const u of band.units) {
      const placed = band.preds.get(u).filter(p => level.has(p));
      if (!placed.length && !pinned(u)) { floating.push(u); continue; }
      level.set(u, placed.length ? Math.max(...placed.map(p => level.get(p))) + 1 : 0);
    }
    for (const u of floating.reverse()) {
      const uses = band.succs.get(u).filter(s => level.has(s)).map(s => level.get(s));
      level.set(u, uses.length ? Math.max(0, Math.min(...uses) - 1) : 0);
    }
    return level;
  }

  function pushToEnd(level, units) {
    const last = Math.max(0, ...level.values());
    for (const u of units) if (level.has(u)) level.set(u, last);
  }

  function columnsOf(band, level, initialKey) {
    const columns = [];
    for (const u of band.units) (columns[level.get(u)] ||= []).push(u);
    for (let c = 0; c < columns.length; c++) columns[c] ||= [];
    for (const column of columns) column.sort((a, b) => initialKey(a) - initialKey(b));
    return columns;
  }

  // A few barycentre sweeps: each unit moves towards the mean place of its neighbours in the
  // columns already swept, which removes most crossings of a layered picture.
  function sweep(columns, band, level) {
    const place = new Map();
    const remember = column => column.forEach((u, i) => place.set(u, i - (column.length - 1) / 2));
    columns.forEach(remember);
    const order = (column, neighbours) => {
      const key = new Map(column.map(u => {
        const known = neighbours(u).filter(v => level.get(v) !== level.get(u)).map(v => place.get(v));
        return [u, known.length ? mean(known) : place.get(u)];
      }));
      column.sort((a, b) => key.get(a) - key.get(b));
      remember(column);
    };
    for (let round = 0; round < 4; round++) {
      for (let c = 1; c < columns.length; c++) order(columns[c], u => band.preds.get(u));
      for (let c = columns.length - 2; c >= 0; c--) order(columns[c], u => band.succs.get(u));
    }
    return place;
  }

  // Moves each backward unit, within the room its chain leaves it, to the column that mirrors
  // its origin's: the derivative of z is drawn under z where the graph allows.
  function alignToOrigins(backward, level, seed, originColumn) {
    const last = Math.max(0, ...level.values());
    const height = new Map();  // the longest chain of backward units after each one
    for (const u of [...backward.units].reverse()) {
      const later = backward.succs.get(u).filter(s => height.has(s));
      height.set(u, later.length ? Math.max(...later.map(s => height.get(s))) + 1 : 0);
    }
    const floating = [];
    for (const u of backward.units) {
      const placed = backward.preds.get(u).filter(p => level.has(p) && p !== u);
      if (!placed.length && u !== seed) { floating.push(u); level.delete(u); continue; }
      const lowest = placed.length ? Math.max(...placed.map(p => level.get(p))) + 1 : level.get(u);
      const highest = Math.max(lowest, last - height.get(u));
      const target = originColumn(u);
      level.set(u, target === null ? lowest : Math.min(highest, Math.max(lowest, target)));
    }
    for (const u of floating.reverse()) {
      const uses = backward.succs.get(u).filter(s => level.has(s)).map(s => level.get(s));
      level.set(u, uses.length ? Math.max(0, Math.min(...uses) - 1) : 0);
    }
  }

  function layout(scene, index) {
    const view = index.view;
    const forward = bandGraph(scene, "forward"), backward = bandGraph(scene, "backward");
    // The lecture's params stand at the left with the inputs; a deep network's hundred params
    // would make that one column taller than the rest of the picture, so each stands by its use.
    const pinParams = view.params.length <= PINNED_PARAMS;
    const isSource = u => u.node && (u.node.kind === "input" || pinParams && ["param", "state"].includes(u.node.kind));
    const forwardLevel = layers(forward, isSource);
    pushToEnd(forwardLevel, forward.units.filter(u => u.node && u.node.id === view.objective));
    const firstAppearance = new Map([...scene.units.values()].map((u, i) => [u, i]));
    const forwardColumns = columnsOf(forward, forwardLevel, u => firstAppearance.get(u));
    const forwardPlace = sweep(forwardColumns, forward, forwardLevel);

    // The backward band is laid out from its seed (under the objective) towards the params'
    // gradients (pushed to the far end, under the params), then mirrored.
    const seed = backward.units.find(u => !backward.preds.get(u).length);
    const backwardLevel = layers(backward, u => u === seed);
    const forwardLast = Math.max(1, ...forwardLevel.values());
    const backwardLast = Math.max(0, ...backwardLevel.values());
    alignToOrigins(backward, backwardLevel, seed, u => {
      const origin = u.node && u.node.origin && scene.units.get(u.node.origin);
      if (!origin || !forwardLevel.has(origin)) return null;
      return Math.round((1 - forwardLevel.get(origin) / forwardLast) * backwardLast);
    });
    const gradients = new Set(pinParams ? view.params.map(p => p.gradient) : []);
    pushToEnd(backwardLevel, backward.units.filter(u => u.node && gradients.has(u.node.id)));
    const originPlace = u => {
      const origin = u.node && u.node.origin && scene.units.get(u.node.origin);
      return origin && forwardPlace.has(origin) ? forwardPlace.get(origin) : firstAppearance.get(u) / 1e4;
    };
    const backwardColumns = columnsOf(backward, backwardLevel, originPlace).reverse();
    const mirroredLevel = new Map(backward.units.map(u => [u, backwardColumns.length - 1 - backwardLevel.get(u)]));
    sweep(backwardColumns, {preds: backward.succs, succs: backward.preds}, mirroredLevel);

    const forwardHeight = placeBand(forwardColumns, 0);
    placeBand(backwardColumns, forwardHeight + (forwardHeight ? BAND_GAP : 0));
    alignBands(forwardColumns, backwardColumns);
    const bounds = boundsOf([...scene.units.values()]);
    if (forwardHeight && backwardColumns.length) {  // room for the bands' names at the left
      bounds.x -= BAND_LABEL_ROOM;
      bounds.w += BAND_LABEL_ROOM;
    }
    return {bounds, bandTop: forwardHeight && backwardColumns.length ? forwardHeight + BAND_GAP / 2 : null};
  }

  function placeBand(columns, top) {
    const heights = columns.map(c => c.reduce((s, u) => s + u.h + ROW_GAP, -ROW_GAP));
    const height = Math.max(0, ...heights);
    columns.forEach((column, c) => {
      let y = top + (height - heights[c]) / 2;
      for (const u of column) { u.y = y + u.h / 2; y += u.h + ROW_GAP; }
    });
    return height;
  }

  // Columns as wide as their widest unit; the narrower band is stretched so that both start
  // under each other (inputs and params over their gradients) and end so (J over ∂J/∂J).
  function alignBands(...bands) {
    const centres = bands.map(columns => {
      let x = 0;
      return columns.map(column => {
        const w = Math.max(40, ...column.map(u => u.w));
        const centre = x + w / 2;
        x += w + COLUMN_GAP;
        return centre;
      });
    });
    const spans = centres.map(cs => (cs.length ? cs[cs.length - 1] - cs[0] : 0));
    const span = Math.max(...spans);
    bands.forEach((columns, b) => columns.forEach((column, c) => {
      const x = spans[b] ? (centres[b][c] - centres[b][0]) * span / spans[b] : span / 2;
      for (const u of column) { u.x = x; u.column = column; }
    }));
  }

  function boundsOf(units) {
    if (!units.length) return {x: 0, y: 0, w: 1, h: 1};
    const left = Math.min(...units.map(u => u.x - u.w / 2)), right = Math.max(...units.map(u => u.x + u.w / 2));
    const top = Math.min(...units.map(u => u.y - u.h / 2)), bottom = Math.max(...units.map(u => u.y + u.h / 2));
    return {x: left, y: top, w: right - left, h: bottom - top};
  }

  function edgePath(a, b) {
    if (a.band !== b.band) {
      const down = a.y < b.y ? 1 : -1;
      const y1 = a.y + down * a.h / 2, y2 = b.y - down * b.h / 2, bend = down * Math.max(30, Math.abs(y2 - y1) / 2);
      return `M${a.x},${y1} C${a.x},${y1 + bend} ${b.x},${y2 - bend} ${b.x},${y2}`;
    }
    const from = anchor(a), to = anchor(b);
    if (Math.abs(a.x - b.x) < 1) {  // same column: a loop out to the right
      const x1 = a.x + from.half, x2 = b.x + to.half, out = Math.max(x1, x2) + 30;
      return `M${x1},${from.y} C${out},${from.y} ${out},${to.y} ${x2},${to.y}`;
    }
    const dir = b.x > a.x ? 1 : -1;
    const x1 = a.x + dir * from.half, x2 = b.x - dir * to.half, bend = (x2 - x1) / 2;
    return `M${x1},${from.y} C${x1 + bend},${from.y} ${x2 - bend},${to.y} ${x2},${to.y}`;
  }

  // Where a sideways edge meets a unit: an op's edges meet its pill, not the name below it.
  function anchor(unit) {
    if (unit.node && unit.node.kind === "op") {
      return {half: pillWidth(opLabel(unit.node)) / 2, y: unit.y - unit.h / 2 + PILL_HEIGHT / 2};
    }
    return {half: unit.w / 2, y: unit.y};
  }

  // ---- Drawing --------------------------------------------------------------------------

  // What a node computes, as a reader says it: "z = matmul(x, W1.T)", or "W1 (param)".
  function nodeText(node) {
    if (node.kind !== "op" && node.kind !== "constant") return `${node.name} (${node.kind})`;
    const [lhs] = node.ir.split(" : ");
    return lhs.replace(/%/g, "").replace(/ \{.*\}$/, "");
  }

  function where(node) {
    if (!node.loc) return "";
    return "line " + node.loc.line + (node.loc.iteration ? " (" + node.loc.iteration + ")" : "");
  }

  function ariaLabel(node) {
    const parts = [nodeText(node), node.type];
    if (node.loc) parts.push(where(node));
    if (node.side === "backward") parts.push("backward");
    if (isNonfinite(node)) parts.push("holds NaN or Inf");
    return parts.join(", ");
  }

  function isNonfinite(node) { return Boolean(node.value && (node.value.nan || node.value.inf)); }

  function drawNode(layer, unit, objective) {
    const node = unit.node;
    const classes = ["node"];
    if (node.new) classes.push("new");
    if (node.id === objective) classes.push("objective");
    if (isNonfinite(node)) classes.push("nonfinite");
    const g = svg("g", {class: classes.join(" "), "data-id": node.id, "data-side": node.side,
                        "data-kind": node.kind, role: "button", tabindex: "-1",
                        "aria-label": ariaLabel(node), transform: `translate(${unit.x},${unit.y})`}, layer);
    svg("title", {}, g).textContent = node.ir;
    const {w, h} = unit;
    // The whole box takes clicks, not only the shape and the letters drawn in it.
    svg("rect", {class: "hit", x: -w / 2, y: -h / 2, width: w, height: h}, g);
    if (node.kind === "constant") {
      svg("rect", {class: "shape", x: -w / 2, y: -h / 2, width: w, height: h, rx: h / 2}, g);
      label(g, node.label, 0, 4, "op-label");
    } else if (node.kind === "op") {
      const pill = pillWidth(opLabel(node));
      svg("rect", {class: "shape", x: -pill / 2, y: -h / 2, width: pill, height: PILL_HEIGHT, rx: PILL_HEIGHT / 2}, g);
      label(g, opLabel(node), 0, -h / 2 + 16.5, "op-label");
      label(g, clipped(node.name, 15), 0, h / 2 - 13, "name");
      label(g, clipped(node.type, 17), 0, h / 2 - 1, "type");
    } else {
      svg("rect", {class: "shape", x: -w / 2, y: -h / 2, width: w, height: h, rx: 4}, g);
      label(g, clipped(node.name, 15), 0, -3, "name");
      label(g, clipped(node.type, 17), 0, 12, "type");
    }
    if (isNonfinite(node)) {
      const mark = svg("g", {class: "nonfinite-mark", transform: `translate(${w / 2 - 2},${-h / 2 + 2})`}, g);
      svg("circle", {r: 7}, mark);
      label(mark, "!", 0, 4, "");
    }
    return g;
  }

  function label(parent, text, x, y, cls) {
    const t = svg("text", {x, y, class: cls, "text-anchor": "middle"}, parent);
    t.textContent = text;
    return t;
  }

  function drawGroup(layer, unit) {
    const {w, h} = unit;
    const g = svg("g", {class: "group-box", "data-group": unit.group.id, "data-side": unit.band,
                        role: "button", tabindex: "-1", "aria-expanded": "false",
                        "aria-label": `group ${unit.title}, ${unit.caption}, collapsed; Enter expands it`,
                        transform: `translate(${unit.x},${unit.y})`}, layer);
    svg("title", {}, g).textContent = `${unit.title}: ${unit.caption} (click to expand)`;
    svg("rect", {class: "shape", x: -w / 2, y: -h / 2, width: w, height: h, rx: 6}, g);
    label(g, "▸ " + clipped(unit.title, 22), 0, -3, "name");
    label(g, unit.caption, 0, 12, "type");
    return g;
  }

  function drawFrames(layer, scene, index, collapsed) {
    // An expanded group gets a faint frame around its nodes in each band, with a header that
    // collapses it again.
    for (const [id, members] of index.members) {
      if (collapsed.has(id) || index.chain(id).some(g => collapsed.has(g))) continue;
      for (const band of ["forward", "backward"]) {
        const units = members.map(n => scene.units.get(n.id)).filter(u => u && u.band === band);
        if (!units.length) continue;
        const b = boundsOf(units), pad = 8;
        const frame = svg("g", {class: "group-frame", "data-group": id}, layer);
        svg("rect", {x: b.x - pad, y: b.y - pad - 14, width: b.w + 2 * pad, height: b.h + 2 * pad + 14, rx: 8}, frame);
        const header = svg("text", {x: b.x - pad + 6, y: b.y - pad - 3, class: "frame-label",
                                    role: "button", tabindex: "-1",
                                    "aria-label": `collapse ${index.groups.get(id).label}`}, frame);
        header.textContent = "▾ " + index.groups.get(id).label;
      }
    }
  }

  function drawEdge(layer, edge, cls) {
    return svg("path", {class: cls, d: edgePath(edge.from, edge.to),
                              "data-from": drawnId(edge.from.key), "data-to": drawnId(edge.to.key),
                              "data-side": edge.type === "reuse" ? "reuse" : edge.to.band,
                              "marker-end": `url(#arrow-${edge.type === "reuse" ? "reuse" : edge.to.band})`}, layer);
  }

  function drawDefs(canvas) {
    const defs = svg("defs", {}, canvas);
    for (const kind of ["forward", "backward", "reuse"]) {
      const marker = svg("marker", {id: "arrow-" + kind, class: "arrow-" + kind, viewBox: "0 0 10 10",
                                    refX: 9, refY: 5, markerWidth: 7, markerHeight: 7,
                                    orient: "auto-start-reverse"}, defs);
      svg("path", {d: "M0,1 L10,5 L0,9 z"}, marker);
    }
  }

  // ---- Values: text, a histogram and a heatmap ---------------------------------------------

  function valueView(value, parent) {
    const stats = html("div", {class: "value-stats"}, parent);
    const line = text => html("div", {}, stats, text);
    line(`shape [${value.shape.join(", ")}] ${value.dtype}, ${value.count} values`);
    line(`min ${number(value.min)}  max ${number(value.max)}`);
    line(`mean ${number(value.mean)}  std ${number(value.std)}`);
    if (value.nan || value.inf) html("div", {class: "nonfinite-text"}, stats, `${value.nan} NaN, ${value.inf} Inf`);
    line("sample " + value.sample.map(number).join(", ") + (value.count > value.sample.length ? ", …" : ""));
    if (value.histogram) histogram(value.histogram, parent);
    if (value.heatmap) heatmap(value.heatmap, parent);
  }

  function histogram(h, parent) {
    const W = 240, H = 56, bar = W / h.counts.length, top = Math.max(1, ...h.counts);
    const chart = svg("svg", {class: "histogram", width: W, height: H + 14, viewBox: `0 0 ${W} ${H + 14}`,
                              role: "img", "aria-label": `histogram from ${number(h.low)} to ${number(h.high)}`}, parent);
    h.counts.forEach((count, i) => {
      const height = count ? Math.max(1, H * count / top) : 0;
      const rect = svg("rect", {class: "bar", x: i * bar + 0.5, y: H - height, width: bar - 1, height}, chart);
      svg("title", {}, rect).textContent = String(count);
    });
    svg("line", {class: "axis", x1: 0, x2: W, y1: H + 0.5, y2: H + 0.5}, chart);
    svg("text", {x: 0, y: H + 12, class: "tick"}, chart).textContent = number(h.low);
    svg("text", {x: W, y: H + 12, class: "tick", "text-anchor": "end"}, chart).textContent = number(h.high);
  }

  function heatmap(m, parent) {
    const cell = Math.max(3, Math.min(10, Math.floor(240 / Math.max(m.rows, m.cols))));
    const chart = svg("svg", {class: "heatmap", width: m.cols * cell, height: m.rows * cell,
                              viewBox: `0 0 ${m.cols * cell} ${m.rows * cell}`, role: "img",
                              "aria-label": `heatmap of ${m.rows} by ${m.cols} cells, from ${number(m.low)} to ${number(m.high)}`}, parent);
    // Signed values diverge from zero in two hues; one-signed ones shade a single hue.
    const signed = m.low < 0 && m.high > 0, reach = Math.max(Math.abs(m.low), Math.abs(m.high)) || 1;
    m.cells.forEach((row, r) => row.forEach((v, c) => {
      const attrs = {x: c * cell, y: r * cell, width: cell, height: cell};
      if (v === null) {
        attrs.class = "cell-nonfinite";
      } else if (signed) {
        attrs.class = v < 0 ? "cell-negative" : "cell-positive";
        attrs["fill-opacity"] = (0.08 + 0.92 * Math.abs(v) / reach).toFixed(3);
      } else {
        attrs.class = "cell-positive";
        attrs["fill-opacity"] = (0.08 + 0.92 * (v - m.low) / ((m.high - m.low) || 1)).toFixed(3);
      }
      svg("rect", attrs, chart);
    }));
  }

  // ---- The page's panels ----------------------------------------------------------------------

  function checkbox(parent, id, text, checked) {
    const labelEl = html("label", {class: "check"}, parent);
    const input = html("input", {type: "checkbox", id}, labelEl);
    input.checked = checked;
    labelEl.append(" " + text);
    return input;
  }

  function skeleton(root, graph) {
    root.textContent = "";
    const main = html("div", {class: "graph-main"}, root);
    const bar = html("div", {class: "toolbar", role: "toolbar", "aria-label": "Graph controls"}, main);
    const controls = {
      forward: checkbox(bar, "show-forward", "forward", true),
      backward: checkbox(bar, "show-backward", "backward", true),
      reuse: checkbox(bar, "show-reuse", "reuse edges", false),
    };
    if (graph.views.length > 1) {
      const labelEl = html("label", {class: "view-choice"}, bar, "graph ");
      controls.view = html("select", {id: "view-select"}, labelEl);
      for (const v of graph.views) html("option", {value: v.key}, controls.view, v.label);
    }
    controls.fit = html("button", {id: "zoom-fit", type: "button"}, bar, "fit");
    controls.collapse = html("button", {id: "collapse-all", type: "button"}, bar, "collapse all");
    controls.expand = html("button", {id: "expand-all", type: "button"}, bar, "expand all");
    controls.find = html("input", {type: "search", id: "find-node", placeholder: "find a node",
                                   "aria-label": "Find a node by name; Enter goes to the next match"}, bar);
    controls.found = html("span", {class: "found", "aria-live": "polite"}, bar);
    controls.stats = html("span", {class: "graph-stats"}, bar);
    const wrap = html("div", {class: "canvas-wrap"}, main);
    controls.changesBox = html("details", {class: "changes"}, wrap);
    controls.changesTitle = html("summary", {}, controls.changesBox, "What the passes changed");
    controls.changes = html("ul", {id: "view-changes", "aria-label": "What the passes changed"}, controls.changesBox);
    controls.canvas = svg("svg", {id: "graph-canvas", role: "group", "aria-label": "Computational graph; arrow keys move between nodes"}, wrap);
    drawDefs(controls.canvas);
    controls.viewport = svg("g", {id: "viewport"}, controls.canvas);
    html("p", {class: "hint"}, main, "Wheel zooms, drag pans; Tab reaches the nodes, arrows move, Enter selects, Escape clears.");
    const side = html("aside", {class: "side", "aria-label": "The selected node, the chain rule and the source"}, root);
    controls.details = html("section", {id: "node-details", "aria-live": "polite", "aria-label": "Node details"}, side);
    controls.stepper = stepperPanel(side);
    controls.source = html("section", {id: "source-pane", "aria-label": "Source"}, side);
    return controls;
  }

  function stepperPanel(side) {
    const panel = html("section", {id: "stepper", "aria-label": "The chain rule, step by step"}, side);
    html("h2", {}, panel, "Chain rule, step by step");
    const row = html("div", {class: "stepper-controls"}, panel);
    const labelEl = html("label", {}, row, "to ");
    const param = html("select", {id: "stepper-param"}, labelEl);
    const prev = html("button", {id: "step-prev", type: "button", "aria-label": "Back a step"}, row, "◀ Back");
    const next = html("button", {id: "step-next", type: "button", "aria-label": "Next step"}, row, "Next ▶");
    const reset = html("button", {id: "step-reset", type: "button"}, row, "Reset");
    const formula = html("p", {id: "step-formula", class: "formula", "aria-live": "polite"}, panel);
    // The current step's formula is announced; the list of steps so far is there to read.
    const list = html("ol", {id: "step-list", "aria-label": "The steps so far"}, panel);
    return {param, prev, next, reset, formula, list};
  }

  function sourcePane(pane, source) {
    pane.textContent = "";
    html("h2", {}, pane, source && source.path ? source.path : "Source");
    if (!source || !source.lines) {
      html("p", {class: "muted"}, pane, "This model has no source lines (an ONNX file).");
      return new Map();
    }
    const lines = new Map();
    const listing = html("div", {class: "listing"}, pane);
    source.lines.forEach((text, i) => {
      const row = html("div", {class: "source-line", "data-line": String(i + 1)}, listing);
      html("span", {class: "line-number", "aria-hidden": "true"}, row, String(i + 1));
      html("span", {class: "line-text"}, row, text || " ");
      lines.set(i + 1, row);
    });
    return lines;
  }

  // ---- The interactive view -----------------------------------------------------------------

  function render(root, graph, source) {
    if (!graph || !graph.views || !graph.views.length) {
      root.textContent = "This page has no graph.";
      return;
    }
    const ui = skeleton(root, graph);
    const sourceLines = sourcePane(ui.source, source);
    const state = {
      index: null, scene: null, laid: null, collapsed: new Set(), sides: {forward: true, backward: true},
      selected: null, transform: {x: 0, y: 0, k: 1}, stepAt: -1, elements: new Map(),
      incident: new Map(), highlighted: null, moved: false,
    };

    function sourceLineOf(node) { return node && node.loc ? sourceLines.get(node.loc.line) : null; }

    function showView(i, keepName) {
      const view = graph.views[i];
      state.index = indexView(view);
      state.collapsed = new Set(view.nodes.length > AUTO_COLLAPSE ? view.groups.map(g => g.id) : []);
      ui.stats.textContent = `${view.stats.forward} forward, ${view.stats.backward} backward nodes`;
      const changes = view.changes || [];
      ui.changes.textContent = "";
      for (const change of changes) html("li", {}, ui.changes, change);
      ui.changesBox.hidden = !changes.length;
      ui.changesTitle.textContent = `What ${view.label.split(":")[0]} changed` + (changes.length ? ": " + changes[0] : "");
      state.selected = null;
      state.stepAt = -1;
      relayout();
      startingView();
      setupStepper(view);
      const again = keepName && view.nodes.find(n => n.name === keepName.name && n.side === keepName.side);
      if (again) select(again.id, {show: true});
      else showDetails(null);
    }

    function relayout() {
      state.scene = buildScene(state.index, state);
      state.laid = layout(state.scene, state.index);
      draw();
      ui.collapse.disabled = !state.index.view.groups.length;
      ui.expand.disabled = !state.collapsed.size;
      const param = currentParam();
      if (param && state.stepAt >= 0) markStepping(param.steps[state.stepAt]);
    }

    function draw() {
      const vp = ui.viewport;
      vp.textContent = "";
      state.elements = new Map();
      state.incident = new Map();
      const frames = svg("g", {class: "frames"}, vp);
      if (state.laid.bandTop !== null && state.sides.forward && state.sides.backward) {
        const b = state.laid.bounds;
        svg("line", {class: "band-rule", x1: b.x, x2: b.x + b.w, y1: state.laid.bandTop, y2: state.laid.bandTop}, frames);
        svg("text", {class: "band-label", x: b.x, y: state.laid.bandTop - 8}, frames).textContent = "forward ↑";
        svg("text", {class: "band-label", x: b.x, y: state.laid.bandTop + 18}, frames).textContent = "backward ↓";
      }
      drawFrames(frames, state.scene, state.index, state.collapsed);
      const edgeLayer = svg("g", {class: "edges"}, vp);
      const reuseLayer = svg("g", {class: "reuse-edges"}, vp);
      const remember = (edge, path) => {
        for (const end of [edge.from.key, edge.to.key]) {
          if (!state.incident.has(end)) state.incident.set(end, []);
          state.incident.get(end).push(path);
        }
      };
      for (const e of state.scene.edges) remember(e, drawEdge(edgeLayer, e, "edge " + (e.sameSide ? e.to.band : "cross")));
      for (const e of state.scene.reuse) remember(e, drawEdge(reuseLayer, e, "edge reuse"));
      const nodeLayer = svg("g", {class: "nodes"}, vp);
      for (const unit of state.scene.units.values()) {
        state.elements.set(unit.key, unit.node ? drawNode(nodeLayer, unit, state.index.view.objective)
          : drawGroup(nodeLayer, unit));
      }
      ui.canvas.classList.toggle("show-reuse", ui.reuse.checked);
      markSelected(state.selected);
      applyTransform(state.moved);
    }

    // -- zoom and pan

    // `moved` says the reader placed the view; until then a resized window refits it.
    function applyTransform(moved = true) {
      state.moved = moved;
      const {x, y, k} = state.transform;
      ui.viewport.setAttribute("transform", `translate(${x.toFixed(2)},${y.toFixed(2)}) scale(${k.toFixed(4)})`);
      // Text too small to read is not drawn: it is most of the cost of a frame of a big graph.
      ui.canvas.classList.toggle("far", k < TEXT_SCALE);
    }

    function fit() {
      const box = ui.canvas.getBoundingClientRect(), b = state.laid.bounds, margin = 14;
      // The passes' summary lies over the canvas's top; the graph starts below it.
      const top = ui.changesBox.hidden ? 0 : ui.changesBox.offsetHeight + 8;
      const k = Math.min((box.width - 2 * margin) / b.w, (box.height - top - 2 * margin) / b.h, 1.5);
      state.transform = {k: Math.max(k, 0.02), x: 0, y: 0};
      state.transform.x = box.width / 2 - (b.x + b.w / 2) * state.transform.k;
      state.transform.y = top + (box.height - top) / 2 - (b.y + b.h / 2) * state.transform.k;
      applyTransform(false);
    }

    // The whole graph when it is legible fitted to the window; a long one starts legible at its
    // inputs and params instead, for the reader to pan along (Fit still shows all of it).
    function startingView() {
      fit();
      const box = ui.canvas.getBoundingClientRect(), b = state.laid.bounds, t = state.transform;
      if (t.k >= LEGIBLE_SCALE) return;
      t.k = Math.max(t.k, Math.min(0.8, (box.height - 28) / b.h));
      t.x = 14 - b.x * t.k;
      t.y = b.h * t.k < box.height ? box.height / 2 - (b.y + b.h / 2) * t.k : 14 - b.y * t.k;
      applyTransform(false);
    }
    window.addEventListener("resize", () => { if (!state.moved && !root.hidden) startingView(); });

    function centreOn(unit) {
      const box = ui.canvas.getBoundingClientRect();
      if (state.transform.k < LEGIBLE_SCALE) state.transform.k = 1;  // a node centred far away is no help
      state.transform.x = box.width / 2 - unit.x * state.transform.k;
      state.transform.y = box.height / 2 - unit.y * state.transform.k;
      applyTransform();
    }

    // Whether the reader can see the unit now: inside the canvas, and drawn large enough to read.
    function onScreen(unit) {
      const box = ui.canvas.getBoundingClientRect(), {x, y, k} = state.transform;
      if (k < LEGIBLE_SCALE) return false;
      const left = (unit.x - unit.w / 2) * k + x, right = (unit.x + unit.w / 2) * k + x;
      const top = (unit.y - unit.h / 2) * k + y, bottom = (unit.y + unit.h / 2) * k + y;
      return left > 4 && right < box.width - 4 && top > 4 && bottom < box.height - 4;
    }

    ui.canvas.addEventListener("wheel", event => {
      event.preventDefault();
      const box = ui.canvas.getBoundingClientRect();
      const px = event.clientX - box.left, py = event.clientY - box.top, t = state.transform;
      const k = Math.min(4, Math.max(0.02, t.k * Math.exp(-event.deltaY * 0.0015)));
      t.x = px - (px - t.x) * k / t.k;
      t.y = py - (py - t.y) * k / t.k;
      t.k = k;
      applyTransform();
    }, {passive: false});

    // A drag pans; the pointer is captured only once it has moved, so that a plain click
    // still reaches the node under it, and the click that ends a drag chooses nothing.
    let drag = null, panned = false;
    ui.canvas.addEventListener("pointerdown", event => {
      panned = false;
      if (event.button !== 0) return;
      drag = {x: event.clientX, y: event.clientY, tx: state.transform.x, ty: state.transform.y, moved: false, id: event.pointerId};
    });
    ui.canvas.addEventListener("pointermove", event => {
      if (!drag) return;
      const dx = event.clientX - drag.x, dy = event.clientY - drag.y;
      if (!drag.moved && Math.hypot(dx, dy) < 4) return;
      if (!drag.moved) {
        drag.moved = panned = true;
        ui.canvas.setPointerCapture(drag.id);
        ui.canvas.classList.add("panning");
      }
      state.transform.x = drag.tx + dx;
      state.transform.y = drag.ty + dy;
      applyTransform();
    });
    const endDrag = () => {
      drag = null;
      ui.canvas.classList.remove("panning");
    };
    ui.canvas.addEventListener("pointerup", endDrag);
    ui.canvas.addEventListener("pointercancel", endDrag);

    // -- selection

    function unitKeyForNode(id) {
      const node = state.index.byId.get(id);
      return node ? unitKeyOf(state.index, node, state.collapsed) : id;
    }

    // Makes a node drawable: its side shown and the groups around it open.
    function reveal(id) {
      const node = state.index.byId.get(id);
      if (!node) return;
      let changed = false;
      if (!state.sides[node.side]) {
        state.sides[node.side] = true;
        ui[node.side].checked = true;
        changed = true;
      }
      for (const g of state.index.chain(node.group)) if (state.collapsed.delete(g)) changed = true;
      if (changed) relayout();
    }

    function select(key, {show = false, focus = false} = {}) {
      if (state.index.byId.has(key)) reveal(key);
      if (!state.scene.units.has(key)) return;
      state.selected = key;
      markSelected(key);
      const unit = state.scene.units.get(key);
      if ((show || focus) && !onScreen(unit)) centreOn(unit);  // moved only when off screen
      if (focus) state.elements.get(key).focus({preventScroll: true});
      showDetails(unit);
    }

    function markSelected(key) {
      for (const el of ui.viewport.querySelectorAll(".selected, .incident")) el.classList.remove("selected", "incident");
      const el = state.elements.get(key);
      if (el) {
        el.classList.add("selected");
        for (const path of state.incident.get(key) || []) path.classList.add("incident");
      }
      makeTabStop(el || state.elements.values().next().value);
    }

    // One drawn unit is in the page's Tab order (the selected one, or the first); arrows move on.
    function makeTabStop(el) {
      for (const other of ui.viewport.querySelectorAll("[tabindex='0']")) if (other !== el) other.setAttribute("tabindex", "-1");
      if (el) el.setAttribute("tabindex", "0");
    }

    function clearSelection() {
      state.selected = null;
      markSelected(null);
      showDetails(null);
    }

    function highlightLine(row) {
      if (state.highlighted) {
        state.highlighted.classList.remove("highlight");
        state.highlighted.removeAttribute("aria-current");
      }
      state.highlighted = row;
      if (!row) return;
      row.classList.add("highlight");
      row.setAttribute("aria-current", "true");
      const listing = ui.source;
      listing.scrollTop = row.offsetTop - listing.clientHeight / 2 + row.offsetHeight / 2;
    }

    function goto(id, text) {
      return html("a", {href: "#", "data-goto": id}, null, text);
    }

    function field(list, name, title, fill) {
      const row = html("div", {class: "field", "data-field": name}, list);
      html("dt", {}, row, title);
      const dd = html("dd", {}, row);
      fill(dd);
    }

    function showDetails(unit) {
      const panel = ui.details;
      panel.textContent = "";
      if (!unit) {
        html("h2", {}, panel, "Details");
        html("p", {class: "muted"}, panel, "Click a node, or Tab to the graph and use the arrow keys, to see its IR, its source line, where its gradient comes from and its value.");
        highlightLine(null);
        return;
      }
      if (unit.group) return groupDetails(panel, unit);
      const node = unit.node, byId = state.index.byId;
      const heading = html("h2", {}, panel, node.name + " ");
      html("span", {class: "badge " + node.side}, heading, node.side);
      const list = html("dl", {}, panel);
      field(list, "ir", "IR", dd => html("code", {}, dd, node.ir));
      field(list, "type", "type", dd => { dd.textContent = node.type; });
      const line = sourceLineOf(node);
      if (node.loc) {
        field(list, "source", "source", dd => {
          html("span", {class: "where"}, dd, where(node) + ": ");
          html("code", {}, dd, line ? line.querySelector(".line-text").textContent.trim() : "");
        });
      }
      if (node.origin && byId.has(node.origin)) {
        const origin = byId.get(node.origin);
        field(list, "origin", "from", dd => dd.append("the derivative of ", goto(origin.id, nodeText(origin))));
      }
      if (node.rule) {
        field(list, "rule", "rule", dd => {
          html("div", {}, dd, node.rule.name);
          html("pre", {class: "rule-text"}, dd, node.rule.text);
          if (node.rule.where) html("div", {class: "muted small"}, dd, node.rule.where);
        });
      }
      if (node.formula) field(list, "formula", "chain rule", dd => html("span", {class: "formula"}, dd, node.formula));
      if (node.terms && node.terms.length) {
        field(list, "terms", "gradient terms", dd => {
          const ul = html("ul", {class: "links"}, dd);
          for (const id of node.terms) if (byId.has(id)) html("li", {}, ul).append(goto(id, byId.get(id).name));
        });
      }
      if (node.gradient && byId.has(node.gradient)) {
        field(list, "gradient", "gradient", dd => dd.append(goto(node.gradient, byId.get(node.gradient).name)));
      }
      if (node.value) field(list, "value", "value", dd => valueView(node.value, dd));
      const group = node.group && state.index.groups.get(node.group);
      if (group) {
        field(list, "group", "group", dd => {
          dd.append(group.label + " ");
          const button = html("button", {type: "button", class: "collapse-group"}, dd, "collapse");
          button.addEventListener("click", () => collapse(group.id));
        });
      }
      highlightLine(line);
    }

    function groupDetails(panel, unit) {
      html("h2", {}, panel, unit.title);
      const forward = unit.members.filter(n => n.side === "forward").length;
      html("p", {}, panel, `${unit.members.length} nodes (${forward} forward, ${unit.members.length - forward} backward), collapsed.`);
      const open = html("button", {type: "button", class: "expand-group"}, panel, "Expand");
      open.addEventListener("click", () => expand(unit.group.id));
      highlightLine(unit.group.line ? sourceLines.get(unit.group.line) : null);
    }

    function expand(id) {
      state.collapsed.delete(id);
      const first = state.index.members.get(id).find(n => state.sides[n.side]);
      relayout();
      if (first) select(unitKeyForNode(first.id), {show: true, focus: true});
    }

    function collapse(id) {
      state.collapsed.add(id);
      relayout();
      select(groupKey(state.index.chain(id).find(g => state.collapsed.has(g))), {focus: true});
    }

    // -- events on the canvas and the panels

    function targetOf(event) {
      const el = event.target.closest(".node, .group-box, .frame-label");
      return el && ui.canvas.contains(el) ? el : null;
    }

    function activate(el, focus) {
      if (el.classList.contains("node")) select(el.dataset.id, {focus});
      else if (el.dataset.group) expand(el.dataset.group);
      else collapse(el.parentNode.dataset.group);
    }

    ui.canvas.addEventListener("click", event => {
      if (panned) return;
      const el = targetOf(event);
      if (el) activate(el, false);
    });

    ui.canvas.addEventListener("keydown", event => {
      const el = targetOf(event);
      if (event.key === "Escape") { clearSelection(); return; }
      if (!el) return;
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        activate(el, true);
        return;
      }
      if (el.classList.contains("frame-label")) return;
      const key = el.dataset.group ? groupKey(el.dataset.group) : el.dataset.id;
      const next = neighbour(key, event.key);
      if (next !== undefined) {
        event.preventDefault();
        if (next) select(next.key, {focus: true});
      }
    });

    ui.canvas.addEventListener("focusin", event => {
      const el = targetOf(event);
      if (el && !el.classList.contains("frame-label")) makeTabStop(el);
    });

    // The unit an arrow key moves to; undefined for a key that is not an arrow, null at an end.
    function neighbour(key, arrow) {
      const unit = state.scene.units.get(key);
      if (!unit) return null;
      if (arrow === "ArrowUp" || arrow === "ArrowDown") {
        const column = unit.column, at = column.indexOf(unit);
        return column[at + (arrow === "ArrowUp" ? -1 : 1)] || null;
      }
      if (arrow !== "ArrowLeft" && arrow !== "ArrowRight") return undefined;
      const right = arrow === "ArrowRight";
      const ends = [];
      for (const e of [...state.scene.edges, ...state.scene.reuse]) {
        if (e.from === unit) ends.push(e.to);
        if (e.to === unit) ends.push(e.from);
      }
      const ahead = ends.filter(u => (right ? u.x > unit.x + 1 : u.x < unit.x - 1));
      ahead.sort((a, b) => Math.abs(a.y - unit.y) - Math.abs(b.y - unit.y) || Math.abs(a.x - unit.x) - Math.abs(b.x - unit.x));
      return ahead[0] || null;
    }

    root.addEventListener("click", event => {
      const link = event.target.closest("a[data-goto]");
      if (!link) return;
      event.preventDefault();
      select(link.dataset.goto, {show: true, focus: true});
    });

    ui.source.addEventListener("click", event => {
      const row = event.target.closest(".source-line");
      if (!row) return;
      const line = Number(row.dataset.line);
      const nodes = state.index.view.nodes.filter(n => n.loc && n.loc.line === line);
      const first = nodes.find(n => state.sides[n.side]) || nodes[0];
      if (first) select(first.id, {show: true});
      else highlightLine(row);
    });

    for (const side of ["forward", "backward"]) {
      ui[side].addEventListener("change", () => {
        state.sides[side] = ui[side].checked;
        relayout();
        fit();
      });
    }
    ui.reuse.addEventListener("change", () => ui.canvas.classList.toggle("show-reuse", ui.reuse.checked));
    ui.fit.addEventListener("click", fit);
    ui.collapse.addEventListener("click", () => {
      state.collapsed = new Set(state.index.view.groups.map(g => g.id));
      relayout();
      fit();
    });
    ui.expand.addEventListener("click", () => {
      state.collapsed.clear();
      relayout();
      fit();
    });
    if (ui.view) {
      ui.view.addEventListener("change", () => {
        const selected = state.selected && state.index.byId.get(state.selected);
        found = {query: null, at: -1};
        showView(ui.view.selectedIndex, selected ? {name: selected.name, side: selected.side} : null);
      });
    }

    // Enter in the search box goes to the next node whose name holds the text typed.
    let found = {query: null, at: -1};
    ui.find.addEventListener("keydown", event => {
      if (event.key !== "Enter") return;
      const query = ui.find.value.trim().toLowerCase();
      const matches = query ? state.index.view.nodes.filter(n => n.name.toLowerCase().includes(query)) : [];
      found = {query, at: found.query === query ? found.at + 1 : 0};
      ui.found.textContent = matches.length ? `${found.at % matches.length + 1} of ${matches.length}` : query ? "none" : "";
      if (matches.length) select(matches[found.at % matches.length].id, {show: true});
    });

    // -- the chain rule, step by step

    const stepper = ui.stepper;
    function setupStepper(view) {
      const previous = stepper.param.value;
      stepper.param.textContent = "";
      for (const p of view.params) html("option", {value: p.name}, stepper.param, p.name);
      if (view.params.some(p => p.name === previous)) stepper.param.value = previous;
      resetSteps();
    }

    function currentParam() {
      return state.index.view.params.find(p => p.name === stepper.param.value) || null;
    }

    function resetSteps() {
      state.stepAt = -1;
      stepper.list.textContent = "";
      markStepping(null);
      const param = currentParam();
      stepper.formula.textContent = !param ? "No param has a gradient in this view."
        : param.steps.length ? `Next ▶ walks from ${graph.objective_name || "the objective"} back to ${param.name}.`
        : `This view has no chain of steps back to ${param.name}.`;
      updateStepButtons();
    }

    function updateStepButtons() {
      const param = currentParam(), count = param ? param.steps.length : 0;
      stepper.prev.disabled = state.stepAt < 0;
      stepper.next.disabled = state.stepAt >= count - 1;
      stepper.reset.disabled = state.stepAt < 0;
    }

    function markStepping(step) {
      for (const el of ui.viewport.querySelectorAll(".stepping")) el.classList.remove("stepping");
      if (!step) return;
      for (const id of [step.value, step.node]) {
        const el = state.elements.get(unitKeyForNode(id));
        if (el) el.classList.add("stepping");
      }
    }

    function stepItem(step) {
      const li = html("li", {});
      html("span", {class: "formula"}, li, step.formula);
      if (step.why) li.append(" ", html("span", {class: "why"}, null, "(" + step.why + ")"));
      return li;
    }

    function showStep() {
      const param = currentParam(), step = param.steps[state.stepAt];
      while (stepper.list.children.length > state.stepAt + 1) stepper.list.lastChild.remove();
      if (step) {
        if (stepper.list.children.length <= state.stepAt) stepper.list.append(stepItem(step));
        stepper.formula.textContent = step.formula || step.why;
        reveal(step.value);
        // The step's backward node is selected, so the panel shows the rule that wrote it.
        select(step.node, {show: true});
        markStepping(step);
        for (const li of stepper.list.children) li.classList.remove("current");
        stepper.list.lastChild.classList.add("current");
        stepper.list.scrollTop = stepper.list.scrollHeight;
      } else {
        resetSteps();
      }
      updateStepButtons();
    }

    stepper.param.addEventListener("change", resetSteps);
    stepper.next.addEventListener("click", () => { state.stepAt++; showStep(); });
    stepper.prev.addEventListener("click", () => { state.stepAt--; showStep(); });
    stepper.reset.addEventListener("click", resetSteps);

    showView(0, null);
  }

  return {render};
})();
