"""StaticBoards (ray_cluster.yaml's node provider) claims boards atomically with one state
file: claims made at once from many threads (Ray's autoscaler launches nodes from a
thread pool) and from other processes (``ray up`` and the head's autoscaler) are never
lost or doubled. A plain read-modify-write of the file lost 110 of 400 such claims."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ray.autoscaler.tags import TAG_RAY_USER_NODE_TYPE

from deltann.fleet.boards_provider import StaticBoards

BOARDS = [f"10.1.{i // 250}.{i % 250}" for i in range(400)]


def provider(state_dir: Path) -> StaticBoards:
    return StaticBoards({"boards": {"board": BOARDS, "head": ["10.9.9.9"]}, "state_dir": str(state_dir)}, "race")


#: A process that claims ``n`` boards one at a time and prints them as JSON. A separate
#: interpreter (not a multiprocessing pool, whose workers hang when they cannot import the
#: test module) started with only deltann importable, as ``ray up`` and the autoscaler are.
CLAIMER = """
import json, sys
from pathlib import Path
from ray.autoscaler.tags import TAG_RAY_USER_NODE_TYPE
from deltann.fleet.boards_provider import StaticBoards
boards = [f"10.1.{i // 250}.{i % 250}" for i in range(400)]
provider = StaticBoards({"boards": {"board": boards, "head": ["10.9.9.9"]}, "state_dir": sys.argv[1]}, "race")
claimed = []
for _ in range(int(sys.argv[2])):
    claimed += list(provider.create_node({}, {TAG_RAY_USER_NODE_TYPE: "board"}, 1))
print(json.dumps(claimed))
"""


def test_concurrent_claims_from_threads_are_never_lost_or_doubled(tmp_path: Path) -> None:
    boards = provider(tmp_path)
    with ThreadPoolExecutor(max_workers=32) as pool:
        claims = list(pool.map(lambda _: list(boards.create_node({}, {TAG_RAY_USER_NODE_TYPE: "board"}, 1)),
                               range(len(BOARDS) + 10)))
    won = [ip for claim in claims for ip in claim]
    assert sorted(won) == sorted(BOARDS)  # each board claimed once; the 10 extra claims get nothing
    assert sum(1 for claim in claims if not claim) == 10
    assert sorted(provider(tmp_path).non_terminated_nodes({TAG_RAY_USER_NODE_TYPE: "board"})) == sorted(BOARDS)


def test_concurrent_claims_from_processes_share_one_state_file(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, str(tmp_path), "50"], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    results = [json.loads(proc.communicate(timeout=300)[0]) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4
    won = [ip for claims in results for ip in claims]
    assert len(won) == len(set(won)) == 200
    assert sorted(provider(tmp_path).non_terminated_nodes({})) == sorted(won)
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".json"] == ["deltann-boards-race.json"]


def test_concurrent_tag_updates_and_releases_keep_every_change(tmp_path: Path) -> None:
    boards = provider(tmp_path)
    created = boards.create_node({}, {TAG_RAY_USER_NODE_TYPE: "board"}, 200)
    nodes = sorted(created)

    def touch(i: int) -> None:
        if i % 2:
            boards.terminate_node(nodes[i])
        else:
            boards.set_node_tags(nodes[i], {"status": f"up-{i}"})

    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(touch, range(len(nodes))))
    left = provider(tmp_path).non_terminated_nodes({})
    assert sorted(left) == nodes[::2]
    assert all(boards.node_tags(ip)["status"] == f"up-{nodes.index(ip)}" for ip in left)


def test_state_dir_expands_the_home(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    boards = StaticBoards({"boards": {"head": ["10.9.9.9"]}}, "home")
    assert boards.state_path == tmp_path / ".deltann" / "deltann-boards-home.json"
