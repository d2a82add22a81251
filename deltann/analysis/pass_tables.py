"""Per-setting and per-pass timing tables (the seed's Tables III and IV) from a study
run with ``ablation = true``. Reads the catalogue's pass names (pure data, no TVM).

Convention, written under every table: ``speedup_pct(A→B) = (t_A / t_B − 1) × 100``,
positive means B is faster. Table III compares each named setting against ``basic``
(every graph-level optimisation off; its kernels scheduled, as in every setting but
``unscheduled``). Table IV has, for each catalogue pass X, ``basic+X`` against ``basic``
(what X does alone) and ``extended`` against ``extended-X`` (what X adds to all the
others); for an entry ``basic`` already has (DefaultSchedule), "alone" is the named
setting without it (``unscheduled``) against ``basic``. A build that failed is
``FAILED``, never a number.

Content keys hash each setting's pass list, so a store that ran under an older deltann
whose settings had other passes holds both kinds of rows under one setting name:
:func:`mixed_pass_lists` names those settings, and the report says so.
"""

from __future__ import annotations

from typing import Any

from deltann.compile import catalogue, settings as compile_settings
from deltann.core import runtime_registry as registry

CONVENTION = "speedup_pct(A→B) = (t_A / t_B − 1) × 100; positive: B is faster"
FAILED = "FAILED"
KEYS = ("model", "variant", "device")


def speedup_pct(t_a: float, t_b: float) -> float:
    return (t_a / t_b - 1.0) * 100.0


def _times(builds: Any, timings: Any) -> dict[tuple[str, ...], dict[str, float | str]]:
    """(model, variant, device) -> setting -> median ms, or FAILED."""
    import polars as pl

    tvm = builds.filter(pl.col("runtime").is_in(registry.compiled())) if "runtime" in builds.columns else builds
    medians = timings.group_by([*KEYS, "setting"]).agg(pl.col("median_ns").median())
    joined = tvm.select([*KEYS, "setting", "status"]).join(medians, on=[*KEYS, "setting"], how="left")
    out: dict[tuple[str, ...], dict[str, float | str]] = {}
    for row in joined.iter_rows(named=True):
        cell: float | str = FAILED if row["status"] != "ok" or row["median_ns"] is None else row["median_ns"] / 1e6
        out.setdefault(tuple(row[k] for k in KEYS), {})[row["setting"]] = cell
    return out


def _pct(t_a: float | str | None, t_b: float | str | None) -> float | str | None:
    if t_a is None or t_b is None:
        return None
    if FAILED in (t_a, t_b):
        return FAILED
    return round(speedup_pct(float(t_a), float(t_b)), 1)


def _ms(t: float | str | None) -> float | str | None:
    return round(t, 3) if isinstance(t, float) else t


def _text(value: float | str | None) -> str:
    """A cell as text: empty where there is nothing to compare (no ``basic`` timed)."""
    return "" if value is None else str(value)


def settings_table(builds: Any, timings: Any) -> Any:
    """Table III: median ms of each named setting and its speedup over ``basic``."""
    import polars as pl

    rows = []
    for key, times in sorted(_times(builds, timings).items()):
        for setting in compile_settings.names():
            if setting in times:
                rows.append(dict(zip(KEYS, key, strict=True)) | {
                    "setting": setting, "ms": _text(_ms(times[setting])),
                    "speedup_pct_vs_basic": _text(_pct(times.get("basic"), times[setting])),
                })
    return pl.DataFrame(rows, schema=[*KEYS, "setting", "ms", "speedup_pct_vs_basic"])


def per_pass_table(builds: Any, timings: Any) -> Any:
    """Table IV: one row per catalogue pass (with its Relax counterpart), with ``basic+X``
    and ``extended-X`` times and speedups; "none" passes are listed with empty cells.
    ``builds``/``timings`` are the store's tables (Polars frames) or any frames with
    columns model, variant, device, setting, status / median_ns."""
    import polars as pl

    low, high = compile_settings.ABLATION_BASES
    rows = []
    for key, times in sorted(_times(builds, timings).items()):
        for entry in catalogue.CATALOGUE:
            added, removed = times.get(f"{low}+{entry.name}"), times.get(f"{high}-{entry.name}")
            before = times.get(low)
            if entry.name in compile_settings.ENABLED[low]:
                # already in basic: basic+X is basic, and what X does alone is measured from
                # the named setting without it (DefaultSchedule: unscheduled), if any ran
                added = times.get(low)
                other = compile_settings.without(low, entry.name)
                before = times.get(other) if other is not None else None
            rows.append(dict(zip(KEYS, key, strict=True)) | {
                "pass": entry.name,
                "relax": " + ".join(entry.passes) if entry.mapped else "none",
                f"{low}+X ms": str(_ms(added)) if added is not None else "",
                f"alone_pct ({low}→{low}+X)": str(_pct(before, added)) if added is not None and before is not None
                else "",
                f"{high}-X ms": str(_ms(removed)) if removed is not None else "",
                f"adds_pct ({high}-X→{high})": str(_pct(removed, times.get(high))) if removed is not None else "",
            })
    columns = [*KEYS, "pass", "relax", f"{low}+X ms", f"alone_pct ({low}→{low}+X)", f"{high}-X ms",
               f"adds_pct ({high}-X→{high})"]
    return pl.DataFrame(rows, schema=columns)


def mixed_pass_lists(builds: Any) -> dict[str, int]:
    """Setting name -> number of different pass lists among the store's TVM builds of it,
    for every setting built under more than one (rows of an older deltann, whose settings
    had other passes, beside newer ones: their content keys differ, so neither replaced
    the other, but they share the name in every table)."""
    import polars as pl

    if "passes" not in builds.columns or builds.is_empty():
        return {}
    tvm = builds.filter(pl.col("runtime").is_in(registry.compiled())) if "runtime" in builds.columns else builds
    counts = (tvm.select("setting", pl.col("passes").list.join(",").alias("p")).unique()
              .group_by("setting").agg(pl.len().alias("n")).filter(pl.col("n") > 1).sort("setting"))
    return dict(counts.iter_rows())


def from_store(store: Any) -> tuple[Any, Any]:
    """(Table III, Table IV) from a results store (:class:`deltann.store.Store`)."""
    import polars as pl

    from deltann.analysis.timing import latency_table  # lazy: loads scipy

    builds = store.scan("builds").collect()
    # each configuration's median from its latest timing session (one row per configuration)
    timings = latency_table(store).with_columns((pl.col("median_ms") * 1e6).alias("median_ns"))
    return settings_table(builds, timings), per_pass_table(builds, timings)
