const ChainruleReport = {render(root, training) { root.textContent = "training"; }};
