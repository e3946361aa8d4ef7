"""Images for the local cluster, built on this machine with buildah and pushed to its registry, keyed by content.

No public registry is reachable, so every image a pod or a build needs is made here from Debian:
  - `debian:bookworm-slim` from debootstrap, and `python:3.11-slim` (plus `python:3.11`) on top of it: local
    stand-ins under the Docker Hub names bundles use, so a user's `FROM python:3.11-slim` builds unchanged (the
    cluster's containerd and the builder resolve docker.io names to the local registry);
  - `tensorflow/tensorflow:2.21.0-gpu`, a stand-in with the CPU wheel of the same TensorFlow (no CUDA: the local
    cluster has no GPU), built only when asked for (`--with tensorflow`), as it is large;
  - the pod sandbox's `pause`, and a busybox image for Airflow's XCom sidecar;
  - trainyard's steps image (training_images/Dockerfile) and builder image (training_images/builder/Dockerfile).

Each image carries a tag derived from everything it is built from; when the registry already has that tag the image
is not built again, so the registry under the machine's cache (~/.cache/trainyard/registry) keeps them for every
later cluster. The machine's extra CA certificates (/usr/local/share/ca-certificates) are trusted in the base
images, so `pip install` in a build works behind a TLS-inspecting proxy, as it does on the host.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import httpx

from trainyard.k8s import registries_conf
from trainyard.localk8s.cluster import CACHE, REPO_ROOT, ClusterError

IMAGES_DIR = REPO_ROOT / "scripts" / "cluster" / "images"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("TRAINYARD_DEBIAN_MIRROR", "http://deb.debian.org/debian")
EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")
MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"])
# Optional images and what builds them.
OPTIONAL = ("tensorflow",)


def _sha(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()[:16]


def _tree_bytes(paths: Iterable[Path]) -> bytes:
    """Names and contents of every file under `paths` (sorted), caches excluded: the content key of a context."""
    out = []
    for top in paths:
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            out.append(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    return b"\0\0".join(out)


def _extra_cas() -> list[Path]:
    return sorted(EXTRA_CA_DIR.rglob("*.crt")) if EXTRA_CA_DIR.is_dir() else []


class Registry:
    """The cluster's registry over its HTTP API: whether a tag exists."""

    def __init__(self, address: str) -> None:
        self.address = address

    def has(self, name: str, tag: str) -> bool:
        try:
            resp = httpx.head(f"http://{self.address}/v2/{name}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES},
                              timeout=10)
        except httpx.HTTPError as exc:
            raise ClusterError(f"the image registry at {self.address} does not answer: {exc}") from None
        return resp.status_code == 200


class Buildah:
    """buildah with its own storage under the cache and a registries.conf that maps docker.io to the local registry."""

    def __init__(self, registry: str, run_dir: Path, log: Callable[[str], None] = print) -> None:
        self.registry = registry
        self.root = CACHE / "buildah" / "storage"
        self.run_dir = run_dir
        self.log = log
        self.conf = run_dir / "registries.conf"
        run_dir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(registries_conf(registry, insecure=[registry]))

    def _run(self, *args: str, what: str, quiet: bool = False) -> str:
        argv = ["buildah", "--root", str(self.root), "--runroot", str(self.run_dir / "buildah"),
                "--storage-driver", "overlay", *args]
        env = {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(self.conf), "BUILDAH_ISOLATION": "chroot"}
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise ClusterError(f"{what} failed ({proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()[-3000:]}")
        return proc.stdout.strip()

    def bud(self, context: Path, dockerfile: Path, tag: str, build_args: dict[str, str] | None = None,
            volumes: Iterable[str] = ()) -> None:
        args = ["bud", "--isolation", "chroot", "--network", "host", "--layers", "-f", str(dockerfile),
                "-t", tag]
        for key, value in (build_args or {}).items():
            args += ["--build-arg", f"{key}={value}"]
        for volume in volumes:
            args += ["--volume", volume]
        self._run(*args, str(context), what=f"building {tag} from {dockerfile.name}")

    def from_tar(self, tarball: Path, tag: str, *, cmd: str = "", entrypoint: str = "",
                 env: dict[str, str] | None = None) -> None:
        container = self._run("from", "scratch", what="buildah from scratch")
        try:
            self._run("add", container, str(tarball), "/", what=f"adding {tarball.name}")
            config = []
            for key, value in (env or {}).items():
                config += ["--env", f"{key}={value}"]
            if cmd:
                config += ["--cmd", cmd]
            if entrypoint:
                config += ["--entrypoint", entrypoint]
            if config:
                self._run("config", *config, container, what="buildah config")
            self._run("commit", "-q", container, tag, what=f"committing {tag}")
        finally:
            subprocess.run(["buildah", "--root", str(self.root), "--runroot", str(self.run_dir / "buildah"),
                            "--storage-driver", "overlay", "rm", container], capture_output=True, check=False)

    def push(self, tag: str, destinations: Iterable[str]) -> None:
        for dest in destinations:
            self._run("push", "-q", "--tls-verify=false", tag, f"docker://{self.registry}/{dest}",
                      what=f"pushing {dest}")


