"""Compatibility check: the official Triton HTTP client against outpost-agent.

This proves that NVIDIA's `tritonclient[http]` package, used unchanged and with
its defaults, can talk to outpost-agent over the KServe Open Inference Protocol
(V2), including Triton's binary tensor data extension: health, server and model
metadata, inference with binary and with pure-JSON tensors, request ids, and the
error raised for a bad input shape.

Usage:  python triton_http_client.py URL MODELS_DIR
  URL         host:port without scheme, e.g. 127.0.0.1:18555
  MODELS_DIR  folder holding <stem>.reference.json (tests/fixtures/models)

The agent must serve `bc` = breast_cancer-1.0.0.onnx and
`digits` = digits_mlp-1.0.0.onnx. Pinned deps: requirements.txt beside this file.
Exits non-zero with a message on the first failed check.
"""

import json
import sys
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}")


def load_reference(models_dir, stem):
    ref = json.loads((Path(models_dir) / f"{stem}.reference.json").read_text())
    def arr(t):
        dtype = {"FP32": np.float32, "INT64": np.int64}[t["datatype"]]
        return np.asarray(t["data"], dtype=dtype).reshape(t["shape"])
    return arr(ref["inputs"][0]), {t["name"]: arr(t) for t in ref["outputs"]}


def infer_and_compare(client, model, x, expected, binary, **kwargs):
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    if binary is None:  # client defaults: binary_data=True for input and outputs
        inp.set_data_from_numpy(x)
        outs = [httpclient.InferRequestedOutput(n) for n in expected]
    else:
        inp.set_data_from_numpy(x, binary_data=binary)
        outs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in expected]
    result = client.infer(model, [inp], outputs=outs, **kwargs)
    label, probs = result.as_numpy("label"), result.as_numpy("probabilities")
    check(label is not None and probs is not None, f"{model}: both outputs returned")
    check(label.dtype == np.int64 and label.shape == expected["label"].shape,
          f"{model}: label INT64 {list(label.shape)}")
    check(np.array_equal(label, expected["label"]), f"{model}: labels match reference exactly")
    check(probs.dtype == np.float32 and probs.shape == expected["probabilities"].shape,
          f"{model}: probabilities FP32 {list(probs.shape)}")
    check(np.allclose(probs, expected["probabilities"], rtol=1e-5, atol=1e-5),
          f"{model}: probabilities within 1e-5 of reference "
          f"(max abs diff {np.max(np.abs(probs - expected['probabilities'])):.2e})")
    return result


def main(url, models_dir):
    client = httpclient.InferenceServerClient(url)

    check(client.is_server_live(), "is_server_live()")
    check(client.is_server_ready(), "is_server_ready()")
    check(client.is_model_ready("bc"), 'is_model_ready("bc")')

    meta = client.get_server_metadata()
    check(meta.get("name") == "outpost-agent", f"server name is outpost-agent ({meta.get('name')!r})")
    check("binary_tensor_data" in meta.get("extensions", []),
          f"extensions include binary_tensor_data ({meta.get('extensions')})")

    mm = client.get_model_metadata("bc")
    io = {t["name"]: (t["datatype"], t["shape"]) for t in mm["inputs"] + mm["outputs"]}
    want = {"input": ("FP32", [-1, 30]), "label": ("INT64", [-1]),
            "probabilities": ("FP32", [-1, 2])}
    check(io == want, f"bc metadata: {io}")

    x, expected = load_reference(models_dir, "breast_cancer-1.0.0")
    print(f"-- bc, {x.shape[0]} rows, binary_data defaults (True)")
    infer_and_compare(client, "bc", x, expected, binary=None)
    print(f"-- bc, {x.shape[0]} rows, binary_data=False (pure JSON)")
    infer_and_compare(client, "bc", x, expected, binary=False)

    dx, dexpected = load_reference(models_dir, "digits_mlp-1.0.0")
    print(f"-- digits, {dx.shape[0]} rows, request_id='r-1'")
    resp = infer_and_compare(client, "digits", dx, dexpected, binary=None,
                             request_id="r-1").get_response()
    check(resp.get("id") == "r-1", f"response id is r-1 ({resp.get('id')!r})")
    check(resp.get("model_version") == "1.0.0",
          f"model_version is 1.0.0 ({resp.get('model_version')!r})")

    print("-- bc, wrong shape [1,29]")
    bad = httpclient.InferInput("input", [1, 29], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 29), dtype=np.float32))
    try:
        client.infer("bc", [bad])
    except InferenceServerException as e:
        check("dimension 1" in str(e), f"InferenceServerException mentions 'dimension 1': {e}")
    else:
        raise AssertionError("infer with shape [1,29] did not raise InferenceServerException")

    client.close()
    print("triton client: all checks passed")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    try:
        main(sys.argv[1], sys.argv[2])
    except Exception as e:  # noqa: BLE001 - any failure is a failed check
        sys.exit(f"triton client: FAILED: {type(e).__name__}: {e}")
