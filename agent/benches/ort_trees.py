#!/usr/bin/env python3
"""onnxruntime's side of the tree-ensemble benchmark (agent/benches/trees.rs calls this).

For each model stem: one InferenceSession on the CPU provider with one intra-op and one
inter-op thread, fed the same held-out rows the Rust side uses (from
`<stem>.reference.json`), timed at each batch size for `--seconds`. Also times a trivial
Identity model at batch 1: that is the cost of one `InferenceSession.run` call from Python,
which the batch-1 figures include.

Prints one JSON object on stdout:
  {"onnxruntime": "1.31.1", "call_floor_us": 4.9,
   "models": {"<stem>": {"1": {"rows_per_s": ..., "p50_us": ...}, "64": {...}}}}
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper


def session(model_bytes_or_path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model_bytes_or_path, so, providers=["CPUExecutionProvider"])


def batches(rows, batch):
    """Distinct batches walking through the held-out rows (wrapping around)."""
    n = len(rows)
    out = []
    for start in range(0, max(n, batch), batch):
        idx = [(start + i) % n for i in range(batch)]
        out.append(np.ascontiguousarray(rows[idx]))
    return out


def measure(sess, name, feeds, seconds):
    for x in feeds[:50]:
        sess.run(None, {name: x})
    times = []
    rows = 0
    deadline = time.perf_counter() + seconds
    i = 0
    while True:
        x = feeds[i % len(feeds)]
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        t1 = time.perf_counter()
        times.append(t1 - t0)
        rows += x.shape[0]
        i += 1
        if t1 >= deadline:
            break
    times.sort()
    total = sum(times)
    return {"rows_per_s": rows / total, "p50_us": times[len(times) // 2] * 1e6, "calls": len(times)}


def call_floor(seconds):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "floor",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 30])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 30])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    sess = session(model.SerializeToString())
    x = np.zeros((1, 30), dtype=np.float32)
    return measure(sess, "x", [x], seconds)["p50_us"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--batch", default="1,64")
    ap.add_argument("stems", nargs="+")
    args = ap.parse_args()
    sizes = [int(b) for b in args.batch.split(",")]
    result = {"onnxruntime": ort.__version__, "call_floor_us": call_floor(args.seconds / 2), "models": {}}
    for stem in args.stems:
        ref = json.load(open(os.path.join(args.models_dir, f"{stem}.reference.json")))
        inp = ref["inputs"][0]
        rows = np.array(inp["data"], dtype=np.float64).astype(np.float32).reshape(inp["shape"])
        sess = session(os.path.join(args.models_dir, f"{stem}.onnx"))
        result["models"][stem] = {
            str(b): measure(sess, inp["name"], batches(rows, b), args.seconds) for b in sizes
        }
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
