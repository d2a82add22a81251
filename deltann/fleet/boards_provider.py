"""A Ray cluster-launcher node provider for boards that already exist (``provider.type:
external`` in ray_cluster.yaml).

Why not Ray's ``local`` provider: it supports one node type only, and the fleet needs a
node type per board kind (its own container image and custom resource). This provider
maps each node type to a fixed list of board addresses (``provider.boards``); "creating"
a node claims a free address of that type, "terminating" releases it. The launcher then
reaches the board over SSH and runs the node type's docker image and ``ray start`` there,
exactly as on-prem Ray does.

State: one JSON file, ``<state_dir>/deltann-boards-<cluster>.json`` (``provider.state_dir``,
default ``~/.deltann``; ``~`` and ``$VARS`` expanded), so ``ray up``, ``ray down`` and the
head's autoscaler agree on it where they share a home (the loopback launcher runs them
all as one user). Every change is a read-modify-write under an exclusive ``flock`` on a
lock file beside it, so claims made at once from the autoscaler's threads and from other
processes are never lost (a plain read-modify-write lost 110 of 400 concurrent claims)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ray.autoscaler.node_provider import NodeProvider
from ray.autoscaler.tags import TAG_RAY_USER_NODE_TYPE

log = logging.getLogger("deltann.fleet")

T = TypeVar("T")
#: Where the state file lives unless ``provider.state_dir`` says otherwise.
DEFAULT_STATE_DIR = "~/.deltann"


class StaticBoards(NodeProvider):
    """Node ids are the boards' addresses."""

    def __init__(self, provider_config: dict[str, Any], cluster_name: str) -> None:
        super().__init__(provider_config, cluster_name)
        self.boards: dict[str, list[str]] = {t: list(ips) for t, ips in provider_config.get("boards", {}).items()}
        folder = Path(os.path.expandvars(os.path.expanduser(provider_config.get("state_dir", DEFAULT_STATE_DIR))))
        self.state_path = folder / f"deltann-boards-{cluster_name}.json"
        self.lock_path = folder / f".deltann-boards-{cluster_name}.lock"

    # --- state ----------------------------------------------------------------
    def _load(self) -> dict[str, dict[str, str]]:
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}

    def _save(self, state: dict[str, dict[str, str]]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.state_path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(state, fh, indent=1)
        os.replace(tmp, self.state_path)  # readers without the lock see the old or the new file

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive across processes and threads: each call opens the lock file anew, and
        flock excludes every other open file description, in this process or another."""
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield  # closing the file releases the lock

    def _update(self, change: Callable[[dict[str, dict[str, str]]], T]) -> T:
        """Apply ``change`` to the state and save it, atomically with respect to every other update."""
        with self._locked():
            state = self._load()
            result = change(state)
            self._save(state)
            return result

    # --- NodeProvider -------------------------------------------------------
    def non_terminated_nodes(self, tag_filters: dict[str, str]) -> list[str]:
        return [ip for ip, tags in self._load().items()
                if all(tags.get(k) == v for k, v in tag_filters.items())]

    def is_running(self, node_id: str) -> bool:
        return node_id in self._load()

    def is_terminated(self, node_id: str) -> bool:
        return not self.is_running(node_id)

    def node_tags(self, node_id: str) -> dict[str, str]:
        return dict(self._load().get(node_id, {}))

    def external_ip(self, node_id: str) -> str:
        return node_id

    def internal_ip(self, node_id: str) -> str:
        return node_id

    def set_node_tags(self, node_id: str, tags: dict[str, str]) -> None:
        self._update(lambda state: state.setdefault(node_id, {}).update(tags))

    def create_node(self, node_config: dict[str, Any], tags: dict[str, str], count: int) -> dict[str, Any]:
        node_type = tags.get(TAG_RAY_USER_NODE_TYPE, "")

        def claim(state: dict[str, dict[str, str]]) -> dict[str, Any]:
            free = [ip for ip in self.boards.get(node_type, []) if ip not in state]
            if len(free) < count:
                log.warning("node type %r: %d boards asked for, %d free", node_type, count, len(free))
            created = {}
            for ip in free[:count]:
                state[ip] = dict(tags)
                created[ip] = dict(tags)
            return created

        return self._update(claim)

    def terminate_node(self, node_id: str) -> None:
        self._update(lambda state: state.pop(node_id, None))
