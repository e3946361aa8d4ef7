"""A thread that keeps the last state seen of every trainyard pod, for tests that count pods (done pods are deleted)."""

from __future__ import annotations

import threading


class PodWatcher(threading.Thread):
    """Poll trainyard's pods every 0.3 s and keep the last state seen of each (pods are deleted when done)."""

    def __init__(self, kube) -> None:
        super().__init__(daemon=True)
        self.kube = kube
        self.pods: dict[str, object] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            for pod in self.kube.list_namespaced_pod("default", label_selector="trainyard.io/step").items:
                self.pods[pod.metadata.name] = pod
            self.stopped.wait(0.3)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.join(5)

    def of_run(self, run_id: str, step: str | None = None) -> list:
        from airflow.providers.cncf.kubernetes.pod_generator import make_safe_label_value

        label = make_safe_label_value(run_id)
        return [p for p in self.pods.values() if p.metadata.labels.get("run_id") == label
                and (step is None or p.metadata.labels.get("trainyard.io/step") == step)]
