"""Where board work lands on the Ray cluster: the live boards of a kind, and the options
that place a task or actor on one board as its board actor is placed (the kind's
resource share, pinned to the node, the board's thread policy). The driver, the tuning
driver and the platform probe all place work this way, so it lives apart from each."""

from __future__ import annotations

import logging
import socket
from typing import Any

from deltann.core import identity
from deltann.core.device_catalogue import DeviceKind
from deltann.core.runner import thread_env

log = logging.getLogger("deltann.fleet")

#: Fraction of a kind's custom resource one board actor holds (NOTES.md: a whole unit
#: starves other work that needs the resource).
BOARD_SHARE = 0.01


def alive_boards(resource: str) -> list[dict[str, Any]]:
    """Live Ray nodes that advertise ``resource``: ``{"node_id", "hostname"}`` each,
    sorted by node id (a stable order for spreading)."""
    import ray

    nodes = [
        {"node_id": n["NodeID"], "hostname": n.get("NodeManagerHostname", ""),
         "cpus": max(1, int(n.get("Resources", {}).get("CPU", 1)))}
        for n in ray.nodes()
        if n.get("Alive") and n.get("Resources", {}).get(resource, 0) > 0
    ]
    return sorted(nodes, key=lambda n: n["node_id"])


def placement(kind: DeviceKind, board: dict[str, Any]) -> dict[str, Any]:
    """A Ray task on ``board`` as a board actor is placed (:meth:`deltann.fleet.driver.Dispatcher._start_actor`):
    by the kind's resource, pinned to the node, with the board's thread policy."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


    return {"resources": {kind.resource: BOARD_SHARE},
            "scheduling_strategy": NodeAffinitySchedulingStrategy(board["node_id"], soft=False),
            "runtime_env": {"env_vars": thread_env(board.get("cpus", 1))}}


def _probe_task() -> Any:
    import ray

    @ray.remote(num_cpus=0, max_retries=0)
    def probe_remote(kind: DeviceKind) -> dict[str, Any]:
        """On a board: its platform for ``kind`` and who it is."""
        import ray as _ray

        return {"platform": identity.local_platform(kind).as_dict(), "node_id": _ray.get_runtime_context().get_node_id(),
                "hostname": socket.gethostname()}

    return probe_remote


def probe(kind: DeviceKind, boards: list[dict[str, Any]]) -> dict[str, identity.Platform]:
    """Ask every board of ``kind`` for its platform, in parallel, with a Ray task placed as
    its board actor would be; node id -> platform. A board that does not answer within
    :data:`~deltann.core.identity.PROBE_TIMEOUT_S` (or fails) is left out with a warning."""
    import ray

    task = _probe_task()
    refs = {b["node_id"]: task.options(**placement(kind, b)).remote(kind) for b in boards}
    out: dict[str, identity.Platform] = {}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=identity.PROBE_TIMEOUT_S)
    done = set(ready)
    for node, ref in refs.items():
        if ref not in done:
            ray.cancel(ref, force=True)
            log.warning("board %s (%s) did not say its platform within %.0f s; left out of this run", node[:12],
                        kind.name, identity.PROBE_TIMEOUT_S)
            continue
        try:
            answer = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - a board that cannot answer is left out, the run goes on
            log.warning("board %s (%s) could not say its platform (%s: %s); left out of this run", node[:12],
                        kind.name, type(exc).__name__, " ".join(str(exc).split())[:200])
            continue
        out[node] = identity.Platform(**answer["platform"])
    return out
