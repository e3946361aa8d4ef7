"""A commit's manifest as a tree of content-addressed nodes, so a commit that changes a few paths writes a few nodes.

Paths are kept sorted and cut into leaves where a path's hash says so (content-defined chunking, as in prolly trees):
a boundary depends only on the path itself, so inserting, changing or removing one path changes one leaf, and
the index nodes above it, and every other node keeps its id and is shared with the parent commit, as git shares
unchanged subtrees. At a million paths a leaf holds about LEAF_FANOUT entries and an index about INDEX_FANOUT
children, so a 10-path append writes a few tens of KB where the whole manifest is about a hundred MB.

    leaf:  {"v": 1, "packs": [pack, ...], "entries": [[path, sha256, size], [path, sha256, size, pack index, offset]]}
    index: {"v": 1, "level": n, "children": [[first path, node id, files, bytes], ...]}
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from trainyard.errors import CorruptBlob, NotFound
from trainyard.store import keys

VERSION = 1
LEAF_FANOUT = 256
INDEX_FANOUT = 64
# A hash never cuts a run this long: bounds a node's size whatever the paths are.
MAX_RUN = 8

Manifest = dict[str, dict[str, Any]]


_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f\x7f-\x9f\u2028\u2029]')


def plain_json_strings(texts: list[str]) -> bool:
    """Whether json.dumps (ensure_ascii=False) writes every text exactly as itself between quotes."""
    return _NEEDS_ESCAPE.search(texts[0] if len(texts) == 1 else "".join(texts)) is None


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while a million small dicts are made: they hold no cycles, and each full
    collection walks them all (building a million-entry manifest takes several times longer with it running)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _dump(node: dict[str, Any]) -> bytes:
    return json.dumps(node, separators=(",", ":"), ensure_ascii=False).encode()


def _cut(text: str, fanout: int) -> bool:
    # crc32 is enough here: the boundary needs to be deterministic and evenly spread, not secure.
    return zlib.crc32(text.encode()) % fanout == 0


@dataclasses.dataclass
class Written:
    """What writing a tree did: its root, every node id it holds, and the nodes and bytes actually written."""

    root: str
    nodes: set[str]
    nodes_written: int = 0
    bytes_written: int = 0


def _leaf(paths: list[str], manifest: Manifest, plain: bool) -> tuple[bytes, int]:
    """A leaf's bytes and the bytes its entries count. A packed entry names its pack by its index in the leaf's
    pack table, so a leaf of datums from one pack carries the pack's name once."""
    packs: dict[str, int] = {}
    rows = []
    total = 0
    for path in paths:
        entry = manifest[path]
        size = entry["size"]
        total += size
        pack = entry.get("pack")
        if plain:
            # The bytes _dump would write for these rows, written directly (a million rows, several times faster).
            rows.append(f'["{path}","{entry["sha256"]}",{size}]' if pack is None else
                        f'["{path}","{entry["sha256"]}",{size},{packs.setdefault(pack, len(packs))},'
                        f'{entry["offset"]}]')
        elif pack is None:
            rows.append([path, entry["sha256"], size])
        else:
            rows.append([path, entry["sha256"], size, packs.setdefault(pack, len(packs)), entry["offset"]])
    if not plain:
        return _dump({"v": VERSION, "packs": list(packs), "entries": rows}), total
    table = ",".join(f'"{pack}"' for pack in packs)
    return f'{{"v":{VERSION},"packs":[{table}],"entries":[{",".join(rows)}]}}'.encode(), total


def _leaf_entries(body: dict[str, Any], manifest: Manifest) -> None:
    packs = body.get("packs", ())
    for row in body["entries"]:
        if len(row) > 3:
            manifest[row[0]] = {"sha256": row[1], "size": row[2], "pack": packs[row[3]], "offset": row[4]}
        else:
            manifest[row[0]] = {"sha256": row[1], "size": row[2]}


def _runs(items: Iterable[Any], key: Callable[[Any], str], fanout: int) -> Iterator[list[Any]]:
    run: list[Any] = []
    for item in items:
        run.append(item)
        if _cut(key(item), fanout) or len(run) >= fanout * MAX_RUN:
            yield run
            run = []
    if run:
        yield run


def write_tree(write: Callable[[str, bytes], None], manifest: Manifest, known: set[str] = frozenset()) -> Written:
    """Store a manifest as a tree through write(key, bytes); nodes in `known` (the parent's) are not written again.

    A node is content-addressed, so writing one that exists already (known or not) is harmless.
    """
    if not manifest:
        raise ValueError("a tree needs at least one path")
    with paused_gc():
        return _write_tree(write, manifest, known)


def _write_tree(write: Callable[[str, bytes], None], manifest: Manifest, known: set[str]) -> Written:
    done = Written(root="", nodes=set())
    pending: list[tuple[str, bytes]] = []

    def node(body: dict[str, Any] | None, data: bytes | None = None) -> str:
        data = data if data is not None else _dump(body)
        node_id = hashlib.sha256(data).hexdigest()
        if node_id not in done.nodes:
            done.nodes.add(node_id)
            if node_id not in known:
                pending.append((keys.tree(node_id), data))
                done.nodes_written += 1
                done.bytes_written += len(data)
        return node_id

    # (first path, id, files, bytes) of each node of the level being built
    level: list[list[Any]] = []
    paths = sorted(manifest)
    plain = plain_json_strings(paths)
    for run in _runs(paths, lambda p: p, LEAF_FANOUT):
        data, total = _leaf(run, manifest, plain)
        level.append([run[0], node(None, data), len(run), total])
    depth = 0
    while len(level) > 1:
        depth += 1
        level = [[run[0][0], node({"v": VERSION, "level": depth, "children": run}),
                  sum(c[2] for c in run), sum(c[3] for c in run)]
                 for run in _runs(level, lambda child: child[1], INDEX_FANOUT)]
    done.root = level[0][1]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda kv: write(*kv), pending))
    return done


def read_tree(read: Callable[[str], bytes], root: str, *, concurrency: int = 8,
              where: str = "") -> tuple[Manifest, set[str]]:
    """The manifest a tree holds, and its node ids; a node whose bytes do not match its id is CorruptBlob (7)."""
    def load(node_id: str) -> dict[str, Any]:
        key = keys.tree(node_id)
        try:
            data = read(key)
        except KeyError:
            raise NotFound(f"tree node {key} of {where or 'a commit'} is missing from the store; "
                           "run `trainyard fsck` to see what else is damaged") from None
        if hashlib.sha256(data).hexdigest() != node_id:
            raise CorruptBlob(f"tree node {key} of {where or 'a commit'} does not match its hash; "
                              "run `trainyard fsck` and re-put the data") from None
        return json.loads(data)

    nodes = {root}
    manifest: Manifest = {}
    level = [root]
    with ThreadPoolExecutor(max_workers=concurrency) as pool, paused_gc():
        while level:
            bodies = list(pool.map(load, level))
            level = []
            for body in bodies:
                if "children" in body:
                    ids = [child[1] for child in body["children"]]
                    nodes.update(ids)
                    level.extend(ids)
                else:
                    _leaf_entries(body, manifest)
    # Every leaf is at the same depth and pool.map keeps order, so the paths come out sorted.
    return manifest, nodes


def node_children(body: dict[str, Any]) -> list[str]:
    """The node ids an index node points at (none for a leaf): what fsck follows."""
    return [child[1] for child in body.get("children", ())]
