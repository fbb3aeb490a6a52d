"""Generated clusters for planning and simulation: random Wi-Fi meshes and edge-fog trees, seeded. Pure: numpy and
the cluster file's layout; `mdiexit cluster generate` writes them with :func:`mdiexit.config.write_cluster`.

    nodes, neighbours = generate("mesh", 200, seed=1)

Every device holds every task, has the egress bandwidth and latency of its access link, and a speed (slowdown) drawn
from a mix of edge devices. Neighbour lists are symmetric: a radio or cable link carries DATA both ways.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TOPOLOGIES = ("mesh", "tree")
BASE_PORT = 5550  # the examples' first port; node i listens on BASE_PORT + i
MAX_NODES = 10_000  # ports stay below 65536


@dataclass(frozen=True)
class Kind:
    name: str
    slowdown: float
    share: float  # probability that a worker is of this kind


# The examples' ratios (DESIGN §7): a laptop, Jetsons, Raspberry Pis and Pi Zeros, slowed enough for one host.
WORKER_KINDS = (Kind("laptop", 10, 0.1), Kind("jetson", 20, 0.3), Kind("rpi", 40, 0.4), Kind("rpi-zero", 80, 0.2))
SOURCE_SLOWDOWN = 40.0  # the source is a camera board, as in the examples

# Mesh: IEEE 802.11n PHY rates (20 MHz, one spatial stream, long guard interval, MCS 7 down to MCS 0) in Mbit/s,
# stepped over equal eighths of the radio range, times the share a sender gets after MAC overhead.
WIFI_RATES_MBPS = (65.0, 58.5, 52.0, 39.0, 26.0, 19.5, 13.0, 6.5)
MAC_EFFICIENCY = 0.6
RADIO_RANGE_M = 50.0
MEAN_DEGREE = 8.0  # the square's side is chosen so that a node has about this many nodes in range
RANGE_GROWTH = 1.1  # while the mesh is not connected, the range grows by this factor (more transmit power)
MESH_LATENCY_MS = 2.0

# Tree: a fog server at the root, edge gateways below it on Ethernet, slow devices on Wi-Fi below those.
FOG = {"slowdown": 5.0, "bandwidth_mbps": 1000.0, "latency_ms": 0.5}
GATEWAY = {"slowdown": 10.0, "bandwidth_mbps": 100.0, "latency_ms": 1.0}
LEAF_LATENCY_MS = 3.0


def generate(topology: str, n: int, seed: int = 0) -> tuple[list[dict], dict[str, list[str]]]:
    """The nodes (cluster-file mappings, the source first) and the neighbour graph of a generated cluster."""
    if topology not in TOPOLOGIES:
        raise ValueError(f"topology: expected one of {', '.join(TOPOLOGIES)}, got {topology!r}")
    if not 2 <= n <= MAX_NODES:
        raise ValueError(f"nodes: expected 2..{MAX_NODES}, got {n}")
    rng = np.random.default_rng(seed)
    return mesh(n, rng) if topology == "mesh" else tree(n, rng)


def _workers(rng: np.random.Generator, count: int) -> list[Kind]:
    p = np.array([k.share for k in WORKER_KINDS])
    return [WORKER_KINDS[i] for i in rng.choice(len(WORKER_KINDS), size=count, p=p / p.sum())]


def _node(i: int, name: str, role: str, **fields) -> dict:
    return {"name": name, "role": role, "port": BASE_PORT + i, **fields, "compress": "auto"}


def wifi_mbps(distance: float, radio_range: float) -> float:
    """Goodput of a link at ``distance`` when ``radio_range`` is the farthest a node reaches."""
    step = min(int(len(WIFI_RATES_MBPS) * distance / radio_range), len(WIFI_RATES_MBPS) - 1)
    return WIFI_RATES_MBPS[step] * MAC_EFFICIENCY


def mesh(n: int, rng: np.random.Generator) -> tuple[list[dict], dict[str, list[str]]]:
    """A random geometric Wi-Fi mesh: nodes uniform in a square, linked to every node within radio range (grown
    until the graph is connected). A node's egress bandwidth is the Wi-Fi rate at the median distance to its
    neighbours (one radio shares all its sends); the source is the node nearest the centre."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    side = RADIO_RANGE_M * math.sqrt(math.pi * n / MEAN_DEGREE)
    pos = rng.uniform(0.0, side, size=(n, 2))
    points = cKDTree(pos)
    radius = RADIO_RANGE_M
    while True:
        pairs = points.query_pairs(radius, output_type="ndarray")
        links = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
        if connected_components(links, directed=False)[0] == 1:
            break
        radius *= RANGE_GROWTH
    length = np.linalg.norm(pos[pairs[:, 0]] - pos[pairs[:, 1]], axis=1)
    near: list[list[int]] = [[] for _ in range(n)]
    far: list[list[float]] = [[] for _ in range(n)]
    for (a, b), d in zip(pairs.tolist(), length.tolist(), strict=True):
        near[a].append(b)
        near[b].append(a)
        far[a].append(d)
        far[b].append(d)
    src = int(np.argmin(((pos - side / 2) ** 2).sum(-1)))
    order = [src] + [i for i in range(n) if i != src]
    kinds = _workers(rng, n - 1)
    names: dict[int, str] = {src: "camera"}
    nodes = [_node(0, "camera", "source", slowdown=SOURCE_SLOWDOWN)]
    for j, (i, kind) in enumerate(zip(order[1:], kinds, strict=True), start=1):
        names[i] = f"{kind.name}-{j:04d}"
        nodes.append(_node(j, names[i], "worker", slowdown=kind.slowdown))
    for node, i in zip(nodes, order, strict=True):
        node["bandwidth_mbps"] = wifi_mbps(float(np.median(far[i])), radius)
        node["latency_ms"] = MESH_LATENCY_MS
    neighbours = {names[i]: [names[m] for m in sorted(near[i])] for i in order}
    return nodes, neighbours


