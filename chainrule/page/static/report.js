// The training view: one chart per quantity and scale, drawn as inline SVG (no plotting
// library: the page must open offline, and line charts need little). Every data point of a
// series is one "x,y" pair of its polyline, however many steps there are.
const ChainruleReport = (function () {
  const WIDTH = 480, HEIGHT = 270;
  const MARGIN = {left: 72, right: 14, top: 12, bottom: 40};
  const LABELS = {train: "train", val: "validation", lr: "learning rate",
                  compute: "compute", communication: "communication"};

  // Round tick values covering [low, high]: steps of 1, 2 or 5 times a power of ten.
  function linearTicks(low, high, count) {
    if (low === high) return [low];
    const rough = (high - low) / count;
    const power = Math.pow(10, Math.floor(Math.log10(rough)));
    const step = power * ([1, 2, 5, 10].find((m) => m * power >= rough) || 10);
    const ticks = [];
    // Multiples of the step, not a running sum: whole-number ticks stay whole.
    for (let i = Math.ceil(low / step - 1e-9); i * step <= high + step * 1e-9; i++) {
      ticks.push(i * step);
    }
    return ticks;
  }

  // A tick's text with as many digits as the ticks' spacing needs, and no more; an axis of
  // very large or very small numbers writes all its ticks with exponents.
  function tickText(t, spacing, exponents) {
    if (t === 0) return "0";
    if (exponents) {
      const digits = Math.floor(Math.log10(Math.abs(t))) - Math.floor(Math.log10(spacing));
      return t.toExponential(Math.min(Math.max(digits, 0), 6)).replace("e+", "e");
    }
    return t.toFixed(Math.max(0, Math.ceil(-Math.log10(spacing) - 1e-9)));
  }

  // Powers of ten, and their doubles and fives when the axis spans few decades.
  function logTicks(low, high) {
    const few = Math.log10(high / low) < 3;
    const ticks = [];
    for (let e = Math.floor(Math.log10(low)); e <= Math.ceil(Math.log10(high)); e++) {
      for (const m of few ? [1, 2, 5] : [1]) {
        const t = m * Math.pow(10, e);
        if (t >= low * (1 - 1e-9) && t <= high * (1 + 1e-9)) ticks.push(t);
      }
    }
    return ticks.length >= 2 ? ticks : linearTicks(low, high, 4);
  }

  // [low, high] widened a little, so that a flat series sits mid-chart.
  function padded([low, high], log) {
    if (log) return low === high ? [low / 2, high * 2] : [low, high];
    if (low === high) { const pad = Math.abs(low) * 0.1 || 1; return [low - pad, high + pad]; }
    const pad = (high - low) * 0.05;
    return [low - pad, high + pad];
  }

  function minMax(values) {
    let low = Infinity, high = -Infinity;
    for (const v of values) { if (v < low) low = v; if (v > high) high = v; }
    return [low, high];
  }

  function scales(chart, log) {
    const xs = [], ys = [];
    for (const s of chart.series) {
      for (const x of s.x) xs.push(x);
      for (const y of s.y) ys.push(y);
    }
    const [xLow, xHigh] = minMax(xs);
    const x0 = xLow === xHigh ? xLow - 1 : xLow, x1 = xLow === xHigh ? xHigh + 1 : xHigh;
    const [yLow, yHigh] = padded(minMax(ys), log);
    const left = MARGIN.left, right = WIDTH - MARGIN.right;
    const top = MARGIN.top, bottom = HEIGHT - MARGIN.bottom;
    const along = log ? Math.log10 : (y) => y;
    const [from, to] = [along(yLow), along(yHigh)];
    const toY = (y) => bottom - (along(y) - from) / (to - from) * (bottom - top);
    return {
      x: (x) => left + (x - x0) / (x1 - x0) * (right - left), y: toY,
      // Every epoch of a short run; about five ticks otherwise. Steps and epochs are whole.
      xTicks: linearTicks(x0, x1, chart.scale === "epoch" && x1 - x0 <= 10 ? x1 - x0 : 5)
        .filter(Number.isInteger),
      yTicks: log ? logTicks(yLow, yHigh) : linearTicks(yLow, yHigh, 5),
      left, right, top, bottom,
    };
  }

  function points(series, scale) {
    return series.x.map((x, i) => `${scale.x(x).toFixed(2)},${scale.y(series.y[i]).toFixed(2)}`)
      .join(" ");
  }

  function drawAxes(svg, chart, scale, log) {
    const axes = Chainrule.svg("g", {class: "axes"}, svg);
    const ticks = scale.yTicks;
    const largest = Math.max(...ticks.map(Math.abs));
    const exponents = largest >= 1e5 || largest < 1e-2;
    for (const t of ticks) {
      const y = scale.y(t).toFixed(2);
      // On a log scale each tick is its own spacing: 0.01 needs two decimals, 10 none.
      const spacing = log ? t : (ticks.length > 1 ? ticks[1] - ticks[0] : Math.abs(t) || 1);
      Chainrule.svg("line", {class: "grid", x1: scale.left, x2: scale.right, y1: y, y2: y}, axes);
      Chainrule.svg("text", {class: "tick y-tick", x: scale.left - 6, y, dy: "0.32em",
                             "text-anchor": "end"}, axes)
        .textContent = tickText(t, spacing, exponents);
    }
    for (const t of scale.xTicks) {
      const x = scale.x(t).toFixed(2);
      Chainrule.svg("line", {class: "tick-mark", x1: x, x2: x, y1: scale.bottom,
                             y2: scale.bottom + 4}, axes);
      Chainrule.svg("text", {class: "tick x-tick", x, y: scale.bottom + 16,
                             "text-anchor": "middle"}, axes).textContent = String(t);
    }
    Chainrule.svg("line", {class: "axis", x1: scale.left, x2: scale.right, y1: scale.bottom,
                           y2: scale.bottom}, axes);
    Chainrule.svg("line", {class: "axis", x1: scale.left, x2: scale.left, y1: scale.top,
                           y2: scale.bottom}, axes);
    Chainrule.svg("text", {class: "axis-label", x: (scale.left + scale.right) / 2,
                           y: HEIGHT - 6, "text-anchor": "middle"}, axes)
      .textContent = chart.x_label;
    Chainrule.svg("text", {class: "axis-label", x: 10, y: (scale.top + scale.bottom) / 2,
                           "text-anchor": "middle",
                           transform: `rotate(-90 10 ${(scale.top + scale.bottom) / 2})`},
                  axes).textContent = chart.y_label;
  }

  // The index of the entry of `xs` nearest `x` (a resumed run's steps need not be sorted).
  function nearest(xs, x) {
    let best = 0;
    for (let i = 1; i < xs.length; i++) {
      if (Math.abs(xs[i] - x) < Math.abs(xs[best] - x)) best = i;
    }
    return best;
  }

  function drawPlot(svg, chart, log, readout) {
    svg.replaceChildren();
    const scale = scales(chart, log);
    drawAxes(svg, chart, scale, log);
    for (const s of chart.series) {
      Chainrule.svg("polyline", {class: "series series-" + s.name, "data-series": s.name,
                                 points: points(s, scale), fill: "none"}, svg);
    }
    const cursor = Chainrule.svg("g", {class: "cursor", visibility: "hidden"}, svg);
    const rule = Chainrule.svg("line", {class: "cursor-line", y1: scale.top, y2: scale.bottom},
                               cursor);
    const dots = chart.series.map((s) => Chainrule.svg(
      "circle", {class: "cursor-dot series-" + s.name, r: 3.5}, cursor));
    const hover = Chainrule.svg("rect", {class: "hover-area", x: scale.left, y: scale.top,
                                         width: scale.right - scale.left,
                                         height: scale.bottom - scale.top}, svg);
    hover.addEventListener("mousemove", (event) => {
      const box = svg.getBoundingClientRect();
      const px = (event.clientX - box.left) / box.width * WIDTH;
      const parts = [];
      let lineX = null;
      chart.series.forEach((s, k) => {
        const xs = s.x.map(scale.x);
        const i = nearest(xs, px);
        dots[k].setAttribute("cx", xs[i].toFixed(2));
        dots[k].setAttribute("cy", scale.y(s.y[i]).toFixed(2));
        if (lineX === null) { lineX = xs[i]; parts.push(`${chart.x_label} ${s.x[i]}`); }
        parts.push(`${LABELS[s.name] || s.name} ${Chainrule.number(s.y[i])}`);
      });
      rule.setAttribute("x1", lineX.toFixed(2));
      rule.setAttribute("x2", lineX.toFixed(2));
      cursor.setAttribute("visibility", "visible");
      readout.textContent = parts.join("  ·  ");
    });
    hover.addEventListener("mouseleave", () => {
      cursor.setAttribute("visibility", "hidden");
      readout.textContent = "";
    });
  }

  function legend(figure, chart) {
    const list = Chainrule.html("ul", {class: "legend"}, figure);
    for (const s of chart.series) {
      const item = Chainrule.html("li", {}, list);
      Chainrule.html("span", {class: "swatch series-" + s.name, "aria-hidden": "true"}, item);
      const count = `${s.x.length} point${s.x.length === 1 ? "" : "s"}`;
      item.append(`${LABELS[s.name] || s.name} (${count})`);
    }
  }

  // The chart's numbers as a table, for screen readers and for reading exact values.
  function table(figure, chart) {
    const details = Chainrule.html("details", {class: "chart-table"}, figure);
    Chainrule.html("summary", {}, details, "Table of values");
    const tbl = Chainrule.html("table", {}, details);
    Chainrule.html("caption", {}, tbl, chart.title);
    const head = Chainrule.html("tr", {}, Chainrule.html("thead", {}, tbl));
    Chainrule.html("th", {scope: "col"}, head, chart.x_label);
    for (const s of chart.series) {
      Chainrule.html("th", {scope: "col"}, head, LABELS[s.name] || s.name);
    }
    const rows = new Map();
    chart.series.forEach((s, k) => s.x.forEach((x, i) => {
      if (!rows.has(x)) rows.set(x, new Array(chart.series.length).fill(null));
      rows.get(x)[k] = s.y[i];
    }));
    const body = Chainrule.html("tbody", {}, tbl);
    for (const x of [...rows.keys()].sort((a, b) => a - b)) {
      const row = Chainrule.html("tr", {}, body);
      Chainrule.html("th", {scope: "row"}, row, String(x));
      for (const y of rows.get(x)) Chainrule.html("td", {}, row, Chainrule.number(y));
    }
  }

  function drawChart(grid, chart, objective) {
    const figure = Chainrule.html("figure", {class: "chart", "data-metric": chart.metric,
                                             "data-scale": chart.scale}, grid);
    const caption = Chainrule.html("figcaption", {}, figure, chart.title);
    const svg = Chainrule.svg("svg", {viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img",
                                      "aria-label": describe(chart)}, figure);
    const readout = Chainrule.html("p", {class: "readout", "aria-hidden": "true"}, figure);
    const positive = chart.series.every((s) => s.y.every((y) => y > 0));
    if (positive && chart.metric === objective) {
      const label = Chainrule.html("label", {class: "log-toggle"}, caption);
      const box = Chainrule.html("input", {type: "checkbox"}, label);
      label.append(" log scale");
      box.addEventListener("change", () => drawPlot(svg, chart, box.checked, readout));
    }
    drawPlot(svg, chart, false, readout);
    legend(figure, chart);
    table(figure, chart);
  }

  // What a screen reader says for the picture: each series' extent and its last value.
  function describe(chart) {
    const parts = chart.series.map((s) => {
      const last = s.y[s.y.length - 1];
      const where = `${chart.x_label} ${s.x[s.x.length - 1]}`;
      const name = LABELS[s.name] || s.name;
      return `${name}: ${s.x.length} points, last ${Chainrule.number(last)} at ${where}`;
    });
    return `${chart.title}. ${parts.join("; ")}.`;
  }

  function render(root, training) {
    root.replaceChildren();
    const summary = Chainrule.html("p", {class: "report-summary"}, root);
    summary.textContent = `${training.epochs} epoch${training.epochs === 1 ? "" : "s"}` +
      (training.steps ? `, ${training.steps} steps` : "") +
      (training.objective ? `; objective ${training.objective}` : "");
    if (training.notes && training.notes.length) {
      const notes = Chainrule.html("ul", {class: "report-notes"}, root);
      for (const note of training.notes) Chainrule.html("li", {}, notes, note);
    }
    const grid = Chainrule.html("div", {class: "chart-grid"}, root);
    for (const chart of training.charts) drawChart(grid, chart, training.objective);
  }

  return {render};
})();
