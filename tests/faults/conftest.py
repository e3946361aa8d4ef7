"""The fault-injection suite's ledger: each scenario injects one real fault, then proves the store survived it.

A scenario test takes the `scenario` fixture, calls `scenario.watch(store)` before injecting its fault and
`scenario.check(store)` after its recovery. check() asserts that `trainyard fsck` finds nothing damaged and that no
object stored before the fault was lost or changed (bytes lost are counted, not only asserted). At the end of the
session the suite prints `faults_tried: N`, `faults_survived: N` and `bytes_lost: N`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pytest

from trainyard.store import keys


def written_once(key: str) -> bool:
    """Blobs, commits and models are written once and never change; branch heads, the registry and run records
    change by design between two commands, so a scenario may rewrite them."""
    return key.startswith((keys.BLOBS, keys.MODELS)) or (key.startswith(keys.REPOS) and "/commits/" in key)


@dataclass
class _Ledger:
    tried: set[str] = field(default_factory=set)
    survived: set[str] = field(default_factory=set)
    bytes_lost: int = 0


LEDGER = _Ledger()


class Scenario:
    """One injected fault: what was stored before it, and the checks that follow its recovery."""

    def __init__(self, nodeid: str) -> None:
        self.nodeid = nodeid
        self.before: dict[str, str] = {}
        self.checked = False

    @staticmethod
    def _digest(store) -> dict[str, str]:
        return {key: hashlib.sha256(store.get_bytes(key)).hexdigest() for key in store.list_keys("")}

    def watch(self, store) -> None:
        """Remember every object in the store (its sha256) before the fault is injected."""
        self.before = self._digest(store)

    def lost(self, store) -> list[str]:
        """Keys stored before the fault that are now missing or hold other bytes (mutable records excepted)."""
        after = self._digest(store)
        return sorted(key for key, digest in self.before.items()
                      if written_once(key) and after.get(key) != digest)

    def check(self, store) -> None:
        """After recovery: fsck finds no damage, and nothing stored before the fault was lost."""
        from trainyard import fsck

        lost = self.lost(store)
        LEDGER.bytes_lost += sum(len(store.get_bytes(k)) if store.exists(k) else 1 for k in lost)
        report = fsck.check(store)
        assert report.damaged == [], f"fsck after the fault: {report.damaged[:5]}"
        assert lost == [], f"objects lost or changed by the fault: {lost[:5]}"
        self.checked = True


@pytest.fixture
def scenario(request):
    """The scenario of this test; it counts as tried once its body runs, and survived when it passes."""
    LEDGER.tried.add(request.node.nodeid)
    yield Scenario(request.node.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and "scenario" in getattr(item, "fixturenames", ()) and report.passed:
        LEDGER.survived.add(item.nodeid)


def pytest_terminal_summary(terminalreporter):
    if not LEDGER.tried:
        return
    terminalreporter.write_sep("-", "fault injection")
    terminalreporter.write_line(f"faults_tried: {len(LEDGER.tried)}")
    terminalreporter.write_line(f"faults_survived: {len(LEDGER.survived & LEDGER.tried)}")
    terminalreporter.write_line(f"bytes_lost: {LEDGER.bytes_lost}")