def _rootfs_tar(key: str, log: Callable[[str], None]) -> Path:
    """A Debian minbase root filesystem with ca-certificates (and this machine's extra CAs), as a cached tarball."""
    tarball = CACHE / "images" / f"debian-{DEBIAN_SUITE}-{key}.tar"
    if tarball.is_file():
        return tarball
    tarball.parent.mkdir(parents=True, exist_ok=True)
    log(f"debootstrap {DEBIAN_SUITE} minbase (about a minute)")
    with tempfile.TemporaryDirectory(prefix="trainyard-rootfs-", dir=tarball.parent) as tmp:
        root = Path(tmp) / "root"
        proc = subprocess.run(["debootstrap", "--variant=minbase", "--include=ca-certificates", DEBIAN_SUITE,
                               str(root), DEBIAN_MIRROR], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ClusterError(f"debootstrap failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-1500:]}")
        cas = _extra_cas()
        if cas:
            target = root / EXTRA_CA_DIR.relative_to("/")
            target.mkdir(parents=True, exist_ok=True)
            for ca in cas:
                shutil.copy(ca, target / ca.name)
            subprocess.run(["chroot", str(root), "update-ca-certificates"], capture_output=True, check=True)
        # Slim it the way Docker's debian:*-slim is: no apt lists, docs or man pages.
        for sub in ("var/lib/apt/lists", "usr/share/doc", "usr/share/man", "var/cache/apt/archives"):
            shutil.rmtree(root / sub, ignore_errors=True)
        (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".tmp")
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], check=True)
        partial.rename(tarball)
    return tarball


