// The graph view's side panels: the selected node's details and value, the chain rule step by
// step, and the source pane. graph.js owns the selection; these panels show it, and call back
// into the view (select, reveal, expand, collapse) when the reader acts in them.
const ChainruleGraphPanels = (() => {
  const {svg, html, number} = Chainrule;

  // ---- A node in words ------------------------------------------------------------------------

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

  // ---- The side panels: built once, filled as the reader selects and steps -----------------

  function sidePanels(root) {
    const side = html("aside", {class: "side", "aria-label": "The selected node, the chain rule and the source"}, root);
    const details = html("section", {id: "node-details", "aria-live": "polite", "aria-label": "Node details"}, side);
    const stepper = stepperPanel(side);
    const source = html("section", {id: "source-pane", "aria-label": "Source"}, side);
    return {details, stepper, source};
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

  // ---- The details panel ---------------------------------------------------------------------

  // Shows a unit in `ui.details` and its line in `ui.source`; `expand` and `collapse` are the
  // view's, for the panel's group buttons.
  function detailsPanel(ui, state, sourceLines, {expand, collapse}) {
    function sourceLineOf(node) { return node && node.loc ? sourceLines.get(node.loc.line) : null; }

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

    return {show: showDetails, highlightLine};
  }

  // ---- The chain rule, step by step -----------------------------------------------------------

  // Walks `ui.stepper` from the objective back to the chosen param, one node at a time; the
  // view's `select` and `reveal` bring each step's nodes into sight.
  function chainStepper(ui, state, graph, {select, reveal, unitKeyForNode}) {
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

    // A redraw makes new elements; the step being shown is marked on them again.
    function markCurrentStep() {
      const param = currentParam();
      if (param && state.stepAt >= 0) markStepping(param.steps[state.stepAt]);
    }

    stepper.param.addEventListener("change", resetSteps);
    stepper.next.addEventListener("click", () => { state.stepAt++; showStep(); });
    stepper.prev.addEventListener("click", () => { state.stepAt--; showStep(); });
    stepper.reset.addEventListener("click", resetSteps);

    return {setup: setupStepper, markCurrentStep};
  }

  return {nodeText, where, sidePanels, sourcePane, detailsPanel, chainStepper};
})();
