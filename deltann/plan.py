"""Plan: expand a study into units of work, each with a content key.

A unit is one (model variant, runtime, setting, device kind) over the study's inputs.
Its key hashes everything that determines its result — model and weights, conversion
chain and tool versions, runtime and compiler versions, passes, target, device kind and
the exact input tensors — and nothing else (not the study's name, not the order of its
lists). A unit whose key is in the store is not run again.

Where the driver knows them (issue 15, :mod:`deltann.core.identity`), the key also holds
the lab running the study and the platform of the kind's boards: the target as the boards
resolve it (``mcpu = "native"`` is their CPU) and their CPU. A kind whose live boards
differ in platform gets one unit per platform, each run only by boards of its platform.

Timing is planned apart (:class:`TimingJob`): the units of one model on one device kind
are timed together, interleaved, in one session on one board, so every time change
compares configurations measured side by side. A session's rows name it and its protocol;
a group of units is timed again only when no session in the store covers all of them
with the study's protocol. Pure: no framework is imported, nothing is executed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
import uuid
from dataclasses import asdict, dataclass, replace
from typing import Any

from deltann import SCHEMA_VERSION, __version__, convert, zoo
from deltann.compile import settings as compile_settings
from deltann.core import runtime_registry as registry
from deltann.core.versions import dist_version
from deltann.convert.chain_spec import chain_framework, chain_quantize, framework_dist, parse_chain
from deltann.dataset import Inputs, InputSet
from deltann.core.device_catalogue import DeviceKind
from deltann.core.identity import Lab, Platform
from deltann.study import Study
from deltann.zoo import user


@dataclass(frozen=True)
class Unit:
    key: str
    model: str
    variant: str  # conversion chain, e.g. "torch->onnx" or "torch->onnx->tf->tflite:dynamic-range"
    runtime: str  # torch | onnxruntime | tvm
    setting: str  # "native" or a compile setting
    passes: tuple[str, ...]
    frontend: str  # TVM frontend, "" for native runtimes
    device: str
    target: str  # JSON of the TVM target ("" for native runtimes)
    host: str
    recipe: str  # preprocessing recipe key
    #: key of the unit's batch in the inputs mapping: the model name, or
    #: ``model@source`` where the source framework's model needs its own recipe
    inputs: str = ""
    #: a user model's definition (deltann.zoo.user.definition), so the board that runs the
    #: unit can register it; "" for zoo models. Not part of the key (the file's content is).
    user_model: str = ""
    #: setting ``tuned``: its kind's MetaSchedule records as JSON (compile.metaschedule), filled by
    #: the driver after tuning (deltann.fleet.tuning_driver); not part of the key (the budget is)
    tuning: str = ""
    #: the lab running the study and the board platform the unit is for (see
    #: deltann.core.identity; "" when planned without the driver's knowledge of them)
    lab: str = ""
    cpu: str = ""
    platform: str = ""  # Platform.key: only boards of this platform run the unit
    #: the images of the unit's input batch it classifies, ``[lo, hi)`` (hi None: all of
    #: them); a configuration over more than ``[dataset] shard`` images is ``shards`` units
    lo: int = 0
    hi: int | None = None
    shard: int = 0
    shards: int = 1
    #: key of what the unit builds (a compiled TVM module): the configuration's, shared by
    #: its shards so a board compiles it once; "" = the unit's own key (one shard)
    build: str = ""

    @property
    def framework(self) -> str:
        return chain_framework(self.variant)

    @property
    def quantize(self) -> str:
        """``none`` or the quantize modes the chain's hops applied (see convert.chain_spec)."""
        return chain_quantize(self.variant)

    @property
    def config(self) -> str:
        """Human name of the configuration (without device): ``torch->onnx [tvm:basic]``."""
        how = self.runtime if self.setting == compile_settings.NATIVE else f"tvm:{self.setting}"
        return f"{self.variant} [{how}]"


