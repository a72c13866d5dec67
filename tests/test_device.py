"""The torch engine (``--device``) against the numpy engine, run on torch's CPU device (no GPU in CI;
``TCLI_TEST_DEVICE=cuda`` runs the same tests on a GPU: bench/gpu_check.sh)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, strategies as st

pytest.importorskip("torch")

from tcli.core import device  # noqa: E402
from tcli.core.stream import global_topk, topk_rows  # noqa: E402


DEVICE = os.environ.get("TCLI_TEST_DEVICE", "torch:cpu")


@pytest.fixture()
def torch_cpu():
    device.use(DEVICE)
    yield
    device.use("cpu")


def _factors(seed, m, r, n, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, r)).astype(dtype), rng.standard_normal((r, n)).astype(dtype)


def _per_row(engine, A, B, k, rows, largest, block):
    got = list(engine(A, B, k, rows, largest=largest, block=block))
    ids = np.concatenate([i for i, _, _ in got])
    return ids, np.concatenate([v for _, v, _ in got]), np.concatenate([c for _, _, c in got])


@given(seed=st.integers(0, 2**16), m=st.integers(1, 40), r=st.integers(1, 9), n=st.integers(1, 300),
       k=st.integers(1, 12), largest=st.booleans(), block=st.integers(1, 17))
def test_topk_rows_equals_numpy_and_dense(seed, m, r, n, k, largest, block):
    A, B = _factors(seed, m, r, n)
    device.use(DEVICE)
    try:
        ids, vals, cols = _per_row(device.topk_rows, A, B, k, None, largest, block)
    finally:
        device.use("cpu")
    ref_ids, ref_vals, _ = _per_row(topk_rows, A, B, k, None, largest, block)
    dense = A.astype(np.float64) @ B.astype(np.float64)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(vals, ref_vals, rtol=1e-5, atol=1e-5)
    # the ids point at the values they claim (in an exact float64 recomputation)
    np.testing.assert_allclose(np.take_along_axis(dense[ids], cols, axis=1), vals, rtol=1e-5, atol=1e-5)
    expect = -np.sort(-dense, axis=1)[:, :min(k, n)] if largest else np.sort(dense, axis=1)[:, :min(k, n)]
    np.testing.assert_allclose(vals, expect, rtol=1e-5, atol=1e-5)


@given(seed=st.integers(0, 2**16), m=st.integers(1, 30), r=st.integers(1, 8), n=st.integers(1, 200),
       top=st.integers(1, 50), largest=st.booleans(), block=st.integers(1, 13))
def test_global_topk_equals_numpy(seed, m, r, n, top, largest, block):
    A, B = _factors(seed, m, r, n, np.float64)  # float64: no near-ties that could swap the chosen set
    device.use(DEVICE)
    try:
        rr, cc, vv = device.global_topk(A, B, top, largest=largest, block=block)
    finally:
        device.use("cpu")
    r0, c0, v0 = global_topk(A, B, top, largest=largest, block=block)
    np.testing.assert_array_equal(rr, r0)
    np.testing.assert_array_equal(cc, c0)
    np.testing.assert_allclose(vv, v0, rtol=1e-12)


def test_selected_rows_and_bottom(torch_cpu):
    A, B = _factors(1, 50, 6, 500)
    rows = np.array([3, 49, 0, 7])
    ids, vals, cols = _per_row(device.topk_rows, A, B, 5, rows, False, 3)
    np.testing.assert_array_equal(ids, rows)
    dense = (A[rows].astype(np.float64) @ B)
    np.testing.assert_allclose(vals, np.sort(dense, axis=1)[:, :5], rtol=1e-5, atol=1e-5)


def test_diagonal_rows_on_the_device_equal_numpy(torch_cpu):
    from tcli.core.stream import diagonal_rows

    A, B = np.round(_factors(3, 60, 5, 60, np.float64)[0] * 2), np.round(_factors(4, 60, 5, 60, np.float64)[1] * 2)
    rows, cols = np.array([5, 0, 59, 17]), np.array([2, 0, 3, 17])  # cols: the few-rows factoring's row map
    got = list(device.diagonal_rows(A, B, rows, cols, block=3))
    device.use("cpu")
    ref = list(diagonal_rows(A, B, rows, cols, block=3))
    for i in range(3):
        np.testing.assert_array_equal(np.concatenate([g[i] for g in got]), np.concatenate([r[i] for r in ref]))
    M = A[rows] @ B
    np.testing.assert_array_equal(np.concatenate([g[2] for g in got]),
                                  1 + (M > M[np.arange(4), cols][:, None]).sum(1))


def test_non_finite_product_is_an_input_error(torch_cpu):
    from tcli.errors import InputError

    A, B = _factors(2, 4, 3, 10)
    A[1, 0] = np.inf
    with pytest.raises(InputError, match="non-finite"):
        list(device.topk_rows(A, B, 2))


def test_cuda_without_gpu_is_one_clear_error():
    import torch

    from tcli.errors import InputError

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(InputError, match="no CUDA device"):
        device.use("cuda")
    assert device.use("auto") is None  # auto falls back to numpy
    assert device.active() is None


def test_unknown_device():
    from tcli.errors import InputError

    with pytest.raises(InputError, match="choose cpu, cuda"):
        device.use("tpu")


@pytest.mark.parametrize("args", [("bigram", "--all", "-k", "4"), ("bigram", "--global", "25"),
                                  ("ov", "1.1", "--all", "-k", "3"), ("qk", "0.2", "-t", "#3", "-k", "5"),
                                  ("ov", "--all-heads", "--bottom", "--global", "10"),
                                  ("neurons", "0.3", "-k", "4")])
def test_cli_device_option_gives_the_cpu_answer(args, hf_dirs, attn_only_dir):
    """Every streamed command with --device (torch's CPU device in CI, the GPU where lent) prints the
    numpy path's table: the same ids, values within float32 rounding of another summation order."""
    import numpy as np

    from helpers import invoke, parse

    path = hf_dirs["gpt2"][1] if args[0] == "neurons" else attn_only_dir
    cols, cpu = parse(invoke(args[0], path, *args[1:], "--json").stdout, "json")
    _, dev = parse(invoke(args[0], path, *args[1:], "--json", "--device", DEVICE).stdout, "json")
    assert len(cpu) == len(dev) > 0
    ids = [c for c in cols if c.endswith("_id") or c in ("layer", "head", "rank", "neuron")]
    assert [[r[c] for c in ids] for r in cpu] == [[r[c] for c in ids] for r in dev]
    assert np.allclose([r["value"] for r in cpu], [r["value"] for r in dev], rtol=1e-5, atol=1e-5)


def test_default_device_imports_no_torch(attn_only_dir):
    import subprocess
    import sys

    code = ("import sys; from tcli.cli import main; sys.argv = ['tcli', 'bigram', sys.argv[1], '--global', '2'];"
            "\ntry:\n main()\nexcept SystemExit:\n pass\nprint('torch' in sys.modules, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, str(attn_only_dir)], capture_output=True, text=True)
    assert proc.stderr.strip().splitlines()[-1] == "False", proc.stderr


def test_device_without_the_extra_names_the_install(monkeypatch, attn_only_dir):
    """torch missing (the gpu extra not installed): one line naming pip install 'tcli[gpu]', exit 2."""
    import sys

    from helpers import invoke
    from test_errors import assert_one_line_error

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    for name in ("cuda", "auto", "torch:cpu"):
        assert_one_line_error(invoke("bigram", attn_only_dir, "--device", name, ok=False), "tcli[gpu]")
