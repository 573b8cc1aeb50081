// The graph view: a view's nodes drawn in one SVG where graph_layout.js placed them, and the
// interactive view around it (views, zoom and pan, selection, keyboard), tied to the side
// panels of graph_panels.js, which show the selected node's source line, derivative rule,
// value and the chain rule's steps.
const ChainruleGraph = (() => {
  const {svg, html} = Chainrule;
  const {indexView, buildScene, layout, unitKeyOf, groupKey, drawnId, boundsOf, edgePath,
         clipped, opLabel, pillWidth, PILL_HEIGHT} = ChainruleGraphLayout;
  const {nodeText, where, sidePanels, sourcePane, detailsPanel, chainStepper} = ChainruleGraphPanels;
  const AUTO_COLLAPSE = 400;  // more nodes than this start with their groups collapsed
  const LEGIBLE_SCALE = 0.45; // below this zoom a fitted graph's text cannot be read
  const TEXT_SCALE = 0.3;     // below this zoom no text is drawn at all

  // ---- Drawing --------------------------------------------------------------------------

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

  // ---- The view's frame: the toolbar, the canvas and the side panels ------------------------

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
    // Out of the Tab order itself: Tab goes straight to the node that holds the roving focus.
    controls.canvas = svg("svg", {id: "graph-canvas", role: "group", tabindex: "-1",
                                  "aria-label": "Computational graph; arrow keys move between nodes"}, wrap);
    drawDefs(controls.canvas);
    controls.viewport = svg("g", {id: "viewport"}, controls.canvas);
    html("p", {class: "hint"}, main, "Wheel zooms, drag pans; Tab reaches the nodes, arrows move, Enter selects, Escape clears.");
    return Object.assign(controls, sidePanels(root));
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
    const details = detailsPanel(ui, state, sourceLines, {expand, collapse});
    const stepper = chainStepper(ui, state, graph, {select, reveal, unitKeyForNode});

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
      stepper.setup(view);
      const again = keepName && view.nodes.find(n => n.name === keepName.name && n.side === keepName.side);
      if (again) select(again.id, {show: true});
      else details.show(null);
    }

    function relayout() {
      state.scene = buildScene(state.index, state);
      state.laid = layout(state.scene, state.index);
      draw();
      ui.collapse.disabled = !state.index.view.groups.length;
      ui.expand.disabled = !state.collapsed.size;
      stepper.markCurrentStep();
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
      details.show(unit);
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
      details.show(null);
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
      else details.highlightLine(row);
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

    showView(0, null);
  }

  return {render};
})();
