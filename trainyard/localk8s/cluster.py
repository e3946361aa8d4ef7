"""A single-node Kubernetes on 127.0.0.1: etcd, the control plane, containerd and a kubelet, in one state directory.

Built from Debian's packages (scripts/cluster/build-kubernetes.sh compiles Debian bookworm's `kubernetes` source
package; scripts/cluster/install-deps.sh installs etcd, containerd, runc, the CNI plugins and the registry). Every
component listens on 127.0.0.1 and a free port; nothing is written outside the state directory and the image
cache, except what the kernel keeps for running containers (mounts, cgroups, a bridge), which `stop()` removes.

Pods reach services on the host's loopback (the store, the registry) with `hostNetwork`; trainyard's steps ask
for it when `[trainyard] pod_host_network` is true, which the cluster's environment sets. The pod network is a CNI
bridge without NAT (so no iptables rule is written); the cluster creates the bridge itself, and its gateway
address is the node's IP, where the kubelet listens (the kubelet refuses a loopback node IP).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Self

from trainyard.local_airflow import free_port, tail

CACHE = Path(os.environ.get("TRAINYARD_CACHE_DIR", "~/.cache/trainyard")).expanduser()
REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "cluster" / "build-kubernetes.sh"
DEPS_SCRIPT = REPO_ROOT / "scripts" / "cluster" / "install-deps.sh"
NODE_NAME = "trainyard-node"
BRIDGE = "trainyard0"
POD_SUBNET = "10.244.77.0/24"
# The node's address: the pod bridge's gateway. The kubelet refuses a loopback node IP, and this address exists
# only on this machine (no dummy interfaces here), so the kubelet listens nowhere outside it.
NODE_IP = "10.244.77.1"
SERVICE_RANGE = "10.0.0.0/24"
CONTROL_PLANE = ("registry", "containerd", "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
                 "kubelet")
CNI_BIN = Path("/usr/lib/cni")
# One kubelet per machine: the kubepods cgroups and the bridge are the machine's, so a second cluster would take
# over the first one's pods. The lock is held for the cluster's life; the file names who holds it.
LOCK_FILE = Path("/run/trainyard-localk8s.lock")


class ClusterError(RuntimeError):
    """The local cluster could not be started; the message names the component and its log."""


class ClusterUnavailable(ClusterError):
    """This machine cannot run the local cluster (not root, no cgroups, no overlayfs); the message says why."""


def unavailable() -> str | None:
    """Why this machine cannot run the local cluster, or None. Cheap: reads /proc and /sys only."""
    if os.geteuid() != 0:
        return "the local cluster needs root (containerd, mounts, cgroups); run the tests as root or skip them"
    if not Path("/sys/fs/cgroup/memory").is_dir() and not Path("/sys/fs/cgroup/cgroup.controllers").is_file():
        return "no memory cgroup is mounted under /sys/fs/cgroup, so the kubelet cannot run pods"
    try:
        if "overlay" not in Path("/proc/filesystems").read_text():
            return "the kernel has no overlay filesystem, which containerd's snapshotter needs"
    except OSError as exc:
        return f"cannot read /proc/filesystems: {exc}"
    return None


def kube_binaries() -> Path:
    """The cached Kubernetes binaries, built from Debian's source package on first use (minutes, once)."""
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"building Kubernetes failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def install_deps() -> None:
    proc = subprocess.run(["bash", str(DEPS_SCRIPT)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterUnavailable(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip()
                                 else f"{DEPS_SCRIPT} exited {proc.returncode}")


def _mounts_under(prefix: str) -> list[str]:
    out = []
    with open("/proc/self/mounts") as fh:
        for line in fh:
            target = line.split()[1].replace("\\040", " ")
            if target == prefix or target.startswith(prefix.rstrip("/") + "/"):
                out.append(target)
    return out


def _netns_names() -> set[str]:
    path = Path("/run/netns")
    return {p.name for p in path.iterdir()} if path.is_dir() else set()


def _kubepods_cgroups() -> list[Path]:
    """Every kubepods cgroup directory the kubelet made, deepest first."""
    found = []
    root = Path("/sys/fs/cgroup")
    for top in [root, *(p for p in root.iterdir() if p.is_dir())] if root.is_dir() else []:
        base = top / "kubepods"
        if base.is_dir():
            found += [Path(d) for d, _, _ in os.walk(base)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def leftovers(state: Path) -> dict[str, list[str]]:
    """What a stopped cluster left behind: processes, mounts, network namespaces, the bridge, kubepods cgroups."""
    import psutil

    needles = (str(state), str(CACHE / "kubernetes"))
    procs = []
    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if proc.info["pid"] not in me and any(n in cmdline for n in needles):
            procs.append(f"{proc.info['pid']} {cmdline[:120]}")
    for group in _kubepods_cgroups():
        procs += [f"{pid} in {group}" for pid in (group / "cgroup.procs").read_text().split()] \
            if (group / "cgroup.procs").exists() else []
    return {
        "processes": procs,
        "mounts": _mounts_under(str(state)),
        "bridge": [BRIDGE] if Path(f"/sys/class/net/{BRIDGE}").exists() else [],
        "cgroups": [str(p) for p in _kubepods_cgroups()],
    }


class LocalCluster:
    """Kubernetes v1.20 on 127.0.0.1, its processes in sessions of their own, everything under `state`.

    :param state: the state directory (created; removed by `stop(cleanup=True)`)
    :param registry_dir: where the image registry keeps its blobs; default the machine's cache, so images built
        once are reused by every later cluster
    """

    def __init__(self, state: Path, *, registry_dir: Path | None = None) -> None:
        self.state = Path(state).resolve()
        self.logs = self.state / "logs"
        self.registry_dir = Path(registry_dir or CACHE / "registry")
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports = {name: free_port() for name in ("registry", "etcd", "etcd-peer", "apiserver", "kubelet",
                                                     "kubelet-healthz", "scheduler", "controller-manager")}
        self.registry = f"127.0.0.1:{self.ports['registry']}"
        self.api_url = f"https://127.0.0.1:{self.ports['apiserver']}"
        self.token = secrets.token_hex(24)
        self.kubeconfig = self.state / "kubeconfig"
        self.bin: Path | None = None
        self._netns_before: set[str] = set()
        self._lock = None

    # lifecycle -------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 180) -> Self:
        """Start every component in order and wait for the node to be Ready and the default service account."""
        reason = unavailable()
        if reason:
            raise ClusterUnavailable(reason)
        self._take_lock()
        install_deps()
        self.bin = kube_binaries()
        for sub in ("logs", "pki", "etcd", "containerd/root", "containerd/state", "kubelet", "cni/net.d",
                    "cni/ipam", "run"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        self._netns_before = _netns_names()
        try:
            self.pki = self._pki()
            self._write_kubeconfig()
            self._make_bridge()
            self._start_registry()
            from trainyard.localk8s import images  # the pause image must be in the registry before pods start

            self.images = images.ensure_node_images(self)
            self._start_containerd()
            self._start_etcd()
            self._start_apiserver()
            self._start_controllers()
            self._start_kubelet()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _take_lock(self) -> None:
        import fcntl

        lock = open(LOCK_FILE, "a+")  # noqa: SIM115 - held open for the cluster's life
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            lock.close()
            raise ClusterError(f"another local cluster runs on this machine ({holder}); stop it first (Ctrl-C where "
                               "it runs, or kill -TERM its pid): only one kubelet can run on a machine") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"state {self.state}, pid {os.getpid()}")
        lock.flush()
        self._lock = lock

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps writing to it
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **(env or {})}, cwd=self.state)
        log.close()
        self.procs[name] = proc
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise ClusterError(f"{name} exited with {proc.returncode}; its log ({self.logs / name}.log) ends:\n"
                                   f"{tail(self.logs / f'{name}.log', 15)}")

    def _wait_for(self, name: str, probe, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if probe():
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.3)
        raise ClusterError(f"{name} did not come up within {timeout:.0f} s; its log ends:\n"
                           f"{tail(self.logs / f'{name}.log', 15)}")

    # components ------------------------------------------------------------------------------------------------
    def _pki(self) -> dict[str, Path]:
        from trainyard.localk8s.pki import make_pki

        return make_pki(self.state / "pki")

    def _write_kubeconfig(self) -> None:
        ca = base64.b64encode(self.pki["ca.crt"].read_bytes()).decode()
        doc = {
            "apiVersion": "v1", "kind": "Config", "current-context": "trainyard-local",
            "clusters": [{"name": "trainyard-local", "cluster": {"server": self.api_url,
                                                                  "certificate-authority-data": ca}}],
            "users": [{"name": "trainyard-admin", "user": {"token": self.token}}],
            "contexts": [{"name": "trainyard-local", "context": {"cluster": "trainyard-local",
                                                                 "user": "trainyard-admin",
                                                                 "namespace": "default"}}],
        }
        self.kubeconfig.write_text(json.dumps(doc, indent=2))
        self.kubeconfig.chmod(0o600)
        # The admin (and the kubelet, which needs node and delegated-auth rights) authenticate with this token.
        tokens = self.state / "pki" / "tokens.csv"
        tokens.write_text(f'{self.token},trainyard-admin,trainyard-admin,"system:masters"\n')
        tokens.chmod(0o600)

    def _make_bridge(self) -> None:
        if not Path(f"/sys/class/net/{BRIDGE}").exists():
            for argv in (["ip", "link", "add", BRIDGE, "type", "bridge"],
                         ["ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE], ["ip", "link", "set", BRIDGE, "up"]):
                proc = subprocess.run(argv, capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    raise ClusterError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")

    def _start_registry(self) -> None:
        self.registry_dir.mkdir(parents=True, exist_ok=True)
        config = self.state / "registry.yml"
        config.write_text(json.dumps({
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.registry_dir)}, "delete": {"enabled": True}},
            "http": {"addr": self.registry},
        }))
        self._spawn("registry", ["docker-registry", "serve", str(config)])
        import httpx

        self._wait_for("registry", lambda: httpx.get(f"http://{self.registry}/v2/", timeout=2).status_code == 200)

    def containerd_socket(self) -> Path:
        return self.state / "run" / "containerd.sock"

    def _start_containerd(self) -> None:
        cni_conf = self.state / "cni" / "net.d" / "10-trainyard.conflist"
        cni_conf.write_text(json.dumps({
            "cniVersion": "0.4.0", "name": "trainyard",
            "plugins": [{"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
                         "ipam": {"type": "host-local", "subnet": POD_SUBNET, "dataDir": str(self.state / "cni/ipam"),
                                  "routes": [{"dst": "0.0.0.0/0"}]}},
                        {"type": "loopback"}],
        }))
        mirror = f"http://{self.registry}"
        config = self.state / "containerd.toml"
        # The registry speaks plain HTTP on loopback. docker.io names resolve to it too, so images that name a
        # Docker Hub base (python:3.11-slim, alpine) get the local stand-ins pushed under the same names.
        config.write_text(f"""version = 2
root = "{self.state}/containerd/root"
state = "{self.state}/containerd/state"
[grpc]
  address = "{self.containerd_socket()}"
[ttrpc]
  address = "{self.containerd_socket()}.ttrpc"
[debug]
  level = "warn"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{self.images['pause']}"
  # The kubelet would otherwise raise oom_score_adj, which runc is not allowed to do in this sandbox.
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{self.state}/run/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{self.state}/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{self.registry}"]
    endpoint = ["{mirror}"]
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
    endpoint = ["{mirror}"]
""")
        self._spawn("containerd", ["containerd", "--config", str(config)])
        self._wait_for("containerd", lambda: subprocess.run(
            ["ctr", "--address", str(self.containerd_socket()), "version"], capture_output=True).returncode == 0)

    def _start_etcd(self) -> None:
        client, peer = f"http://127.0.0.1:{self.ports['etcd']}", f"http://127.0.0.1:{self.ports['etcd-peer']}"
        self._spawn("etcd", [
            "etcd", "--name", "trainyard", "--data-dir", str(self.state / "etcd"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"trainyard={peer}", "--log-level", "warn", "--logger", "zap"])
        import httpx

        self._wait_for("etcd", lambda: httpx.get(f"{client}/health", timeout=2).json().get("health") == "true")

    def _api_get(self, path: str):
        import httpx

        return httpx.get(f"{self.api_url}{path}", headers={"Authorization": f"Bearer {self.token}"},
                         verify=str(self.pki["ca.crt"]), timeout=5)

    def _start_apiserver(self) -> None:
        p = self.pki
        self._spawn("kube-apiserver", [
            str(self.bin / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.ports['apiserver']}", "--insecure-port=0",
            f"--tls-cert-file={p['apiserver.crt']}", f"--tls-private-key-file={p['apiserver.key']}",
            f"--client-ca-file={p['ca.crt']}", f"--token-auth-file={self.state / 'pki' / 'tokens.csv'}",
            f"--kubelet-client-certificate={p['kubelet-client.crt']}",
            f"--kubelet-client-key={p['kubelet-client.key']}",
            "--kubelet-preferred-address-types=InternalIP",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            f"--service-cluster-ip-range={SERVICE_RANGE}", "--endpoint-reconciler-type=none",
            f"--service-account-key-file={p['sa.pub']}", f"--service-account-signing-key-file={p['sa.key']}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--cert-dir={self.state / 'pki' / 'apiserver'}", "--profiling=false", "--v=1",
        ])
        self._wait_for("kube-apiserver", lambda: self._api_get("/readyz").status_code == 200, timeout=90)

    def _start_controllers(self) -> None:
        common = [f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--port=0", "--bind-address=127.0.0.1",
                  "--v=1"]
        self._spawn("kube-controller-manager", [
            str(self.bin / "kube-controller-manager"), *common,
            f"--secure-port={self.ports['controller-manager']}",
            f"--service-account-private-key-file={self.pki['sa.key']}", f"--root-ca-file={self.pki['ca.crt']}",
            "--use-service-account-credentials=false", f"--cluster-name={NODE_NAME}",
            # No cloud, no node IPAM: the CNI config owns the pod subnet.
            "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service,-route",
        ])
        self._spawn("kube-scheduler", [str(self.bin / "kube-scheduler"), *common,
                                       f"--secure-port={self.ports['scheduler']}"])

    def _start_kubelet(self) -> None:
        kubelet_dir = self.state / "kubelet"
        config = self.state / "kubelet.yaml"
        config.write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": NODE_IP, "port": self.ports["kubelet"], "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": self.ports["kubelet-healthz"],
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(self.pki["ca.crt"])}},
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs", "failSwapOn": False,
            # No iptables chains of the kubelet's own: nothing to remove afterwards.
            "makeIPTablesUtilChains": False,
            # A developer's disk is often fuller than a node's: never evict or garbage-collect images for space here.
            "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False, "resolvConf": "/etc/resolv.conf",
            "nodeStatusReportFrequency": "10s", "syncFrequency": "10s", "fileCheckFrequency": "10s",
        }))
        self._spawn("kubelet", [
            str(self.bin / "kubelet"), f"--config={config}", f"--kubeconfig={self.kubeconfig}",
            "--container-runtime=remote", f"--container-runtime-endpoint=unix://{self.containerd_socket()}",
            f"--root-dir={kubelet_dir}", f"--cert-dir={self.state / 'pki' / 'kubelet'}",
            f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}", "--register-node=true",
            "--v=1",
        ])

    def wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            node = self._api_get(f"/api/v1/nodes/{NODE_NAME}").json()
            conditions = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
            sa = self._api_get("/api/v1/namespaces/default/serviceaccounts/default")
            return conditions.get("Ready") == "True" and sa.status_code == 200

        self._wait_for("kubelet", ready, timeout=timeout)

    def add_images(self, names) -> None:
        """Build optional images (e.g. the tensorflow stand-in) into the running cluster's registry."""
        from trainyard.localk8s import images

        self.images.update(images.ensure_node_images(self, with_optional=names))

    # environment ------------------------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """What Airflow and trainyard need to run steps as pods here (no credentials: the store Secret is apart)."""
        conn = {"conn_type": "kubernetes", "extra": {
            "kube_config_path": str(self.kubeconfig), "namespace": "default", "in_cluster": False,
            "xcom_sidecar_container_image": self.images["xcom-sidecar"]}}
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "AIRFLOW_CONN_KUBERNETES_DEFAULT": json.dumps(conn),
            "TRAINYARD_RUNNER": "kubernetes",
            "TRAINYARD_REGISTRY": self.registry,
            "TRAINYARD_REGISTRY_INSECURE": "true",
            "TRAINYARD_DOCKER_HUB_MIRROR": self.registry,
            "TRAINYARD_POD_HOST_NETWORK": "true",
            "TRAINYARD_STEP_IMAGE": self.images["steps"],
            "TRAINYARD_BUILDER_IMAGE": self.images["builder"],
            "TRAINYARD_XCOM_SIDECAR_IMAGE": self.images["xcom-sidecar"],
        }

    def write_env(self, path: Path | None = None) -> Path:
        path = path or self.state / "env.sh"
        import shlex

        path.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in self.env().items()))
        return path

    # teardown --------------------------------------------------------------------------------------------------
    def _stop_proc(self, name: str, grace: float = 10) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def _kill_pods(self) -> None:
        """Kill every container process (each pod's cgroup), then containerd's shims for this state dir."""
        import psutil

        for _ in range(3):
            pids = []
            for group in _kubepods_cgroups():
                try:
                    pids += [int(p) for p in (group / "cgroup.procs").read_text().split()]
                except OSError:
                    continue
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        socket_path = str(self.containerd_socket())
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = proc.info.get("cmdline") or []
            if cmdline and "containerd-shim" in cmdline[0] and any(socket_path in part for part in cmdline):
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass

    def stop(self, cleanup: bool = False) -> None:
        """Stop everything and remove what the kernel keeps: mounts, network namespaces, the bridge, cgroups."""
        # The kubelet first, so it restarts nothing; then every container, then the rest in reverse order.
        self._stop_proc("kubelet")
        self._kill_pods()
        for name in reversed(CONTROL_PLANE):
            self._stop_proc(name)
        self._kill_pods()  # shims that outlived containerd
        for name in sorted(_netns_names() - self._netns_before):
            netns = f"/run/netns/{name}"
            subprocess.run(["umount", netns], capture_output=True, check=False)
            Path(netns).unlink(missing_ok=True)
        for target in sorted(_mounts_under(str(self.state)), key=len, reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)
        for group in _kubepods_cgroups():
            try:
                group.rmdir()
            except OSError:
                pass
        if cleanup:
            shutil.rmtree(self.state, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None
