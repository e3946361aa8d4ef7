"""`trainyard fsck`: re-hash every blob and follow every reference the store's records make; quarantine on --repair.

A store is sound when every blob matches its sha256 and every reference resolves: branches -> commits, commits ->
manifest blobs and parents, run records -> outputs and log blobs and commits, models -> outputs (and the blobs that
manifest lists), log and lineage commits, the registry -> models, datum records, provenance and Pachyderm job and stats
records -> blobs and commits. Checking reads each record once and hashes each blob once (on a thread pool, streamed);
references are checked against sets held in memory, so the work grows linearly with the store.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import BaseModel

from trainyard.errors import CorruptBlob, NotFound, StoreError
from trainyard.records import (DatumBatch, DatumIndex, DatumKeys, DatumRecord, DatumStats, ModelRecord, PpsJob,
                               Provenance, RegistryEntry, RunPlan, RunRecord, TrainedModel, TrainFailure)
from trainyard.store import keys
from trainyard.store.versioned import SHORT_ID_LEN, Store, _Bar, manifest_id, progress_bars_enabled

# Records are read this many at a time: the pool stays busy and a store of a million records is never held whole.
_BATCH = 256


class Damage(BaseModel):
    """One damaged or missing object, and what uses it."""

    key: str  # the object's store key (a blob, commit, model or record)
    kind: Literal["corrupt", "missing", "unreadable"]
    detail: str = ""
    commits: list[str] = []  # repo:short of each commit that uses it
    paths: list[str] = []  # repo:short path, for each file of those commits it holds
    models: list[str] = []  # models whose outputs hold it, or that were trained on a commit that does
    others: list[str] = []  # any other record that references it (runs, registry, datums, provenance, pps)
    action: str = ""  # what --repair did: "quarantined", "marked missing", "" (nothing it could do)


class FsckReport(BaseModel):
    """What `trainyard fsck` checked and found."""

    store: str
    blobs: int = 0  # blobs re-hashed
    bytes: int = 0  # bytes re-hashed
    records: int = 0  # records read (commits, branches, runs, models, registry, datums, provenance, pps)
    references: int = 0  # references followed
    quarantined: int = 0  # blobs quarantined before this check (kept as evidence, not damage)
    seconds: float = 0.0
    repair: bool = False
    damaged: list[Damage] = []

    @property
    def needs_upload(self) -> list[Damage]:
        """Blobs the store lacks (or that --repair quarantined): putting the data again restores them."""
        return [d for d in self.damaged if d.key.startswith(keys.BLOBS)]

    def counts(self) -> dict[str, Any]:
        return {"blobs checked": self.blobs, "bytes": self.bytes, "records read": self.records,
                "references checked": self.references, "damaged": len(self.damaged),
                "quarantined earlier": self.quarantined}


class _Checker:
    """One fsck pass over a store."""

    def __init__(self, store: Store, quiet: bool) -> None:
        self.store = store
        self.quiet = quiet
        self.report = FsckReport(store=store.uri)
        self.stored: set[str] = set()
        self.corrupt: set[str] = set()
        self.packs: set[str] = set()  # packs stored whose bytes hash to their name
        self.packed: dict[str, set[str]] = {}  # pack -> the blobs manifests say it holds
        self.bad_packs: dict[str, str] = {}  # pack -> what is wrong with it: damage only where a blob needs it
        self.commits: dict[str, set[str]] = {}  # repo -> commit ids
        self.models: set[str] = set()
        self.damage: dict[str, Damage] = {}
        # Commits holding a damaged blob, so a model trained on one is named as using it.
        self.damaged_commits: dict[tuple[str, str], list[str]] = {}

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _damage(self, key: str, kind: str, detail: str = "") -> Damage:
        if key not in self.damage:
            self.damage[key] = Damage(key=key, kind=kind, detail=detail)
        return self.damage[key]

    def _read(self, items: Iterable[str], load: Callable[[str], Any]) -> Iterator[tuple[str, Any]]:
        """(key, load(key)) for every key, read on the store's thread pool in bounded batches; a record that cannot
        be read is reported as damage and skipped."""
        def safe(key: str) -> tuple[str, Any]:
            try:
                return key, load(key)
            except (StoreError, ValueError, KeyError, TypeError) as exc:
                return key, exc

        batch: list[str] = []
        with ThreadPoolExecutor(max_workers=self.store.concurrency) as pool:
            def flush() -> Iterator[tuple[str, Any]]:
                for key, got in pool.map(safe, batch):
                    self.report.records += 1
                    if isinstance(got, NotFound):
                        continue  # removed since it was listed (a deleted pipeline's records)
                    if isinstance(got, Exception):
                        self._damage(key, "unreadable", f"{type(got).__name__}: {got}")
                        continue
                    yield key, got
                batch.clear()

            for key in items:
                batch.append(key)
                if len(batch) >= _BATCH:
                    yield from flush()
            yield from flush()

    def _record(self, kind) -> Callable[[str], Any]:
        return lambda key: self.store.get_record(key, kind)

    def blob(self, sha: str | None, user: str, *, commit: tuple[str, str] | None = None, path: str | None = None,
             model: str | None = None, entry: dict[str, Any] | None = None) -> None:
        """Follow one reference to a blob from `user` (a commit's path, a model, or another record); a packed blob
        is sound when its pack is."""
        if not sha:
            return
        self.report.references += 1
        pack = (entry or {}).get("pack")
        if pack:
            self.packed.setdefault(pack, set()).add(sha)
            if pack in self.packs or (sha in self.stored and sha not in self.corrupt):
                return  # a sound pack, or a later put stored the blob again on its own
            if pack in self.bad_packs and self.store.packed_intact(entry):
                return  # a pack damaged elsewhere: this blob's own bytes still match
            damage = self._damage(keys.pack(pack), "corrupt" if pack in self.bad_packs else "missing",
                                  self.bad_packs.get(pack, ""))
        elif sha in self.stored and sha not in self.corrupt:
            return
        else:
            damage = self._damage(keys.blob(sha), "corrupt" if sha in self.corrupt else "missing")
        if commit:
            ref = f"{commit[0]}:{commit[1][:SHORT_ID_LEN]}"
            _add(damage.commits, ref)
            if path is not None:
                _add(damage.paths, f"{ref} {path}")
            self.damaged_commits.setdefault(commit, []).append(damage.key)
        elif model:
            _add(damage.models, model)
        else:
            _add(damage.others, user)

    def commit(self, repo: str | None, commit_id: str | None, user: str) -> None:
        """Follow a reference to a commit (a full id, or a unique prefix as short refs record it)."""
        if not repo or not commit_id:
            return
        self.report.references += 1
        ids = self.commits.get(repo, set())
        if commit_id in ids or (len(commit_id) < 64 and any(c.startswith(commit_id) for c in ids)):
            return
        _add(self._damage(keys.commit(repo, commit_id), "missing").others, user)

    def ref(self, text: str | None, user: str) -> None:
        """Follow a 'repo:commit' reference."""
        if text:
            repo, _, commit_id = text.partition(":")
            self.commit(repo, commit_id, user)

    def model(self, model_id: str | None, user: str) -> None:
        if not model_id:
            return
        self.report.references += 1
        if model_id not in self.models:
            _add(self._damage(keys.model(model_id), "missing").others, user)

    def lineage_models(self, model_id: str, commits: Iterable[tuple[str, str]]) -> None:
        """A model trained on a commit that holds a damaged blob uses that blob too."""
        for commit in commits:
            for key in self.damaged_commits.get(commit, ()):
                _add(self.damage[key].models, model_id)

    def outputs(self, sha: str, model_id: str, user: str | None = None) -> None:
        """A model's outputs blob (a manifest of what its code wrote), and every blob that manifest lists."""
        self.blob(sha, user or model_id, model=None if user else model_id)
        if sha not in self.stored or sha in self.corrupt:
            return
        try:
            manifest = json.loads(self.store.get_blob_bytes(sha, quarantine=False))
        except (CorruptBlob, NotFound, ValueError) as exc:
            self._damage(keys.blob(sha), "unreadable", f"{type(exc).__name__}: {exc}")
            return
        if not isinstance(manifest, dict):
            self._damage(keys.blob(sha), "unreadable", "an outputs manifest that is not a JSON object")
            return
        for entry in manifest.values():
            if isinstance(entry, dict):
                self.blob(entry.get("sha256"), user or model_id, model=None if user else model_id)

    # -- the passes ------------------------------------------------------------------------------------------------
    def hash_blobs(self) -> None:
        store = self.store
        shas = store.stored_blobs()
        self.stored = set(shas)
        bar = _Bar(None, "verifying blobs", progress_bars_enabled(self.quiet))

        def one(sha: str) -> tuple[str, tuple[str, int] | None]:
            return sha, store.blob_digest(sha, bar.update)

        try:
            with ThreadPoolExecutor(max_workers=store.concurrency) as pool:
                for sha, got in pool.map(one, shas):
                    if got is None:  # deleted since it was listed
                        self.stored.discard(sha)
                        continue
                    digest, size = got
                    self.report.blobs += 1
                    self.report.bytes += size
                    if digest != sha:
                        self.corrupt.add(sha)
                        self._damage(keys.blob(sha), "corrupt", f"its bytes hash to {digest[:12]}")
        finally:
            bar.close()
        self.report.quarantined = len(store.quarantined_blobs())
        # Packs: one object holds many datums, so hashing the pack verifies every one of them.
        for key in store.list_keys(keys.PACKS):
            pack = keys.blob_sha(key)
            got = store.pack_digest(pack)
            if got is None:
                continue
            self.report.blobs += 1
            self.report.bytes += got[1]
            if got[0] == pack:
                self.packs.add(pack)
            else:
                self.bad_packs[pack] = f"its bytes hash to {got[0][:12]}"

    def repos(self) -> None:
        store = self.store
        commit_keys, branch_keys = [], []
        for key in store.list_keys(keys.REPOS):
            repo = keys.repo_of(key)
            if repo is None:
                continue
            if key.startswith(keys.commit_prefix(repo)):
                commit_keys.append(key)
                self.commits.setdefault(repo, set()).add(keys.commit_id(key))
            elif key.startswith(keys.history_prefix(repo)):
                continue  # a branch's older log entries: followed from the branch below
            else:
                branch_keys.append(key)
        for key, doc in self._read(commit_keys, store.get_json):
            repo, cid = keys.repo_of(key), keys.commit_id(key)
            if not isinstance(doc, dict) or doc.get("id") != cid:
                self._damage(key, "unreadable", "not a commit of this id")
                continue
            manifest = doc.get("manifest")
            if "tree" in doc:
                try:
                    manifest = store.read_tree(doc["tree"], where=f"repo {repo!r} commit {cid[:SHORT_ID_LEN]}")
                except (NotFound, CorruptBlob) as exc:
                    self._damage(key, "corrupt" if isinstance(exc, CorruptBlob) else "missing", str(exc))
                    continue
            if not isinstance(manifest, dict):
                self._damage(key, "unreadable", "not a commit of this id")
                continue
            try:
                if manifest_id(manifest) != cid:
                    self._damage(key, "corrupt", "its manifest does not hash to its id")
            except (KeyError, TypeError):
                self._damage(key, "unreadable", "a manifest entry without sha256 and size")
                continue
            for path, entry in manifest.items():
                self.blob(entry.get("sha256"), key, commit=(repo, cid), path=path, entry=entry)
            if doc.get("parent"):
                self.commit(repo, doc["parent"], f"{repo}:{cid[:SHORT_ID_LEN]} (parent)")
        for key, doc in self._read(branch_keys, store.get_json):
            repo = keys.repo_of(key)
            name = key.rsplit("/", 1)[1].removesuffix(keys.JSON)
            try:
                heads = [doc.get("head")] + [e.get("commit") for e in store.branch_log(repo, name, doc)]
            except (NotFound, ValueError, KeyError, TypeError, AttributeError) as exc:
                self._damage(key, "unreadable", f"its log cannot be read: {exc}")
                continue
            for commit_id in dict.fromkeys(h for h in heads if h):
                self.commit(repo, commit_id, f"branch {repo}:{name}")

    def model_records(self) -> None:
        model_keys = self.store.list_keys(keys.MODELS)
        self.models = {keys.model_id(k) for k in model_keys if k.endswith(keys.JSON)}
        for _key, record in self._read((k for k in model_keys if k.endswith(keys.JSON)), self._record(ModelRecord)):
            mid = record.model_id
            self.outputs(record.outputs, mid)
            self.blob(record.log, mid, model=mid)
            lineage = [(c.repo, c.commit) for c in (record.lineage.source, record.lineage.data)]
            for repo, commit_id in lineage:
                self.commit(repo, commit_id, f"model {mid}")
            self.lineage_models(mid, lineage)

    def registry(self) -> None:
        for key, entry in self._read(self.store.list_keys(keys.REGISTRY), self._record(RegistryEntry)):
            for version in entry.versions:
                user = f"registry {entry.name} {version.version}"
                self.model(version.model_id, user)
                for mid in version.models:
                    if mid != version.model_id:
                        self.model(mid, user)

    def runs(self) -> None:
        trained, failed, plans, results = [], [], [], []
        for key in self.store.list_keys(keys.RUNS):
            parts = key.split("/")
            if keys.is_run_results(key):
                results.append(key)
            elif key.endswith("/plan.json"):
                plans.append(key)
            elif len(parts) >= 2 and parts[-2] == "trained":
                trained.append(key)
            elif len(parts) >= 2 and parts[-2] == "failed":
                failed.append(key)
        for key, record in self._read(trained, self._record(TrainedModel)):
            user = f"run record {key}"
            self.outputs(record.outputs, record.model_id, user)
            self.blob(record.log, user)
            self.ref(f"{record.source.partition(':')[0]}:{record.source_id or record.source.partition(':')[2]}",
                     user)
            self.ref(f"{record.data.partition(':')[0]}:{record.data_id or record.data.partition(':')[2]}", user)
        for key, record in self._read(failed, self._record(TrainFailure)):
            self.blob(record.log, f"run record {key}")
        for key, plan in self._read(plans, self._record(RunPlan)):
            self.ref(plan.source, f"run plan {key}")
            self.ref(plan.data, f"run plan {key}")
        for key, run in self._read(results, self._record(RunRecord)):
            for mid in run.run_summary.outputs.model_ids:
                self.model(mid, f"run record {key}")

    def _datum_record(self, record: DatumRecord, user: str) -> None:
        for entry in record.outputs.values():
            self.blob(entry.get("sha256"), user)
        self.blob(record.log, user)
        for ref in record.inputs or []:
            self.commit(ref.repo, ref.commit, user)

    def _datum_batch(self, step: tuple[str, str], batch: str, stored: set[str], user: str) -> None:
        """Follow a key list's or an index's reference to the batch that holds the records."""
        self.report.references += 1
        key = keys.datum_batch(*step, batch)
        if key not in stored:
            _add(self._damage(key, "missing").others, user)

    def datums(self) -> None:
        listed = self.store.list_keys(keys.DATUMS)
        stored = set(listed)
        kinds = {"record": DatumRecord, "batch": DatumBatch, "keys": DatumKeys, "index": DatumIndex}
        parts = {}
        for key in listed:
            step = keys.datum_steps_of(key)
            part = keys.datum_part(key, *step) if step else None
            parts[key] = (step, part[0] if part else "record")
        small = [key for key in listed if parts[key][1] in ("record", "keys")]
        batches = [key for key in listed if parts[key][1] == "batch"]
        # A batch holds thousands of records and an index a million keys: a few batches and one index at a time,
        # so a million records are never held at once.
        groups = [small, *(batches[i:i + 4] for i in range(0, len(batches), 4)),
                  *([key] for key in listed if parts[key][1] == "index")]
        for group in groups:
            for key, record in self._read(group, lambda key: self.store.get_record(key, kinds[parts[key][1]])):
                step, kind = parts[key]
                if kind == "record":
                    self._datum_record(record, f"datum record {key}")
                elif kind == "batch":
                    for one in record.records:
                        self._datum_record(one, f"datum batch {key} ({one.datum})")
                elif kind == "keys":
                    self._datum_batch(step, record.batch, stored, f"datum keys {key}")
                else:
                    for batch in record.batches:
                        self._datum_batch(step, batch, stored, f"datum index {key}")
        # A provenance record names every file of its commit (a million at a million datums): a few at a time.
        provenance = self.store.list_keys(keys.PROVENANCE)
        for group in (provenance[i:i + 4] for i in range(0, len(provenance), 4)):
            for key, record in self._read(group, self._record(Provenance)):
                user = f"provenance {key}"
                repo, commit_id = keys.provenance_commit(key)
                self.commit(repo, commit_id, user)
                for ref in record.inputs:
                    self.commit(ref.repo, ref.commit, user)

    def pps(self) -> None:
        store = self.store
        for key, doc in self._read(store.list_keys(keys.PPS_PIPELINES), store.get_json):
            self.blob(doc.get("spec_sha") if isinstance(doc, dict) else None, f"pipeline {key}")
        jobs = store.list_keys(keys.PPS_JOBS) + store.list_keys(keys.PPS_STATE)
        for key, job in self._read(jobs, self._record(PpsJob)):
            user = f"pps job {key}"
            for ref in job.inputs:
                if isinstance(ref, dict):
                    self.commit(ref.get("repo"), ref.get("commit"), user)
            self.commit(job.pipeline, job.output, user)
        for key, stats in self._read(store.list_keys(keys.PPS_STATS), self._record(DatumStats)):
            user = f"pps stats {key}"
            self.blob(stats.log, user)
            for ref in stats.inputs:
                self.commit(ref.repo, ref.commit, user)

    def repair(self) -> None:
        """Quarantine every corrupt blob, and mark every missing referenced one, so the next upload writes it."""
        self.report.repair = True
        for key, damage in list(self.damage.items()):
            if key.startswith(keys.PACKS):
                # A pack is never rewritten; the blobs it should hold are marked so the next put stores them anew.
                for sha in self.packed.get(keys.blob_sha(key), ()):
                    self.store.mark_missing(sha)
                damage.action = "its blobs marked missing"
                continue
            if not key.startswith(keys.BLOBS) or damage.kind == "unreadable":
                continue
            sha = keys.blob_sha(key)
            state = self.store.quarantine_blob(sha)
            if state == "intact":  # rewritten with the right bytes since it was hashed: nothing is wrong now
                del self.damage[key]
                continue
            damage.action = (f"quarantined at {keys.quarantine(sha)}" if state == "quarantined"
                             else "marked missing")


def _add(items: list[str], item: str) -> None:
    if item not in items:
        items.append(item)


def check(store: Store, *, repair: bool = False, quiet: bool = True) -> FsckReport:
    """Verify every blob and every reference of the store; with repair, quarantine corrupt blobs.

    Nothing is ever deleted but a blob whose bytes do not match its sha256 (moved to quarantine, checked again just
    before). The report's `damaged` is empty when the store is sound.
    """
    started = time.monotonic()
    checker = _Checker(store, quiet)
    checker.hash_blobs()
    checker.repos()
    checker.model_records()  # after repos: a model names the damaged commits it was trained on
    checker.registry()
    checker.runs()
    checker.datums()
    checker.pps()
    if repair:
        checker.repair()
    report = checker.report
    report.damaged = sorted(checker.damage.values(), key=lambda d: (d.kind, d.key))
    report.seconds = round(time.monotonic() - started, 3)
    return report
