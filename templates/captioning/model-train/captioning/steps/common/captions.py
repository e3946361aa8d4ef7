"""Captions: the rawdata TSV format, image keys, tokens, and the scores (exact match, BLEU-4). numpy only.

**TSV.** One caption per line, ``caption<TAB>url``, UTF-8. Blank lines and a header line ``caption<TAB>url``
(``trainyard data put --header`` repeats it into every datum) are skipped. Datum files may have any name (split
datums are ``captions.tsv/0000000000000000``...).

**Image key.** Images are joined by the file name of the URL's path without its extension:
``http://host/images/img_0001.png`` -> ``img_0001``. Feature files ``img_0001.npy`` (or ``img_0001.png.npy``) and
predictions ``img_0001.txt`` use the same key.

**Tokens.** Captions are lower-cased and split on whitespace; punctuation is kept as part of the word.

**Scores** are per image; an image may have several reference captions:

* exact match: the predicted token sequence equals one of the references';
* BLEU-4: sentence BLEU with uniform weights over 1- to 4-grams, n-gram counts clipped by the maximum count in
  any reference, Lin & Och's add-one smoothing for n = 2..4 ((matches + 1) / (candidates + 1); unigram precision
  is not smoothed), and the brevity penalty against the reference length closest to the candidate's
  (the shorter on ties). The reported figure is the mean over images, between 0 and 1.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)  # PAD is id 0


class CaptionError(ValueError):
    """Bad caption data; the message names the file and line."""


def image_key(name_or_url: str) -> str:
    """The join key of an image: its file name without extension (``.../img_0001.png`` -> ``img_0001``)."""
    path = unquote(urlsplit(name_or_url).path) if "://" in name_or_url else name_or_url
    name = PurePosixPath(path).name
    key = name.rsplit(".", 1)[0] if "." in name else name
    if not key or key in (".", ".."):
        raise CaptionError(f"no image file name in {name_or_url!r}")
    return key


def feature_key(path: Path) -> str:
    """Key of a feature file: ``img_0001.npy`` and ``img_0001.png.npy`` both give ``img_0001``."""
    name = path.name.removesuffix(".npy")
    return image_key(name)


def parse_tsv(text: str, source: str = "<tsv>") -> list[tuple[str, str]]:
    """(caption, url) pairs of a caption TSV; errors name the source and the line."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise CaptionError(f"{source}:{number}: expected 'caption<TAB>url', got {len(fields)} field(s): "
                               f"{line[:80]!r}")
        caption, url = fields[0].strip(), fields[1].strip()
        if (caption.lower(), url.lower()) == ("caption", "url"):
            continue  # a header line
        if not caption or not url:
            raise CaptionError(f"{source}:{number}: empty caption or url: {line[:80]!r}")
        rows.append((caption, url))
    return rows


def read_tsv_tree(root: Path) -> list[tuple[str, str, str]]:
    """(caption, url, source) rows of every file under root (recursively, hidden files skipped), sorted by path."""
    rows = []
    files = sorted(p for p in Path(root).rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise CaptionError(f"{path}: not UTF-8 text ({exc})") from None
        rows.extend((c, u, str(path)) for c, u in parse_tsv(text, str(path)))
    return rows


def tokenize(caption: str) -> list[str]:
    return caption.lower().split()


def normalize(caption: str) -> str:
    return " ".join(tokenize(caption))


def build_vocab(captions) -> list[str]:
    """Specials first (PAD = 0), then every token of the captions, most frequent first (ties alphabetical)."""
    counts = Counter(t for c in captions for t in tokenize(c))
    return list(SPECIALS) + sorted(counts, key=lambda t: (-counts[t], t))


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu4(candidate: str, references: list[str]) -> float:
    """Smoothed sentence BLEU-4 of candidate against references (see the module doc)."""
    cand = tokenize(candidate)
    refs = [tokenize(r) for r in references]
    if not cand or not refs:
        return 0.0
    log_sum = 0.0
    for n in range(1, 5):
        counts = _ngrams(cand, n)
        max_ref = Counter()
        for ref in refs:
            for gram, count in _ngrams(ref, n).items():
                max_ref[gram] = max(max_ref[gram], count)
        matches = sum(min(count, max_ref[gram]) for gram, count in counts.items())
        total = sum(counts.values())
        if n == 1:
            if matches == 0:
                return 0.0
            precision = matches / total
        else:
            precision = (matches + 1) / (total + 1)
        log_sum += math.log(precision) / 4
    closest = min((abs(len(r) - len(cand)), len(r)) for r in refs)[1]
    brevity = 1.0 if len(cand) > closest else math.exp(1 - closest / len(cand))
    return brevity * math.exp(log_sum)


def exact_match(candidate: str, references: list[str]) -> float:
    return 1.0 if normalize(candidate) in {normalize(r) for r in references} else 0.0


def score(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """Mean exact match and BLEU-4 over the images of ``references``; a missing prediction scores 0."""
    if not references:
        raise CaptionError("no reference captions to score against")
    em = bleu = 0.0
    for key, refs in references.items():
        pred = predictions.get(key, "")
        em += exact_match(pred, refs)
        bleu += bleu4(pred, refs)
    n = len(references)
    return {"exact_match": em / n, "bleu": bleu / n}


def most_frequent(captions) -> str:
    """The most frequent caption (normalized; ties alphabetical): the chance baseline's guess."""
    counts = Counter(normalize(c) for c in captions)
    return min(counts, key=lambda c: (-counts[c], c))


def encode(captions, vocab: list[str], length: int):
    """Teacher-forcing arrays for captions: (inputs, targets), each (N, length) int32, PAD-filled.

    inputs are ``<start> w1 .. wn``, targets ``w1 .. wn <end>``; captions longer than length - 1 tokens are cut.
    """
    import numpy as np

    index = {t: i for i, t in enumerate(vocab)}
    inputs = np.zeros((len(captions), length), np.int32)
    targets = np.zeros((len(captions), length), np.int32)
    for row, caption in enumerate(captions):
        ids = [index.get(t, index[UNK]) for t in tokenize(caption)][: length - 1]
        inputs[row, : len(ids) + 1] = [index[START], *ids]
        targets[row, : len(ids) + 1] = [*ids, index[END]]
    return inputs, targets


def greedy_decode(logits_fn, features, vocab: list[str], length: int) -> list[str]:
    """Captions for features, one token at a time, always taking the most likely next token.

    ``logits_fn(features, tokens)`` returns (N, length, V) scores for (N, D) features and (N, length) input tokens;
    a causal decoder's output at step t depends only on tokens 0..t, so the PAD-filled tail does not matter.
    """
    import numpy as np

    index = {t: i for i, t in enumerate(vocab)}
    n = len(features)
    tokens = np.zeros((n, length), np.int32)
    tokens[:, 0] = index[START]
    words: list[list[str]] = [[] for _ in range(n)]
    done = np.zeros(n, bool)
    banned = [index[PAD], index[START], index[UNK]]
    for step in range(length):
        scores = np.array(logits_fn(features, tokens))[:, step, :].copy()
        scores[:, banned] = -np.inf
        chosen = scores.argmax(axis=1)
        for row in np.flatnonzero(~done):
            if chosen[row] == index[END]:
                done[row] = True
            else:
                words[row].append(vocab[chosen[row]])
        if done.all() or step + 1 == length:
            break
        tokens[:, step + 1] = chosen
    return [" ".join(w) for w in words]
