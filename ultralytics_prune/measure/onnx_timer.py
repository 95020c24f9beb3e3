"""Time one ONNX model alone in this process and print its per-call milliseconds as JSON (run as a script).

    python onnx_timer.py model.onnx IMGSZ THREADS PROVIDER PROVIDER_OPTIONS_JSON ROUNDS WARMUP

`latency.time_alone` starts it once per model and measurement, so no other session's worker threads, weights or
allocator state share the process. It imports only numpy and onnxruntime, to start fast.
"""

from __future__ import annotations

import json
import sys
import time


def main(argv: list[str]) -> None:
    """Load the session, run `WARMUP` untimed calls and `ROUNDS` timed ones on a zero image, print the times."""
    import numpy as np
    import onnxruntime as ort

    file, imgsz, threads, provider, provider_options, rounds, warmup = argv
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(file, options, providers=[(provider, json.loads(provider_options))])
    if session.get_providers()[0] != provider:
        print(json.dumps({"error": f"onnxruntime could not start {provider} (fell back to {session.get_providers()[0]})"}))
        return
    feed = {session.get_inputs()[0].name: np.zeros((1, 3, int(imgsz), int(imgsz)), dtype=np.float32)}
    for _ in range(int(warmup)):
        session.run(None, feed)
    times = []
    for _ in range(int(rounds)):
        t = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t) * 1000)
    print(json.dumps({"ms": times}))


if __name__ == "__main__":
    main(sys.argv[1:])
