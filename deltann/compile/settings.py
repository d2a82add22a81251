"""Named TVM Relax optimization settings: each one an explicit list of Relax passes.

This is the one place the settings are defined (the README prints the same lists).
``PRE_LEGALIZE`` passes act on high-level Relax operators; the rest act after
``LegalizeOps`` has turned operators into TIR kernels. Every setting ends with the
target's own lowering tail (``LOWERING``: dataflow lowering, memory planning, VM
codegen), which is not optional and not part of any comparison.

Rough Relay-era correspondence (the seed's opt levels): ``basic`` ~ opt_level 0 (one
kernel per operator, inference simplification only), ``default`` ~ opt_level 2
(constant folding and operator fusion), ``extended`` ~ opt_level 4 (adds batch-norm
folding, CSE, parallel-matmul combining and fast math).
"""

from __future__ import annotations

SETTINGS: dict[str, tuple[str, ...]] = {
    "basic": (
        "DecomposeOpsForInference",
        "LegalizeOps",
        "AnnotateTIROpPattern",
    ),
    "default": (
        "DecomposeOpsForInference",
        "FoldConstant",
        "LegalizeOps",
        "AnnotateTIROpPattern",
        "FoldConstant",
        "FuseOps",
        "FuseTIR",
    ),
    "extended": (
        "DecomposeOpsForInference",
        "FoldBatchnormToConv2D",
        "FoldConstant",
        "EliminateCommonSubexpr",
        "CombineParallelMatmul",
        "FastMathTransform",
        "LegalizeOps",
        "AnnotateTIROpPattern",
        "FoldConstant",
        "FuseOps",
        "FuseTIR",
    ),
}

#: Always applied after the setting's passes: TVM's own per-target lowering.
LOWERING = ("library_dispatch_passes (before)", "dataflow_lower_passes", "finalize_passes")

#: The pseudo-setting of a framework's own runtime (no compiler).
NATIVE = "native"


def names() -> list[str]:
    return list(SETTINGS)
