"""Which channels a cut removes and how, apart from any run.

The dependency graph of a YOLO model and its prunable groups (`graph`); how many channels each group keeps (`widths`,
the arithmetic; `width_policy`, the interchangeable policies; `sensitivity`, the per-layer scan); what is important
and how it is removed (`group_pruner`); the repairs after a cut (`calibrate`: gradients and BatchNorm statistics;
`reconstruct`: least-squares rebuilding of the layers a cut feeds less); Network Slimming's selection and folding
(`slim_select`, `fold`); and attention heads (`attention`).
"""
