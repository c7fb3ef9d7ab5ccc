"""The op schemas' one source (inpaint_fast/ops/schemas.inc) and the Triton backend's
independence from the C++ build."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import inpaint_fast  # noqa: F401  (defines the ops)
from inpaint_fast._extension import extension_loaded
from inpaint_fast.ops._registration import SCHEMAS, read_schemas

OPS = ("short_long_attention", "fusion_block")


def test_schema_file_declares_every_op_pair():
    assert sorted(SCHEMAS) == sorted(f"{op}_{s}" for op in OPS for s in ("fwd", "bwd")), sorted(SCHEMAS)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_triton_op_has_the_compiled_ops_schema(name):
    """Both op families are defined from the same text, so they differ only in their names."""
    triton_schema = getattr(torch.ops.inpaint_fast, f"triton_{name}").default._schema
    assert str(triton_schema) == f"inpaint_fast::triton_{name}{SCHEMAS[name]}", str(triton_schema)
    if not extension_loaded():
        pytest.skip("the compiled extension is not built")
    compiled = getattr(torch.ops.inpaint_fast, name).default._schema
    assert str(compiled).replace("inpaint_fast::", "inpaint_fast::triton_", 1) == str(triton_schema), (
        str(compiled), str(triton_schema))  # fmt: skip


def test_schema_file_pieces_are_joined_and_comments_skipped(tmp_path):
    path = tmp_path / "schemas.inc"
    path.write_text('// INPAINT_FAST_OP(commented_out, "(Tensor a) -> Tensor")\n'
                    'INPAINT_FAST_OP(op_fwd,\n    "(Tensor a, "  // the first argument\n    "float s) -> Tensor")\n')  # fmt: skip
    assert read_schemas(path) == {"op_fwd": "(Tensor a, float s) -> Tensor"}


def test_schema_file_without_entries_is_an_error(tmp_path):
    path = tmp_path / "schemas.inc"
    path.write_text("// nothing here\n")
    with pytest.raises(RuntimeError, match="no INPAINT_FAST_OP"):
        read_schemas(path)


# A process in which `inpaint_fast._C` cannot be imported (a failed or missing C++ build).
_WITHOUT_EXTENSION = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoExtension(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "inpaint_fast._C":
                raise ImportError("simulated: the C++ build failed")
            return None

    sys.meta_path.insert(0, NoExtension())
    import torch
    import inpaint_fast
    from inpaint_fast.backends import registry

    assert inpaint_fast.available_backends("cpu") == ["reference", "triton"], inpaint_fast.available_backends("cpu")
    why = registry("short_long_attention").why_not("cpu", torch.device("cpu"), torch.float32)
    assert "simulated: the C++ build failed" in why, why
    torch.manual_seed(0)
    q, x, pre = torch.randn(2, 3, 4, 5), torch.randn(2, 6, 4, 5), torch.randn(2, 2, 4, 5)
    mask, gamma, alpha = torch.rand(2, 1, 4, 5), torch.tensor([0.7]), torch.tensor([-0.4])
    args = (q.double(), x.double(), gamma.double(), pre.double(), mask.double(), alpha.double())
    y, cf = inpaint_fast.short_long_attention(*args, backend="triton")
    y_ref, cf_ref = inpaint_fast.short_long_attention(*args, backend="reference")
    err = max((y - y_ref).abs().max().item(), (cf - cf_ref).abs().max().item())
    assert err < 1e-12, err
    print("ok", err)
    """
)


def test_triton_backend_works_without_the_compiled_extension():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-c", _WITHOUT_EXTENSION], capture_output=True, text=True, env=env,
                         timeout=300)  # fmt: skip
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stdout + run.stderr
