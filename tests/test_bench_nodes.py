"""`rat bench --port A,B` / `--connect HOST:PORT ...`: the nodes of one cluster.

The cluster is `benchkit.ClusterRelay`: two relay nodes of one broadcast in
a thread, where a line reaches its own node's clients at once and the other
node's a few milliseconds later, so two senders on different nodes arrive in
different orders on the two nodes, as the SPEC allows a Redis backplane.
The generator must count no reorder, check each node on its fast path, and
report each node's figures; and where even one node's receivers disagree,
fall back to per-publisher checks, still without a false reorder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from benchkit import ClusterRelay, assert_clean, bench, run_ratbench

SCENARIOS = [
    ["chat", "--clients", "6", "--rate", "400", "--duration", "1", "--grace", "5"],
    ["fanout", "--publishers", "2", "--subscribers", "6", "--rate", "2000", "--duration", "1"],
    ["idle", "--connections", "21", "--hold", "0.2"],
]


@pytest.fixture
def cluster() -> Iterator[ClusterRelay]:
    relay = ClusterRelay()
    yield relay
    relay.stop()


@pytest.mark.slow
@pytest.mark.parametrize("argv", SCENARIOS, ids=["chat", "fanout", "idle"])
def test_two_nodes_one_broadcast(cluster: ClusterRelay, argv: list[str]) -> None:
    ports = ",".join(map(str, cluster.ports))
    s = bench(None, *argv, "--port", ports)
    assert_clean(s)
    assert s["slow_path_receivers"] == 0  # one reference per node: each node's order
    assert s["servers"] == [f"127.0.0.1:{p}" for p in cluster.ports]
    nodes = s["nodes"]
    assert [n["server"] for n in nodes] == s["servers"]
    assert sum(n["delivered"] for n in nodes) == s["delivered"]
    assert all(n["delivered"] > 0 and n["lost"] == 0 for n in nodes)
    assert all(n["latency_us"]["p99"] is not None for n in nodes)


@pytest.mark.slow
def test_receivers_that_disagree_are_checked_per_publisher() -> None:
    """Every receiver with an order of its own: slow path, and still no false reorder."""
    relay = ClusterRelay(per_receiver=True, delay=0.01)
    try:
        s = bench(None, *SCENARIOS[0], "--connect", f"127.0.0.1:{relay.ports[0]}",
                  "--connect", f"localhost:{relay.ports[1]}")  # fmt: skip
    finally:
        relay.stop()
    assert_clean(s)
    assert s["slow_path_receivers"] > 0


@pytest.mark.slow
def test_node_table_and_several_pids(cluster: ClusterRelay) -> None:
    me = os.getpid()  # the relay runs in this process: something to measure
    proc = run_ratbench(
        *SCENARIOS[0], "--port", ",".join(map(str, cluster.ports)), "--server-pid", f"{me},{me}"
    )
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert out.count("\nnode ") == 2 and "servers 127.0.0.1:" in out
    assert "server     pid " in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["chat", "--connect", "nohost"], "expected HOST:PORT"),
        (["chat", "--port", "1,,2"], "expected PORT or PORT,PORT"),
        (["chat", "--server-pid", "1,x"], "--server-pid: not a whole number"),
        (["connect", "--port", "1,2"], "--port: not a whole number: '1,2'"),
        (["chat", "--port", "1,2", "--ws-fraction", "0.5", "--ws-port", "3"], "one server"),
    ],
)
def test_server_list_usage_errors(argv: list[str], message: str) -> None:
    proc = run_ratbench(*argv)
    assert proc.returncode == 2
    assert message in proc.stderr.decode()
