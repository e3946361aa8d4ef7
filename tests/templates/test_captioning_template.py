"""The captioning template: the synthetic captioned images, the image server, and every stage script.

The stages run as subprocesses exactly as a datum step runs them (argv INPUT_DIR OUTPUT_DIR, $TRAINYARD_PARAMS),
and model/train as the train step runs it (cwd model/, argv[1] the output dir, TRAINYARD_DATA_DIR), so TensorFlow
is never imported into the pytest process. The chain features -> consolidate -> model/train -> predict ->
evaluate runs once per module on copies of the committed data (no HTTP; the images stage gets its own test
against serve.py).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest

from tests.templates.bundle_checks import check_tensorflow_bundle

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "templates" / "captioning"
DATA = TEMPLATE / "data"
GENERATOR = TEMPLATE / "generate_data.py"
SERVER = TEMPLATE / "serve.py"
BUNDLE = TEMPLATE / "model-train" / "captioning"
MODEL_DIR = BUNDLE / "model"
STEPS = BUNDLE / "steps"
STAGES = ("images", "features", "consolidate", "predict", "evaluate")
TRAIN_IMAGES, HELDOUT_IMAGES = 300, 60
FEATURE_DIM = 72
TEST_EPOCHS = 15  # the template trains 30; 15 reach exact_match ~0.9 on validation and held-out here in ~3 s
DEVICE_LINE = "TensorFlow 2.21.0 devices: "
NO_PROXY_ENV = {"no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost"}


def _common():
    """steps/common, loaded by path the way the stages load it."""
    if "captioning_common" not in sys.modules:
        init = STEPS / "common" / "__init__.py"
        spec = importlib.util.spec_from_file_location("captioning_common", init,
                                                      submodule_search_locations=[str(init.parent)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    from captioning_common import captions, features, pngio

    return pngio, features, captions


def _run(cmd, *, params: dict | None = None, tmp: Path | None = None, cwd: Path | None = None, env=None,
         timeout: int = 120) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **NO_PROXY_ENV, "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    full_env.pop("TRAINYARD_PARAMS", None)
    if params is not None:
        params_file = tmp / f"params-{abs(hash(json.dumps(params, sort_keys=True)))}.json"
        params_file.write_text(json.dumps(params))
        full_env["TRAINYARD_PARAMS"] = str(params_file)
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _stage(name: str) -> Path:
    return STEPS / name / "transform"


def _tsv(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split("\t")) for line in path.read_text().splitlines()]


# -- the dataset ----------------------------------------------------------------------------------------------------

def _generate(out: Path) -> Path:
    _ok(_run([sys.executable, GENERATOR, "--out", out], timeout=120))
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generator_is_deterministic_and_matches_the_committed_data(tmp_path):
    first, second = _files(_generate(tmp_path / "a")), _files(_generate(tmp_path / "b"))
    assert first == second  # same seed, same bytes (PNGs and TSVs)
    assert len([p for p in first if p.startswith("images/")]) == TRAIN_IMAGES
    assert len([p for p in first if p.startswith("heldout/images/")]) == HELDOUT_IMAGES
    committed = _files(DATA)
    assert set(committed) == set(first), "run templates/captioning/generate_data.py"
    assert sum(len(b) for b in committed.values()) < 1.5 * 1024 * 1024
    pngio, _, _ = _common()
    for name, data in first.items():
        if name.endswith(".png"):  # compare pixels, not bytes: another zlib may deflate differently
            assert np.array_equal(pngio.decode_png(committed[name]), pngio.decode_png(data)), name
        else:
            assert committed[name] == data, name


def _regions(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """Pixel masks of the four colours the generator draws (an independent check of the captions)."""
    r, g, b = (rgb[:, :, i].astype(int) for i in range(3))
    return {"red": (r > 150) & (g < 110) & (b < 110), "green": (r < 110) & (g > 150) & (b < 110),
            "blue": (r < 110) & (g < 130) & (b > 150), "yellow": (r > 150) & (g > 150) & (b < 110)}


def _shape_of(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
    return "square" if fill > 0.9 else "circle" if fill > 0.64 else "triangle"


@pytest.mark.parametrize("tsv,folder", [("rawdata/captions.tsv", "images"),
                                        ("heldout/captions.tsv", "heldout/images")])
def test_captions_describe_their_images(tsv, folder):
    pngio, _, _ = _common()
    rows = _tsv(DATA / tsv)
    names = sorted(p.name for p in (DATA / folder).glob("*.png"))
    assert [url.rsplit("/", 1)[1] for _, url in rows] == names  # one caption per image, in order
    for caption, url in rows:
        assert url.startswith(f"http://127.0.0.1:8765/{folder}/")
        rgb = pngio.read_rgb(DATA / folder / url.rsplit("/", 1)[1])
        assert rgb.shape == (64, 64, 3)
        masks = {c: m for c, m in _regions(rgb).items() if m.sum() > 5}
        words = caption.split()
        if len(words) == 3:  # "a red circle"
            assert list(masks) == [words[1]] and _shape_of(masks[words[1]]) == words[2], (url, caption)
            continue
        # "a red circle above a blue square": the big shape first, where it is relative to the small one
        c1, s1, c2, s2 = words[1], words[2], words[-2], words[-1]
        relation = " ".join(words[3:-3])
        assert set(masks) == {c1, c2}, (url, caption)
        big, small = masks[c1], masks[c2]
        assert big.sum() > small.sum(), (url, caption)
        assert (_shape_of(big), _shape_of(small)) == (s1, s2), (url, caption)
        (y1, x1), (y2, x2) = (np.argwhere(m).mean(axis=0) for m in (big, small))
        expected = {"above": y1 < y2 - 10, "below": y1 > y2 + 10, "left of": x1 < x2 - 10, "right of": x1 > x2 + 10}
        assert expected[relation], (url, caption)


def test_tsv_for_another_server(tmp_path):
    base = "http://127.0.0.1:40123"
    for name, committed in (("training", "rawdata/captions.tsv"), ("heldout", "heldout/captions.tsv")):
        proc = _ok(_run([sys.executable, GENERATOR, "--tsv", name, "--base-url", base]))
        expected = (DATA / committed).read_text().replace("http://127.0.0.1:8765", base)
        assert proc.stdout == expected
    assert _ok(_run([sys.executable, GENERATOR, "--tsv", "--base-url", base])).stdout.startswith("a ")


def test_png_codec_round_trips_and_reads_every_filter():
    pngio, _, _ = _common()
    rng = np.random.default_rng(0)
    for shape in ((5, 7), (9, 4, 3), (3, 6, 4)):
        pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
        decoded = pngio.decode_png(pngio.encode_png(pixels))
        assert np.array_equal(decoded.reshape(pixels.shape), pixels)
    # a PNG written by another encoder: rows filtered with Sub, Average and Paeth (the codec only writes Up)
    pixels = rng.integers(0, 256, size=(3, 5, 3), dtype=np.uint8)
    rows, prior, raw = pixels.reshape(3, 15).astype(int), np.zeros(15, int), b""
    for kind, row in zip((1, 3, 4), rows):
        left = np.concatenate([[0, 0, 0], row[:-3]])
        upleft = np.concatenate([[0, 0, 0], prior[:-3]])
        if kind == 1:
            pred = left
        elif kind == 3:
            pred = (left + prior) // 2
        else:
            p = left + prior - upleft
            pa, pb, pc = abs(p - left), abs(p - prior), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prior, upleft))
        raw += bytes([kind]) + bytes(((row - pred) % 256).astype(np.uint8))
        prior = row
    ours = pngio.encode_png(pixels)
    ihdr_end = 8 + 8 + 13 + 4  # signature, then the IHDR chunk (length, type, 13 bytes, CRC)
    data = zlib.compress(raw)
    idat = struct.pack(">I", len(data)) + b"IDAT" + data + struct.pack(">I", zlib.crc32(b"IDAT" + data))
    foreign = ours[:ihdr_end] + idat + ours[-12:]
    assert np.array_equal(pngio.decode_png(foreign), pixels)
    with pytest.raises(pngio.PNGError, match="signature"):
        pngio.decode_png(b"GIF89a")


def test_bleu_and_exact_match():
    _, _, captions = _common()
    refs = ["a red circle above a blue square"]
    assert captions.bleu4(refs[0], refs) == pytest.approx(1.0)
    assert captions.exact_match("A red  circle above a blue square", refs) == 1.0
    near = captions.bleu4("a red circle above a blue triangle", refs)
    far = captions.bleu4("a green triangle", refs)
    assert 0.5 < near < 1.0 and 0.0 <= far < 0.2 < near
    assert captions.bleu4("a red circle", ["a red circle"]) == pytest.approx(1.0)  # shorter than 4 tokens
    assert captions.score({"x": "a red circle"}, {"x": ["a red circle"], "y": ["a blue square"]}) == \
        {"exact_match": 0.5, "bleu": 0.5}
    assert captions.image_key("http://h:1/images/img_0001.png") == "img_0001"


# -- the image server and the images stage ---------------------------------------------------------------------------

@pytest.fixture
def server():
    proc = subprocess.Popen([sys.executable, str(SERVER), "--port", "0", "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        base = proc.stdout.readline().strip()
        assert base.startswith("http://127.0.0.1:"), (base, proc.poll())
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read()


def test_serve_serves_the_images_on_a_free_port(server):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{server}/images/img_0000.png", timeout=10) as response:
        assert response.status == 200
        assert response.read() == (DATA / "images" / "img_0000.png").read_bytes()
    with opener.open(f"{server}/heldout/images/heldout_0000.png", timeout=10) as response:
        assert response.read() == (DATA / "heldout" / "images" / "heldout_0000.png").read_bytes()
    for missing in ("/images/", "/images/nope.png", "/../serve.py"):
        with pytest.raises(urllib.error.HTTPError) as err:
            opener.open(f"{server}{missing}", timeout=10)
        assert err.value.code == 404


def test_images_stage_downloads_a_datum(server, tmp_path):
    tsv = _ok(_run([sys.executable, GENERATOR, "--tsv", "--base-url", server])).stdout.splitlines()
    datum = tmp_path / "in" / "captions.tsv"
    datum.mkdir(parents=True)
    (datum / "0000000000000001").write_text("caption\turl\n" + "\n".join(tsv[5:9]) + "\n")  # with a header
    _ok(_run([_stage("images"), tmp_path / "in", tmp_path / "out"], cwd=BUNDLE))
    got = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert got == [f"img_{i:04d}.png" for i in range(5, 9)]
    for name in got:
        assert (tmp_path / "out" / name).read_bytes() == (DATA / "images" / name).read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.tsv").write_text(f"a red circle\t{server}/images/absent.png\n")
    proc = _run([_stage("images"), bad, tmp_path / "out2"], params={"attempts": 1}, tmp=tmp_path, cwd=BUNDLE)
    assert proc.returncode == 1 and "absent.png" in proc.stderr.strip().splitlines()[-1]


# -- features -> consolidate -> model/train -> predict -> evaluate ---------------------------------------------------

@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """The datum pipeline by hand: images in 3 datums, captions in 3 split datums, then the model and predict."""
    tmp = tmp_path_factory.mktemp("captioning")
    images = sorted((DATA / "images").glob("*.png"))
    features = tmp / "consolidate-in" / "features"
    for k in range(3):  # one features run per datum, each into its own output folder
        datum = tmp / "images" / f"datum{k}"
        datum.mkdir(parents=True)
        for path in images[k::3]:
            shutil.copy(path, datum / path.name)
        _ok(_run([_stage("features"), datum, features / f"datum{k}"], cwd=BUNDLE))
    lines = (DATA / "rawdata" / "captions.tsv").read_text().splitlines(keepends=True)
    split = tmp / "consolidate-in" / "captions" / "captions.tsv"
    split.mkdir(parents=True)
    for k in range(3):  # like `trainyard data put rawdata captions.tsv --split line --target-file-datums 100`
        (split / f"{k:016d}").write_text("".join(lines[k * 100:(k + 1) * 100]))
    data = tmp / "data"
    consolidate = _ok(_run([_stage("consolidate"), tmp / "consolidate-in", data / "consolidated"], cwd=BUNDLE))

    params = json.loads((MODEL_DIR / "params.json").read_text())
    params["epochs"] = TEST_EPOCHS
    out = tmp / "out"
    train = _ok(_run([MODEL_DIR / "train", out], params=params, tmp=tmp, cwd=MODEL_DIR, timeout=300,
                     env={"TRAINYARD_DATA_DIR": str(data), "artifacts_directory": str(out / "artifacts"),
                          "TRAINYARD_SOURCE_DIR": str(BUNDLE)}))

    evaluate_in = tmp / "evaluate-in"
    predict = _ok(_run([_stage("predict"), out, DATA / "heldout" / "images", evaluate_in / "predictions"],
                       cwd=BUNDLE, timeout=300))
    (evaluate_in / "captions").mkdir()
    shutil.copy(DATA / "heldout" / "captions.tsv", evaluate_in / "captions" / "captions.tsv")
    evaluate = _ok(_run([_stage("evaluate"), evaluate_in, tmp / "evaluation"], cwd=BUNDLE))
    return {"tmp": tmp, "features": features, "data": data, "out": out, "predictions": evaluate_in / "predictions",
            "evaluation": tmp / "evaluation" / "metrics.json", "consolidate": consolidate, "train": train,
            "predict": predict, "evaluate": evaluate}


def test_features_one_vector_per_image(pipeline):
    files = sorted(pipeline["features"].rglob("*.npy"))
    assert len(files) == TRAIN_IMAGES
    assert {p.parent.name for p in files} == {"datum0", "datum1", "datum2"}  # relative paths are kept
    vector = np.load(files[0], allow_pickle=False)
    assert vector.shape == (FEATURE_DIM,) and vector.dtype == np.float32 and np.isfinite(vector).all()
    _, features, _ = _common()
    assert np.array_equal(vector, features.extract_file(DATA / "images" / files[0].with_suffix(".png").name))


def test_features_are_deterministic_and_errors_are_clear(tmp_path):
    src = tmp_path / "in" / "sub"
    src.mkdir(parents=True)
    shutil.copy(DATA / "images" / "img_0007.png", src)
    for out in ("a", "b"):
        _ok(_run([_stage("features"), tmp_path / "in", tmp_path / out], cwd=BUNDLE))
    first, second = (tmp_path / out / "sub" / "img_0007.npy" for out in ("a", "b"))
    assert first.read_bytes() == second.read_bytes()
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    proc = _run([_stage("features"), tmp_path / "in", tmp_path / "c"], cwd=BUNDLE)
    assert proc.returncode == 1 and "broken.png" in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _run([_stage("features"), empty, tmp_path / "d"], cwd=BUNDLE)
    assert proc.returncode == 1 and "no *.png" in proc.stderr


def test_consolidate_writes_a_pickle_free_joined_dataset(pipeline, tmp_path):
    path = pipeline["data"] / "consolidated" / "dataset.npz"
    with np.load(path, allow_pickle=False) as npz:
        data = {name: npz[name] for name in npz.files}
    assert set(data) == {"features", "captions", "images", "urls", "feature_version"}
    assert data["features"].shape == (TRAIN_IMAGES, FEATURE_DIM) and data["features"].dtype == np.float32
    for name in ("captions", "images", "urls"):
        assert data[name].shape == (TRAIN_IMAGES,) and data[name].dtype.kind == "U"
    assert str(data["feature_version"]) == "rgb8-regions4-v1"
    assert list(data["images"]) == sorted(data["images"])
    rows = dict((url.rsplit("/", 1)[1][:-4], caption) for caption, url in _tsv(DATA / "rawdata" / "captions.tsv"))
    assert {k: c for k, c in zip(data["images"], data["captions"])} == rows
    _, features, _ = _common()
    row = list(data["images"]).index("img_0042")
    assert np.array_equal(data["features"][row], features.extract_file(DATA / "images" / "img_0042.png"))

    # the same rows in other datums (one TSV with a header, features flat) give the same bytes
    other = tmp_path / "in"
    (other / "captions").mkdir(parents=True)
    (other / "captions" / "all.tsv").write_text("caption\turl\n" + (DATA / "rawdata" / "captions.tsv").read_text())
    shutil.copytree(pipeline["features"] / "datum1", other / "features")
    for path_ in (pipeline["features"] / "datum0").glob("*.npy"):
        shutil.copy(path_, other / "features")
    for path_ in (pipeline["features"] / "datum2").glob("*.npy"):
        shutil.copy(path_, other / "features" / (path_.stem + ".png.npy"))  # the other accepted name
    _ok(_run([_stage("consolidate"), other, tmp_path / "out"], cwd=BUNDLE))
    assert (tmp_path / "out" / "dataset.npz").read_bytes() == path.read_bytes()

    # a caption whose image has no features is an error naming it
    (other / "features" / "img_0123.npy").unlink()
    proc = _run([_stage("consolidate"), other, tmp_path / "out2"], cwd=BUNDLE)
    assert proc.returncode == 1
    assert "1 caption(s) have no features" in proc.stderr and "img_0123" in proc.stderr, proc.stderr
    assert not (tmp_path / "out2" / "dataset.npz").exists()


def test_train_beats_chance_and_saves_the_model(pipeline):
    out, proc = pipeline["out"], pipeline["train"]
    assert proc.stdout.startswith(f"{DEVICE_LINE}CPU:0 | GPUs: none (CUDA_VISIBLE_DEVICES='')"), proc.stdout[:500]
    metrics = json.loads((out / "metrics" / "metrics.json").read_text())
    assert set(metrics) == {"exact_match", "bleu", "chance_exact_match", "chance_bleu", "loss", "val_loss",
                            "train_images", "val_images", "train_seconds"}
    for name, value in metrics.items():
        assert isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), name
    assert metrics["train_images"] + metrics["val_images"] == TRAIN_IMAGES and metrics["val_images"] >= 40
    # observed here with 15 epochs: exact_match ~0.9, bleu ~0.98; chance (the most frequent caption) 0.0 / ~0.25
    assert metrics["chance_exact_match"] <= 0.1
    assert metrics["exact_match"] >= 0.6 and metrics["exact_match"] >= metrics["chance_exact_match"] + 0.5, metrics
    assert metrics["bleu"] >= 0.85 and metrics["bleu"] >= metrics["chance_bleu"] + 0.4, metrics
    assert (out / "model" / "model.keras").stat().st_size > 0
    vocab = json.loads((out / "model" / "vocab.json").read_text())
    assert vocab["tokens"][:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert {"red", "circle", "above", "left", "of"} <= set(vocab["tokens"])
    assert vocab["feature_version"] == "rgb8-regions4-v1" and vocab["feature_dim"] == FEATURE_DIM
    history = json.loads((out / "artifacts" / "history.json").read_text())
    assert len(history["loss"]) == TEST_EPOCHS and history["loss"][-1] < history["loss"][0]
    assert (out / "artifacts" / "val_predictions.tsv").read_text().count("\n") == metrics["val_images"] + 1


def test_predict_captions_every_held_out_image(pipeline):
    predictions = sorted(pipeline["predictions"].glob("*.txt"))
    assert [p.name for p in predictions] == [f"heldout_{i:04d}.png.txt" for i in range(HELDOUT_IMAGES)]
    _, _, captions = _common()
    vocab = set(json.loads((pipeline["out"] / "model" / "vocab.json").read_text())["tokens"])
    for path in predictions:
        text = path.read_text()
        assert text.endswith("\n") and text.strip() and text.count("\n") == 1
        assert set(captions.tokenize(text)) <= vocab - {"<pad>", "<start>", "<end>", "<unk>"}
    assert "predict: 60 image(s) captioned" in pipeline["predict"].stdout
    # the held-out images were never trained on; observed here: exact_match ~0.9 (chance: ~0.02)
    metrics = json.loads(pipeline["evaluation"].read_text())
    assert metrics["images"] == HELDOUT_IMAGES and metrics["missing"] == 0
    assert metrics["exact_match"] >= 0.6 and metrics["bleu"] >= 0.85, metrics
    train_captions = [c for c, _ in _tsv(DATA / "rawdata" / "captions.tsv")]
    guess = captions.most_frequent(train_captions)
    refs = {url.rsplit("/", 1)[1][:-4]: [c] for c, url in _tsv(DATA / "heldout" / "captions.tsv")}
    chance = captions.score({k: guess for k in refs}, refs)["exact_match"]
    assert metrics["exact_match"] >= chance + 0.5


def test_predict_refuses_a_model_of_other_features(pipeline, tmp_path):
    """The cross form (CROSS_DIR/model, CROSS_DIR/images) reaches the same checks as MODEL_DIR INPUT_DIR."""
    cross = tmp_path / "cross"
    shutil.copytree(pipeline["out"], cross / "model")  # the whole <out>: predict finds model/ below it
    shutil.copytree(DATA / "heldout" / "images", cross / "images")
    vocab = cross / "model" / "model" / "vocab.json"
    vocab.write_text(json.dumps({**json.loads(vocab.read_text()), "feature_version": "cnn-v9"}))
    proc = _run([_stage("predict"), cross, tmp_path / "out"], cwd=BUNDLE)
    assert proc.returncode == 1 and "cnn-v9" in proc.stderr and "retrain" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_train_without_a_dataset_says_what_it_needs(tmp_path):
    (tmp_path / "data").mkdir()
    proc = _run([MODEL_DIR / "train", tmp_path / "out"], cwd=MODEL_DIR,
                env={"TRAINYARD_DATA_DIR": str(tmp_path / "data")})
    assert proc.returncode == 1 and "dataset.npz" in proc.stderr and "consolidate" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_the_bundle_loads_as_kaos_and_pins_the_tested_tensorflow():
    loaded = check_tensorflow_bundle(BUNDLE)
    for name in STAGES:
        assert os.access(_stage(name), os.X_OK) and f"steps/{name}/transform" in loaded.files, name
    assert os.access(MODEL_DIR / "train", os.X_OK)
    params = json.loads((MODEL_DIR / "params.json").read_text())
    assert set(params) == {"epochs", "batch_size", "learning_rate", "units", "embedding_dim", "dropout",
                           "validation_split"}
