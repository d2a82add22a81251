"""LaTeX tables (``tabular`` inside ``table``, booktabs rules) from analysis DataFrames, for
papers. Written here rather than through pandas so the report needs no pandas."""

from __future__ import annotations

import math

import polars as pl

_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
            "→": r"$\rightarrow$", "−": "-", "×": r"$\times$", "∩": r"$\cap$", "∪": r"$\cup$"}


def escape(text: str) -> str:
    """Escape LaTeX's special characters (and the few Unicode symbols our headers use)."""
    return "".join(_ESCAPES.get(c, c) for c in text)


def _cell(value: object, floats: int) -> str:
    if value is None:
        return "--"
    if isinstance(value, float):
        return "--" if math.isnan(value) else f"{value:.{floats}f}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return escape(str(value))


def to_latex(df: pl.DataFrame, *, caption: str = "", label: str = "", floats: int = 2) -> str:
    """A booktabs ``table`` of ``df``: text columns left-aligned, numbers right-aligned,
    floats with ``floats`` decimals, missing values as ``--``."""
    align = "".join("r" if dtype.is_numeric() else "l" for dtype in df.dtypes)
    lines = [r"\begin{table}[ht]", r"\centering", rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(escape(c) for c in df.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(_cell(v, floats) for v in row) + r" \\" for row in df.iter_rows()]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(rf"\caption{{{escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"