def content_key(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _chain_identity(chain: str) -> list[list[str]]:
    steps = parse_chain(chain)
    out = []
    for a, b in zip(steps, steps[1:], strict=False):
        hop = convert.get(a.framework, b.framework)
        # The quantize mode is part of the identity only when set: full-precision chains
        # keep the keys they had before quantisation existed.
        quant = [] if b.quantize == "none" else [b.quantize]
        out.append([a.framework, b.framework, hop.tool, dist_version(hop.tool), *quant])
    return out


def inputs_key(model: str, source: str) -> str:
    """Key of the preprocessed batch a variant of ``model`` starting from ``source`` reads:
    the model name when the source uses the family's recipe (the common case: every
    variant sees the same tensor), ``model@source`` when its framework's model needs its
    own (recorded, so the report can say the tensors differ)."""
    spec = zoo.get(model)
    return model if spec.preprocess_for(source) == spec.preprocess else f"{model}@{source}"


def pool(device: str, platform: str) -> str:
    """The boards that may run a unit (or that a board belongs to): its device kind, and
    its platform where the driver resolved one."""
    return f"{device}|{platform}" if platform else device


def expand(study: Study, inputs: dict[str, Inputs] | dict[str, InputSet], kinds: dict[str, DeviceKind],
           platforms: dict[str, list[Platform]] | None = None, lab: Lab | None = None) -> list[Unit]:
    """Every unit of the study, in a stable order. ``inputs`` maps model name to its
    preprocessed inputs; ``kinds`` is the device catalogue; ``platforms`` the distinct
    platforms of each kind's live boards (a kind without any, or ``platforms`` None: the
    catalogue's target, resolved by whichever board runs the unit); ``lab`` the lab."""
    units: list[Unit] = []
    for model in study.models:
        spec = zoo.get(model)
        user_model = study.user_models.get(model)
        carried = user.definition(model, user_model) if user_model is not None else ""
        for chain in study.variants:
            framework = chain_framework(chain)
            source = parse_chain(chain)[0].framework
            batch_key = inputs_key(model, source)
            batch = inputs[batch_key]
            ways: list[tuple[str, str, tuple[str, ...], str]] = []
            native = registry.native(framework)
            if "native" in study.runtimes and native is not None:
                ways.append((native.name, compile_settings.NATIVE, (), ""))
            tvm = registry.get("tvm") if "tvm" in study.runtimes else None  # the study's compiler
            if tvm is not None and framework in tvm.frontends:
                for setting in compile_settings.expand(study.settings, study.ablation):
                    ways.append((tvm.name, setting, compile_settings.passes_of(setting), tvm.frontends[framework]))
            n = len(batch.hashes)
            spans = shard_spans(n, study.dataset.shard)
            for (runtime, setting, passes, frontend), (shard, (lo, hi)), (kind_name, plat) in itertools.product(
                    ways, enumerate(spans), [(k, p) for k in study.devices
                                             for p in ((platforms or {}).get(k) or [None])]):
                kind = kinds[kind_name]
                compiled = registry.get(runtime).compiles
                target = json.loads(plat.target) if plat is not None and plat.target else kind.target
                host = (json.loads(plat.host) if plat.host else None) if plat is not None else kind.host
                identity = {
                    "schema": SCHEMA_VERSION,
                    "deltann": __version__,
                    "model": model,
                    "weights": spec.weights_id(),
                    "source": [source, dist_version(framework_dist(source))],
                    "chain": _chain_identity(chain),
                    "runtime": [runtime, dist_version(registry.get(runtime).dist)],
                    "setting": setting,
                    "passes": list(passes),
                    "frontend": frontend,
                    "target": target if compiled else None,
                    "host": host if compiled else None,
                    "device": kind_name,
                    "lab": lab.key if lab is not None else None,
                    "platform": [plat.cpu, plat.isa] if plat is not None else None,
                    "preprocess": asdict(spec.preprocess_for(source)),
                    "inputs": batch.hashes[lo:hi] if len(spans) > 1 else batch.hashes,
                }
                if compiled and compile_settings.is_tuned(setting):
                    identity["tuning"] = study.tuning.budget()  # the budget changes the result
                if user_model is not None:  # what its table declares (zoo models: the code's)
                    identity["declared"] = user_model.declared()
                build = ""
                if len(spans) > 1:  # two shards of the same images are still two units
                    build = content_key({k: v for k, v in identity.items() if k != "inputs"})
                    identity["shard"] = [lo, hi]
                units.append(
                    Unit(
                        key=content_key(identity),
                        model=model,
                        variant=chain,
                        runtime=runtime,
                        setting=setting,
                        passes=passes,
                        frontend=frontend,
                        device=kind_name,
                        target=json.dumps(target, sort_keys=True) if compiled else "",
                        host=json.dumps(host, sort_keys=True) if compiled and host is not None else "",
                        recipe=batch.recipe,
                        inputs=batch_key,
                        user_model=carried,
                        lab=lab.name if lab is not None else "",
                        cpu=plat.cpu if plat is not None else "",
                        platform=plat.key if plat is not None else "",
                        lo=lo,
                        hi=hi,
                        shard=shard,
                        shards=len(spans),
                        build=build,
                    )
                )
    return units


def shard_spans(n: int, size: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` of each shard of ``n`` images: about ``size`` each, all of one size
    give or take an image (never a last shard of a handful). Depends only on the data set
    and the study, never on the boards, so keys and resume hold across runs."""
    if n <= size:
        return [(0, n)]
    count = max(1, round(n / size))
    edges = [round(i * n / count) for i in range(count + 1)]
    return list(zip(edges, edges[1:], strict=False))


def timed_units(units: list[Unit], ok: set[str]) -> list[Unit]:
    """The units a timing session times: one per configuration (its first shard, whose
    key its timings rows carry), for the configurations whose every shard is ok."""
    shards: dict[tuple[str, str, str], list[Unit]] = {}
    for u in units:
        shards.setdefault((u.config, u.device, u.platform), []).append(u)
    return [min(members, key=lambda u: u.shard) for members in shards.values()
            if all(u.key in ok for u in members) and len(members) == members[0].shards]


@dataclass(frozen=True)
class TimingJob:
    """One timing session to run: the units of one model on one device kind (on one given
    board with ``replicate``), timed together in alternating blocks
    (:mod:`deltann.runtimes.interleave`) on the images at ``images`` (indices into each
    unit's input batch)."""

    key: str  # the session's id (every attempt gets a new one)
    model: str
    device: str
    units: tuple[Unit, ...]
    protocol: tuple[tuple[str, int], ...]  # Timing's fields but ``images``, as sorted pairs
    images: tuple[int, ...]
    board: str = ""  # replicate: the board that must time it ("" = any board of the kind)


def timing_protocol(study: Study) -> tuple[tuple[str, int], ...]:
    """The study's timing protocol as a session records and compares it."""
    return tuple(sorted(study.timing.model_dump(exclude={"images"}).items()))


def timing_groups(units: list[Unit]) -> dict[tuple[str, str], list[Unit]]:
    """Units timed together: one group per (model, device kind) — per platform of the
    kind, where its boards differ (``device`` is then ``kind|platform``) — in plan order."""
    groups: dict[tuple[str, str], list[Unit]] = {}
    for u in units:
        groups.setdefault((u.model, pool(u.device, u.platform)), []).append(u)
    return groups


def timing_job(study: Study, units: list[Unit], n_images: int, board: str = "") -> TimingJob:
    """A new session for ``units`` of one model and device kind; ``n_images`` is the size
    of their input batches."""
    first = units[0]
    job = TimingJob(key="", model=first.model, device=first.device, units=tuple(units),
                    protocol=timing_protocol(study), images=tuple(study.timing.timed_indices(n_images)), board=board)
    return renewed(job)


def renewed(job: TimingJob) -> TimingJob:
    """``job`` under a fresh session key (its units, protocol and images, the time and a
    nonce): every attempt at a session is its own, so rows of a broken attempt never mix
    with a later one's."""
    key = content_key({"units": sorted(u.key for u in job.units), "protocol": job.protocol, "images": job.images,
                       "board": job.board, "at": time.time_ns(), "nonce": uuid.uuid4().hex})
    return replace(job, key=key)
