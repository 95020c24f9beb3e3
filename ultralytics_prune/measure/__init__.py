"""What a run measures and shows: MACs and parameters, latency on each backend, latency goals and per-layer latency
tables, the ONNX export check, INT8 quantization, the CSV summary and the plots.

`report` (MACs, the summary line, the ONNX check), `macs_model` (MACs predicted for any widths from one trace),
`latency` / `onnx_timer` (timing in turns on PyTorch, onnxruntime, CUDA, TensorRT), `latency_target` (a probe that
times a model against the unpruned one), `latency_table` (per-layer cost for `latency_aware`), `quantize`, `gamma`
(the |gamma| statistics sparsity training logs and slimming plots), `plots`.
"""
