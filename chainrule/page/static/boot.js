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
  const root = document.documentElement;
  const stored = window.localStorage && localStorage.getItem("chainrule-theme");
  if (stored) root.dataset.theme = stored;
  document.getElementById("theme-toggle").addEventListener("click", () => {
    const dark = root.dataset.theme ? root.dataset.theme === "dark"
      : window.matchMedia("(prefers-color-scheme: dark)").matches;
    root.dataset.theme = dark ? "light" : "dark";
    try { localStorage.setItem("chainrule-theme", root.dataset.theme); } catch (e) { /* file: */ }
  });
  if (views.length) show(views[0][0]);
})();
