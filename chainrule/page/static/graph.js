const ChainruleGraph = {render(root, graph, source) { root.textContent = "graph: " + graph.nodes.length + " nodes"; }};
