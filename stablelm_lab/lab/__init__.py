"""The lab: what a learner sees. Figures, teaching diagrams and the widgets that redraw them.

viz.py (pure functions from arrays to plotly figures, and the renderer that stores a PNG beside each),
diagrams.py (the file layout, bit maps, mix grids, a block's data flow) and widgets.py (explorers: controls
that redraw one figure in place).
"""
