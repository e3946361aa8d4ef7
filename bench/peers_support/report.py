"""bench/peers' pure parts: the grid, result parsing, accuracy comparison, min/median and the ratio figures."""

from __future__ import annotations

import itertools
import json
import statistics
from dataclasses import dataclass, field

from peers_support.mnist_train import label

GRID = {"degree": [3, 5], "kernel": ["linear", "poly"], "gamma": [10, 0.1, 0.01]}
RESULTS_MARK = "PEERS_RESULTS "
CACHE_HITS_MARK = "PEERS_CACHE_HITS "
# SVC on the same bytes with the same params is deterministic; anything beyond float noise is a real difference.
TOLERANCE = 1e-9

# (figure name, workload, numerator sample, denominator sample, target, what the ratio says)
RATIOS = [
    ("peers_A_vs_metaflow", "A", "trainyard", "metaflow", 0.9, "trainyard / Metaflow run --max-workers 2, A (min)"),
    ("A_vs_floor", "A", "trainyard", "floor_xargs_p2", 1.4, "trainyard / bare processes under xargs -P 2, A (min)"),
    ("peers_B_vs_kfp", "B", "trainyard", "kfp_local", 1.0, "trainyard / kfp.local, B (min)"),
    ("peers_C_vs_kfp", "C", "trainyard", "kfp_local", 1.0, "trainyard's cache hit / kfp.local's cache hit, C (min)"),
]


def combinations(grid: dict[str, list]) -> list[dict]:
    """The grid's cartesian product, in the order of its keys and values (trainyard's order)."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def parse_marked(text: str, mark: str = RESULTS_MARK):
    """The JSON after the last line starting with `mark` (a tool's own log prefix before it is allowed)."""
    found = None
    for line in text.splitlines():
        at = line.find(mark)
        if at >= 0:
            found = line[at + len(mark):]
    if found is None:
        raise ValueError(f"no {mark.strip()} line in the output")
    return json.loads(found)


def trainyard_results(doc: dict) -> tuple[dict[str, dict], int]:
    """{label: metrics} and the number of cached models from `trainyard deploy --json`'s document."""
    models = doc.get("models") or []
    return ({label(m.get("hyper") or {}): m.get("metrics") or {} for m in models},
            sum(1 for m in models if m.get("cached")))


def check_results(results: dict[str, dict], combos: list[dict], metric: str = "accuracy_test") -> list[str]:
    """Problems with one run's results: a combination missing, an extra one, or one without the metric."""
    want = {label(c) for c in combos}
    problems = [f"no result for {name}" for name in sorted(want - set(results))]
    problems += [f"unexpected result {name}" for name in sorted(set(results) - want)]
    problems += [f"{name} has no {metric}" for name in sorted(want & set(results))
                 if not isinstance(results[name].get(metric), (int, float))]
    return problems


def compare(reference: dict[str, dict], other: dict[str, dict], metrics: tuple[str, ...] = (
        "accuracy_training", "accuracy_validation", "accuracy_test")) -> list[str]:
    """Where `other`'s metrics differ from the reference's, combination by combination (missing ones are ignored:
    check_results reports them)."""
    out = []
    for name in sorted(set(reference) & set(other)):
        for metric in metrics:
            a, b = reference[name].get(metric), other[name].get(metric)
            if a is None and b is None:
                continue
            if a is None or b is None or abs(a - b) > TOLERANCE:
                out.append(f"{name} {metric}: {b} vs {a}")
    return out


@dataclass
class Samples:
    """Wall seconds of one contender on one workload, one per round, plus the rounds that failed."""

    seconds: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def min(self) -> float | None:
        return min(self.seconds) if self.seconds else None

    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None


def ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def figure_lines(samples: dict[str, dict[str, Samples]], mismatches: int | None) -> list[str]:
    """Every figure as `name: value (target: X)`: min and median per contender and workload, the mismatch count,
    and the four ratios last."""
    lines = []
    for workload in ("A", "B", "C"):
        for tool, by_workload in samples.items():
            s = by_workload.get(workload)
            if s is None or not (s.seconds or s.errors):
                continue
            lines.append(f"{tool}_{workload}_min_seconds: {fmt(s.min())} (target: n/a)")
            lines.append(f"{tool}_{workload}_median_seconds: {fmt(s.median())} (target: n/a)")
    lines.append(f"accuracy_mismatches: {'n/a' if mismatches is None else mismatches} (target: 0)")
    for name, workload, num, den, target, _ in RATIOS:
        value = ratio(samples.get(num, {}).get(workload, Samples()).min(),
                      samples.get(den, {}).get(workload, Samples()).min())
        lines.append(f"{name}: {fmt(value)}{'' if value is None else 'x'} (target: <= {target}x)")
    return lines
