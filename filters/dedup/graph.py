"""Vectorised graph helpers for dedup: candidate pairs inside equal-key groups and connected components.

Both are deterministic: results depend only on the input values, never on arrival order.
"""

from __future__ import annotations

import numpy as np


def pairs_in_groups(group: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j), i < j, of positions in a sorted `group` array with group[i] == group[j] and
    j - i < window. Groups up to `window` members give all their pairs; larger groups give each member
    its next window-1 neighbours (still one connected chain)."""
    n = len(group)
    firsts, seconds = [], []
    for d in range(1, min(window, n)):
        same = np.flatnonzero(group[d:] == group[:-d])
        if not len(same):
            break  # no group has d+1 members, so none has more
        firsts.append(same)
        seconds.append(same + d)
    if not firsts:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return np.concatenate(firsts), np.concatenate(seconds)


def connected_components(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Component label of each of n nodes given undirected edges (u[k], v[k]); a component's label is its
    smallest node index (so sort nodes by id first and the label is the smallest id).

    Min-label propagation with pointer jumping (a vectorised union-find): labels only decrease and always
    name a node of the same component, so at the fixed point every node holds its component's minimum.
    """
    labels = np.arange(n, dtype=np.int64)
    u = np.asarray(u, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    if not len(u):
        return labels
    while True:
        lu, lv = labels[u], labels[v]
        m = np.minimum(lu, lv)
        changed = bool((lu != lv).any())
        if not changed:
            return labels
        np.minimum.at(labels, lu, m)  # hook the larger root under the smaller label
        np.minimum.at(labels, lv, m)
        np.minimum.at(labels, u, m)
        np.minimum.at(labels, v, m)
        while True:  # pointer jumping: every node points at its root
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