class ImageSet:
    """The images one cluster needs, each with its content key; `ensure()` builds and pushes what is missing."""

    def __init__(self, registry: str, run_dir: Path, log: Callable[[str], None] = print) -> None:
        self.registry = Registry(registry)
        self.address = registry
        self.buildah = Buildah(registry, run_dir, log)
        self.log = log
        self.kube_bin: Path | None = None
        self.built: list[str] = []

    # keys ------------------------------------------------------------------------------------------------------
    def debian_key(self) -> str:
        return _sha("debootstrap --variant=minbase --include=ca-certificates", DEBIAN_SUITE, DEBIAN_MIRROR,
                    *[ca.read_bytes() for ca in _extra_cas()])

    def _dockerfile_key(self, base_key: str, dockerfile: Path, *context: Path) -> str:
        return _sha(base_key, dockerfile.read_bytes(), _tree_bytes(context))

    def python_key(self) -> str:
        return self._dockerfile_key(self.debian_key(), IMAGES_DIR / "python.Dockerfile")

    def steps_key(self) -> str:
        return self._dockerfile_key(self.python_key(), REPO_ROOT / "training_images" / "Dockerfile",
                                    REPO_ROOT / "trainyard", REPO_ROOT / "training_images",
                                    REPO_ROOT / "pyproject.toml", REPO_ROOT / "README.md",
                                    REPO_ROOT / "constraints.txt")

    def builder_key(self) -> str:
        return _sha(self.debian_key(), self.steps_key(),
                    (REPO_ROOT / "training_images" / "builder" / "Dockerfile").read_bytes())

    def tensorflow_key(self) -> str:
        return self._dockerfile_key(self.python_key(), IMAGES_DIR / "tensorflow.Dockerfile")

    # images ----------------------------------------------------------------------------------------------------
    def _ensure(self, name: str, key: str, build: Callable[[str], None], extra_tags: Iterable[str] = ()) -> str:
        """`name:<key>` in the registry (built and pushed when missing), plus `extra_tags`; returns name:key."""
        tag = f"trainyard-{key}"
        if not self.registry.has(name, tag):
            local = f"localhost/{name}:{tag}"
            self.log(f"building image {name} ({key})")
            build(local)
            self.buildah.push(local, [f"{name}:{tag}", *(f"{name}:{t}" for t in extra_tags)])
            self.built.append(name)
        return f"{self.address}/{name}:{tag}"

    def debian(self) -> str:
        key = self.debian_key()

        def build(local: str) -> None:
            self.buildah.from_tar(_rootfs_tar(key, self.log), local, cmd='["bash"]',
                                  env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"})

        return self._ensure("library/debian", key, build, ["bookworm-slim", "bookworm", "12-slim", "12"])

    def python(self) -> str:
        self.debian()
        return self._ensure("library/python", self.python_key(), lambda local: self.buildah.bud(
            IMAGES_DIR, IMAGES_DIR / "python.Dockerfile", local), ["3.11-slim", "3.11", "3.11-slim-bookworm",
                                                                   "3.11-bookworm", "3-slim", "3"])

    def tensorflow(self) -> str:
        self.python()
        pip_cache = Path("~/.cache/pip").expanduser()
        pip_cache.mkdir(parents=True, exist_ok=True)
        # The host's pip cache is lent to the build, so a wheel the project's venv already fetched is not
        # downloaded again.
        return self._ensure("tensorflow/tensorflow", self.tensorflow_key(), lambda local: self.buildah.bud(
            IMAGES_DIR, IMAGES_DIR / "tensorflow.Dockerfile", local, volumes=[f"{pip_cache}:/root/.cache/pip"]),
            ["2.21.0-gpu", "2.21.0"])

    def steps(self) -> str:
        self.python()
        return self._ensure("trainyard/steps", self.steps_key(), lambda local: self.buildah.bud(
            REPO_ROOT, REPO_ROOT / "training_images" / "Dockerfile", local), ["latest"])

    def builder(self) -> str:
        steps = self.steps()
        self.debian()
        return self._ensure("trainyard/builder", self.builder_key(), lambda local: self.buildah.bud(
            REPO_ROOT, REPO_ROOT / "training_images" / "builder" / "Dockerfile", local,
            build_args={"STEPS_IMAGE": steps}), ["latest"])

    def template(self, name: str) -> str:
        """A template's own training image, built from its bundle's Dockerfile on the stand-ins, as a user's is."""
        bundle = REPO_ROOT / "templates" / name / "model-train" / name
        dockerfile = bundle / "Dockerfile"
        if not dockerfile.is_file():
            raise ClusterError(f"template {name!r} has no Dockerfile at {dockerfile}")
        base = self.tensorflow() if "tensorflow/tensorflow" in dockerfile.read_text() else self.python()
        key = _sha(base, dockerfile.read_bytes(), _tree_bytes([bundle]))
        return self._ensure(f"templates/{name}", key, lambda local: self.buildah.bud(bundle, dockerfile, local))

    def _single_binary(self, name: str, binary: Path, links: dict[str, str], entrypoint: str,
                       scripts: Iterable[Path] = ()) -> str:
        """An image of one static binary with its applet links (and shell scripts beside it) in /bin."""
        scripts = list(scripts)
        key = _sha(binary.read_bytes(), repr(sorted(links.items())), entrypoint, *(p.read_bytes() for p in scripts))

        def build(local: str) -> None:
            with tempfile.TemporaryDirectory(prefix="trainyard-img-") as tmp:
                root = Path(tmp) / "root"
                (root / "bin").mkdir(parents=True)
                shutil.copy(binary, root / "bin" / binary.name)
                for link, target in links.items():
                    (root / "bin" / link).symlink_to(target)
                for script in scripts:
                    shutil.copy(script, root / "bin" / script.stem)
                    (root / "bin" / script.stem).chmod(0o755)
                (root / "tmp").mkdir()
                tarball = Path(tmp) / "root.tar"
                subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(tarball), "."], check=True)
                self.buildah.from_tar(tarball, local, entrypoint=entrypoint, env={"PATH": "/bin"})

        return self._ensure(name, key, build)

    def pause(self, kube_bin: Path) -> str:
        return self._single_binary("trainyard/pause", kube_bin / "pause", {}, '["/bin/pause"]')

    def xcom_sidecar(self) -> str:
        busybox = Path(shutil.which("busybox") or "/bin/busybox")
        # Airflow's sidecar runs `sh -c 'trap "exit 0" INT; while true; do sleep 1; done;'`, is read with cat, and
        # is stopped with `kill -2 $(pgrep -u $(id -u) -f 'sh')` (pgrep: a script, busybox-static has no applet).
        applets = ("sh", "sleep", "cat", "kill", "mkdir", "ls", "id", "stat", "tr")
        return self._single_binary("trainyard/xcom-sidecar", busybox, {name: "busybox" for name in applets}, "",
                                   scripts=[IMAGES_DIR / "pgrep.sh"])


def ensure_node_images(cluster, with_optional: Iterable[str] = ()) -> dict[str, str]:
    """Every image the cluster's pods need, built when missing; returns {role: image reference}."""
    images = ImageSet(cluster.registry, cluster.state / "run", log=lambda m: print(f"cluster: {m}", flush=True))
    refs = {
        "pause": images.pause(cluster.bin),
        "xcom-sidecar": images.xcom_sidecar(),
        "debian": images.debian(),
        "python": images.python(),
        "steps": images.steps(),
        "builder": images.builder(),
    }
    for name in with_optional:
        if name not in OPTIONAL:
            raise ClusterError(f"unknown optional image {name!r}; known: {', '.join(OPTIONAL)}")
        refs[name] = getattr(images, name)()
    return refs
