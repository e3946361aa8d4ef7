"""Step logs kept in the store while a step runs, so they outlive its process (or pod) and can be followed."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from functools import cached_property

from airflow.providers.cncf.kubernetes.callbacks import KubernetesPodOperatorCallback
from airflow.sdk.exceptions import AirflowException, AirflowTaskTimeout
from airflow.sdk.log import mask_secret

from operators.hooks import StoreHook
from trainyard.store import keys
from trainyard.store.versioned import Store

log = logging.getLogger(__name__)

# A log is rewritten whole on each flush; beyond this size only the end is kept (the head says so).
MAX_LOG_BYTES = 16 * 2**20
# The store credentials a step's output must never carry into a log (user code may print its env).
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# Shorter values are not credentials, and replacing them would mangle ordinary output.
MIN_SECRET_LENGTH = 8
REDACTED = "***"
KILLED_LINE = "stopped: the task was killed"


class StepKilled(AirflowException):
    """The task was killed (`trainyard kill`, a run marked failed) and its step was stopped."""


class StoreLogWriter:
    """
    Collect a step's output lines and write them to `key` every `interval` seconds and when closed.

    Flushes happen on a background thread, so the thread that streams the output never waits on the store and a
    quiet step still has its last lines in the store. Each value in `secrets` is replaced with `***` first.
    """

    def __init__(self, store: Store, key: str, interval: float = 2.0, secrets: Iterable[str] = ()) -> None:
        self.store, self.key, self.interval = store, key, interval
        self.secrets = sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        self._lines: list[str] = []
        self._size = 0
        self._dropped = 0
        self._dirty = False
        # Re-entrant: on_kill writes its line from the task's SIGTERM handler, which may interrupt a write().
        self._lock = threading.RLock()
        # One flush at a time, so an older snapshot never lands after a newer one.
        self._flush_lock = threading.Lock()
        self._closed = threading.Event()
        self._flusher: threading.Thread | None = None

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def write(self, line: str) -> None:
        line = self.redact(line)
        with self._lock:
            self._lines.append(line)
            self._size += len(line)
            while self._size > MAX_LOG_BYTES and len(self._lines) > 1:
                self._size -= len(self._lines.pop(0))
                self._dropped += 1
            self._dirty = True
            if self._flusher is None and not self._closed.is_set():
                self._flusher = threading.Thread(target=self._flush_periodically, name=f"store-log {self.key}",
                                                 daemon=True)
                self._flusher.start()

    def _flush_periodically(self) -> None:
        while not self._closed.wait(self.interval):
            if not self._dirty:
                continue
            try:
                self.flush()
            except Exception:  # a store hiccup must not end the periodic flushes; close() writes again
                log.warning("could not write step log %s to the store; will retry", self.key, exc_info=True)

    def flush(self) -> None:
        with self._flush_lock:
            with self._lock:
                head = f"[{self._dropped} earlier line(s) dropped: the log is capped]\n" if self._dropped else ""
                data = (head + "".join(self._lines)).encode()
                self._dirty = False
            self.store.put_bytes(self.key, data)

    def close(self, final_line: str | None = None) -> None:
        """Write `final_line` (if any), stop the periodic flushes and write the log one last time."""
        if final_line:
            self.write(final_line.rstrip("\n") + "\n")
        self._closed.set()
        flusher = self._flusher
        if flusher is not None and flusher is not threading.current_thread():
            flusher.join(timeout=self.interval + 5)
        self.flush()


class StoreLogCallback(KubernetesPodOperatorCallback):
    """
    Send each line PodManager streams from a pod to one task try's StoreLogWriter.

    An instance, not the class, goes into the operator's `callbacks`: PodManager calls
    `callback.progress_callback(line=..., container_name=..., ...)` on each entry, and the instance knows the
    try's writer, so nothing has to be derived again from pod labels.
    """

    def __init__(self, writer: StoreLogWriter, base_container: str) -> None:
        self.writer = writer
        self.base_container = base_container

    def progress_callback(self, *, line: str, container_name: str, **kwargs) -> None:  # type: ignore[override]
        # Only containers the operator follows stream here: the base one, plus init containers when asked for.
        prefix = "" if container_name == self.base_container else f"[{container_name}] "
        # PodManager may hand the stream's last line on with its newline still attached.
        text = line.rstrip("\n")
        self.writer.write(f"{prefix}{text}\n")


class StoreLogsMixin:
    """
    Keep each try's step log in the store under `keys.log(...)`, for KubernetesPodOperator subclasses.

    On the kubernetes runner the pod's lines come through a StoreLogCallback; the writer is closed when the pod
    finishes, fails or times out, and a kill is recorded in the log. Put it before KubernetesPodOperator in the
    bases. The operator sets `store_uri`.
    """

    store_uri: str
    _store_log: StoreLogWriter | None = None

    @cached_property
    def store_hook(self) -> StoreHook:
        return StoreHook(store_uri=self.store_uri)

    def store_secrets(self) -> list[str]:
        """The store credentials' values, from the hook and this process's env, to keep out of every log."""
        values = [value for name, value in self.store_hook.credentials.items() if name in SECRET_ENV]
        values += [os.environ[name] for name in SECRET_ENV if os.environ.get(name)]
        return values

    def store_log_writer(self, context) -> StoreLogWriter | None:
        """Where this try's output is kept in the store; none outside a real task run (no task instance)."""
        ti = context.get("ti") if context else None
        run_id = context.get("run_id") if context else None
        if ti is None or not run_id or not getattr(ti, "dag_id", None):
            return None
        key = keys.log(ti.dag_id, run_id, ti.task_id, getattr(ti, "map_index", -1), getattr(ti, "try_number", 1))
        secrets = self.store_secrets()
        for value in secrets:
            if len(value) >= MIN_SECRET_LENGTH:
                # Airflow's own task log gets the same protection as the store log.
                mask_secret(value)
        return StoreLogWriter(self.store_hook.get_conn(), key, secrets=secrets)

    def execute(self, context):
        writer = self.store_log_writer(context)
        if writer is None:
            return super().execute(context)
        callbacks = self.callbacks
        self.callbacks = [*callbacks, StoreLogCallback(writer, self.base_container_name)]
        # PodManager takes the callback list when it is created; make it take this try's.
        self.__dict__.pop("pod_manager", None)
        self._store_log = writer
        final = None
        try:
            result = super().execute(context)
        except AirflowTaskTimeout:
            final = "stopped: the task ran past its execution_timeout"
            raise
        finally:
            self._store_log = None
            self.callbacks = callbacks
            self.__dict__.pop("pod_manager", None)
            writer.close(final)
        if self._killed:
            # KubernetesPodOperator's cleanup returns quietly after on_kill deleted the pod; a killed step never
            # counts as done.
            raise StepKilled(f"step {self.task_id!r} {KILLED_LINE}: its pod was deleted")
        return result

    def on_kill(self) -> None:
        super().on_kill()
        writer = self._store_log
        if writer is not None:
            # The supervisor SIGKILLs the task shortly after SIGTERM, maybe before execute's cleanup runs; the
            # periodic flush persists this line meanwhile.
            writer.write(KILLED_LINE + "\n")
