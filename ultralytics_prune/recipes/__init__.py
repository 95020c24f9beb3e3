"""The pruning loop and the recipes that plug into it.

`loop.PruneRun` is written once: load, measure, then per step remove -> re-estimate BatchNorm -> validate -> fine-tune
-> validate -> record, with resume, the stop rule, saving and the ONNX check. A recipe overrides the seam `remove`
(what one step takes away): `depgraph.DepGraphPruner` (`yolo prune`, channels on the dependency graph),
`slim.NetworkSlimmer` (`yolo slim`, BatchNorm gammas) and `unstructured.UnstructuredPruner` (weight sparsity). What
a fine-tune adds lives beside them: sparse epochs before a cut (`group_sparsity`), response distillation
(`response_distill`), held zeros (`weight_sparsity`) and the state a killed fine-tune resumes from
(`finetune_state`).
"""
