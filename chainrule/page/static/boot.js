// Reads the page's data and shows each view it has, as a tab.
(function () {
  const data = JSON.parse(document.getElementById("chainrule-data").textContent);
  const views = [];
  if (data.graph) views.push(["graph-view", "Graph", () => ChainruleGraph.render(
    document.getElementById("graph-view"), data.graph, data.source)]);
  if (data.training) views.push(["training-view", "Training", () => ChainruleReport.render(
    document.getElementById("training-view"), data.training)]);
  const tabs = document.getElementById("tabs");
  const shown = new Set();
  function show(id) {
    for (const [other] of views) {
      document.getElementById(other).hidden = other !== id;
      const tab = document.getElementById("tab-" + other);
      tab.setAttribute("aria-selected", String(other === id));
      tab.tabIndex = other === id ? 0 : -1;
    }
    const view = views.find(([other]) => other === id);
    if (!shown.has(id)) { shown.add(id); view[2](); }
  }
  for (const [id, label] of views) {
    const tab = Chainrule.html("button", {id: "tab-" + id, role: "tab", type: "button",
                                          "aria-controls": id}, tabs, label);
    tab.addEventListener("click", () => show(id));
  }
  // Left and right arrows move between the tabs, as a tab list's keys do.
  tabs.addEventListener("keydown", event => {
    const step = {ArrowLeft: -1, ArrowRight: 1}[event.key];
    const at = views.findIndex(([id]) => document.getElementById(id).hidden === false);
    if (!step || at < 0) return;
    const [id] = views[(at + step + views.length) % views.length];
    show(id);
    document.getElementById("tab-" + id).focus();
  });
  tabs.hidden = views.length < 2;
  // The theme: the one chosen on this page before, else the system's, followed as it changes
  // until one is chosen. (The dark palette is written once, in page.css, for data-theme=dark.)
  const root = document.documentElement;
  const system = window.matchMedia("(prefers-color-scheme: dark)");
  let chosen = null;
  try { chosen = localStorage.getItem("chainrule-theme"); } catch (e) { /* storage refused */ }
  const applyTheme = () => { root.dataset.theme = chosen || (system.matches ? "dark" : "light"); };
  applyTheme();
  system.addEventListener("change", applyTheme);
  document.getElementById("theme-toggle").addEventListener("click", () => {
    chosen = root.dataset.theme === "dark" ? "light" : "dark";
    applyTheme();
    try { localStorage.setItem("chainrule-theme", chosen); } catch (e) { /* storage refused */ }
  });
  if (views.length) show(views[0][0]);
})();