def tree(n: int, rng: np.random.Generator) -> tuple[list[dict], dict[str, list[str]]]:
    """An edge-fog tree: a fog server at the root; about sqrt(n)/2 edge gateways below it; the other devices (slow,
    on Wi-Fi at a random rate of the 802.11n table) below a random gateway. The source is a camera at the edge,
    under the first gateway (under the root when there is no room for a gateway), so that its items climb towards
    the fast nodes."""
    gateways = 0 if n < 3 else max(1, min(n - 2, round(math.sqrt(n) / 2)))
    leaves = n - 1 - gateways  # the source is one of them
    nodes = [_node(0, "camera", "source", slowdown=SOURCE_SLOWDOWN)]
    nodes.append(_node(1, "fog", "worker", **FOG))
    parent = {"camera": "fog-gw-001" if gateways else "fog"}
    for g in range(1, gateways + 1):
        name = f"fog-gw-{g:03d}"
        nodes.append(_node(len(nodes), name, "worker", **GATEWAY))
        parent[name] = "fog"
    rates = [r * MAC_EFFICIENCY for r in WIFI_RATES_MBPS]
    nodes[0].update(bandwidth_mbps=float(rng.choice(rates)), latency_ms=LEAF_LATENCY_MS)
    for j, kind in enumerate(_workers(rng, leaves - 1), start=1):
        name = f"{kind.name}-{j:04d}"
        nodes.append(_node(len(nodes), name, "worker", slowdown=kind.slowdown, bandwidth_mbps=float(rng.choice(rates)),
                           latency_ms=LEAF_LATENCY_MS))
        parent[name] = f"fog-gw-{int(rng.integers(gateways)) + 1:03d}"
    neighbours: dict[str, list[str]] = {node["name"]: [] for node in nodes}
    for child, up in parent.items():
        neighbours[child].append(up)
        neighbours[up].append(child)
    return nodes, neighbours

