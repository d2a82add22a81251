"""The pass catalogue: complete, buildable, and every mapped pass observable on a small
model (real TVM passes, no mocks)."""

from __future__ import annotations

from typing import Any

import pytest

from deltann.commands.passes import format_passes, passes_table
from deltann.compile import catalogue
from deltann.compile import settings as compile_settings

SEED = {
    "OpFusion", "FoldConstant", "FoldScaleAxis", "AlterOpLayout", "CanonicalizeOps", "CanonicalizeCast",
    "EliminateCommonSubexpr", "CombineParallelConv2D", "CombineParallelDense", "CombineParallelBatchMatmul",
    "FastMath",
}


def test_catalogue_covers_the_eleven_seed_passes() -> None:
    assert {e.name for e in catalogue.CATALOGUE if e.seed} == SEED == set(catalogue.SEED_NAMES)
    for entry in catalogue.CATALOGUE:
        if not entry.mapped:  # "none" must say why
            assert entry.note.startswith("none: ") and len(entry.note) > 30, entry.name
    unmapped = {e.name for e in catalogue.CATALOGUE if not e.mapped}
    assert unmapped == {"CanonicalizeOps", "CanonicalizeCast", "CombineParallelConv2D"}


def test_every_named_pass_exists_in_tvm() -> None:
    from deltann.compile.pipeline import make_pass

    for entry in catalogue.CATALOGUE:
        for name in entry.passes:
            assert make_pass(name) is not None, name
    assert make_pass("DefaultCpuSchedule") is not None  # the name pass lists stored before DefaultSchedule carry
    with pytest.raises(ValueError, match="no Relax pass"):
        make_pass("NoSuchPass")


def test_settings_are_composed_from_the_catalogue() -> None:
    assert compile_settings.SETTINGS["basic"] == (
        "DecomposeOpsForInference", "LegalizeOps", "AnnotateTIROpPattern", "DefaultSchedule",
    )
    assert compile_settings.SETTINGS["default"] == (
        "DecomposeOpsForInference", "FoldConstant", "LegalizeOps", "AnnotateTIROpPattern",
        "FoldConstant", "FuseOps", "FuseTIR", "DefaultSchedule",
    )
    assert compile_settings.SETTINGS["extended"] == (
        "FoldBatchnormToConv2D", "FoldConstant", "DecomposeOpsForInference", "ClipToMinMax", "FoldExplicitPadding",
        "ConvertLayout", "PadConvolutionWidths",
        "FoldConstant", "EliminateCommonSubexpr", "CombineParallelMatmul", "FastMathTransform", "LegalizeOps",
        "AnnotateTIROpPattern", "FoldConstant", "FuseOps", "FuseTIR", "DefaultSchedule",
    )
    assert compile_settings.SETTINGS["unscheduled"] == ("DecomposeOpsForInference", "LegalizeOps",
                                                        "AnnotateTIROpPattern")
    # FoldBatchnormToConv2D directly followed by ConvertLayout segfaults in TVM 0.27: never composed so
    for enabled in (compile_settings.enabled_of(s) for s in compile_settings.ablation_names()):
        passes = catalogue.compose(enabled)
        for a, b in zip(passes, passes[1:], strict=False):
            assert (a, b) != ("FoldBatchnormToConv2D", "ConvertLayout")


def test_passes_table_rows_and_text() -> None:
    rows = passes_table()
    assert [r["pass"] for r in rows] == catalogue.names()
    by = {r["pass"]: r for r in rows}
    assert by["CombineParallelConv2D"]["relax"] == "none"
    assert by["OpFusion"]["relax"] == "FuseOps + FuseTIR" and by["OpFusion"]["in"] == "default,extended"
    assert by["DefaultSchedule"]["in"] == "basic,default,extended"
    assert by["FoldConstant"]["relax"] == "FoldConstant / FoldConstant" and by["FoldConstant"]["phase"] == "pre+post"
    text = format_passes()
    for name, passes in compile_settings.SETTINGS.items():
        assert f"{name}: {', '.join(passes)}" in text


def _apply(mod: Any, passes: tuple[str, ...]) -> Any:
    import tvm

    from deltann.compile.pipeline import make_pass

    with tvm.target.Target("llvm"):
        return tvm.transform.Sequential([make_pass(p) for p in passes])(mod)


def _prim_funcs(mod: Any) -> dict[str, Any]:
    import tvm

    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


@pytest.mark.parametrize("entry", catalogue.names(mapped_only=True))
def test_each_mapped_pass_changes_the_ir(entry: str, pass_zoo_mod: Any, pass_zoo_params_mod: Any) -> None:
    """``basic+X`` differs from ``basic``; an entry basic has differs from basic without it."""
    import tvm

    from deltann.compile import schedules

    base = compile_settings.ENABLED["basic"] - {entry}
    if entry in ("CombineParallelDense", "CombineParallelBatchMatmul"):
        # documented no-op on deltann's imports (weights bound as constants) ...
        tvm.ir.assert_structural_equal(_apply(pass_zoo_mod, catalogue.compose(base)),
                                       _apply(pass_zoo_mod, catalogue.compose(base | {entry})))
        assert "no-op" in catalogue.get(entry).note
        pass_zoo_mod = pass_zoo_params_mod  # ... and observable where weights are parameters
    before = _apply(pass_zoo_mod, catalogue.compose(base))
    after = _apply(pass_zoo_mod, catalogue.compose(base | {entry}))
    with pytest.raises(ValueError):  # tvm.ir has only the asserting form in 0.27
        tvm.ir.assert_structural_equal(before, after)
    text_before, text_after = before.script(), after.script()
    funcs_before, funcs_after = _prim_funcs(before), _prim_funcs(after)
    if entry == "OpFusion":
        assert len(funcs_after) < len(funcs_before)  # fewer kernels
    elif entry == "FastMath":
        assert "fast_tanh" in text_after and "fast_tanh" not in text_before
    elif entry == "AlterOpLayout":
        assert "conv2d_nhwc" in text_after and "conv2d_nhwc" not in text_before
    elif entry == "DefaultSchedule":
        assert schedules.unscheduled_kernels(after) == [] and schedules.unscheduled_kernels(before)
        assert "T.parallel" in text_after and "T.vectorized" in text_after
    elif entry in ("CombineParallelDense", "CombineParallelBatchMatmul"):
        assert text_after.count("call_tir(cls.matmul") < text_before.count("call_tir(cls.matmul")
    elif entry == "EliminateCommonSubexpr":
        assert text_after.count("call_tir(cls.tir_tanh") < text_before.count("call_tir(cls.tir_tanh")
    elif entry == "FoldScaleAxis":  # the decomposed batch-norm (with its sqrt) is gone into the weights
        assert "tir_sqrt" in funcs_before and "tir_sqrt" not in funcs_after
    elif entry == "SimplifyInference":
        assert "batch_norm" in funcs_before and "batch_norm" not in funcs_after
    elif entry == "FoldConstant":  # the weight computed in forward (scale * 2) became a constant
        assert len(funcs_after) < len(funcs_before)
