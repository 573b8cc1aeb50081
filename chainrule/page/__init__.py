"""The interactive page: one self-contained HTML file showing a model's computational graph,
forward and backward, tied to its source, with values and training curves.

`graph_document` turns a compiled graph into the page's data (nodes, edges, groups, where each
backward node came from, the chain rule's steps); `values` summarises the arrays a run gave
every node; `report` reads a training log into curves; `html` writes the page. The drawing,
layout and interaction are the browser's (static/*.js); nothing is fetched over a network.
"""
