// The graph view's geometry: which units a view draws for the sides shown and the groups
// collapsed (the scene), and where each stands, laid out the way the lecture draws the
// computational graph (inputs and params at the left, the objective at the right, the backward
// graph mirrored in a band below). Nothing here touches the page; graph.js draws what it gives.
const ChainruleGraphLayout = (() => {
  const COLUMN_GAP = 36, ROW_GAP = 10, BAND_GAP = 50, BAND_LABEL_ROOM = 70;
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

  return {indexView, buildScene, layout, unitKeyOf, groupKey, drawnId, boundsOf, edgePath,
          clipped, opLabel, pillWidth, PILL_HEIGHT};
})();
