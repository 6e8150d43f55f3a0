"""The topic rule: is a request about what the model was fine-tuned on? Data-driven, no keyword list.

A *topic profile* is built from the fine-tune's own training prompts: TF-IDF over character n-grams (3 to 5 characters
inside word boundaries that occur in at least two training prompts, sublinear term frequency: scikit-learn's
`TfidfVectorizer(analyzer="char_wb", min_df=2)`); a request
scores the highest cosine similarity to any training prompt (its nearest neighbour), and its threshold is calibrated on
held-out in-topic prompts — the validation split — so that a chosen share of them pass (`calibrate`; default 99 %).
With fewer than MIN_CALIBRATION_PROMPTS held-out prompts, each training prompt is scored against the others instead
(leave-one-out), and the profile says so.

The profile is one JSON file (`Profile.doc`: the vocabulary, the idf weights, the training prompts' vectors and the
sorted calibration scores) — no pickle, so the guard never runs code from the file it loads, and any share can be
chosen at serving time from the same calibration (`Profile.threshold_for`). The builder scores the calibration prompts
with the profile read back from its own JSON, so the guard computes exactly the scores the threshold was chosen on.

Built by the trainer's evaluate stage (`tuneloop_trainer.evaluation.topic`, DIR/topic-profile.json, recorded on the
ModelVersion as spec.topicProfile) and loaded by the guard (`python -m tuneloop.guard --topic-profile FILE`).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FORMAT = "tuneloop.dev/topic-profile"
VERSION = 1
METHOD = "tfidf-char_wb-3-5-nearest-neighbour-cosine"
DEFAULT_PASS_RATE = 0.99
NGRAM_RANGE = (3, 5)
MAX_FEATURES = 20_000  # the vocabulary kept (most frequent n-grams), which bounds the file with MAX_PROTOTYPES
MIN_DF = 2  # n-grams of one training prompt only (its order number, a name) say nothing about the topic
MAX_PROTOTYPES = 2_000  # training prompts kept as neighbours (a seeded sample beyond this)
MIN_TRAIN_PROMPTS = 10
MIN_CALIBRATION_PROMPTS = 5
DECIMALS = 4  # of the idf weights and vectors in the file (the calibration scores are computed on the rounded ones)
CALIBRATION_VALIDATION = "validation"
CALIBRATION_LEAVE_ONE_OUT = "train-leave-one-out"


def calibrate(scores: Sequence[float], share: float) -> float:
    """The highest threshold that at least `share` of `scores` reach (a score passes when it is >= the threshold):
    the k-th highest score, k = ⌈share · n⌉."""
    if not scores:
        raise ValueError("no calibration scores")
    if not 0 < share <= 1:
        raise ValueError(f"the share of prompts that pass must be in (0, 1], got {share}")
    k = max(1, math.ceil(share * len(scores) - 1e-9))  # 0.99 · 100 is 99.00000000000001 in floating point
    return float(sorted(scores, reverse=True)[k - 1])


def _vectorizer(vocabulary: dict[str, int] | None = None, min_df: int = 1) -> Any:
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer="char_wb", ngram_range=NGRAM_RANGE, lowercase=True, sublinear_tf=True, norm="l2", min_df=min_df,
                           max_features=None if vocabulary is not None else MAX_FEATURES, vocabulary=vocabulary, dtype=np.float64)


class Profile:
    """A topic profile read from its JSON document (`load`, or `build`'s result)."""

    def __init__(self, doc: dict[str, Any]):
        import numpy as np
        from scipy.sparse import csr_matrix

        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} v{VERSION} document (format {doc.get('format')!r}, version {doc.get('version')!r})")
        vocabulary = list(doc["vocabulary"])
        idf = np.asarray(doc["idf"], dtype=np.float64)
        if len(vocabulary) != len(idf) or len(set(vocabulary)) != len(vocabulary):
            raise ValueError("the topic profile's vocabulary and idf weights do not match")
        self.doc = doc
        self._vectorizer = _vectorizer({term: i for i, term in enumerate(vocabulary)})
        self._vectorizer.idf_ = idf
        p = doc["prototypes"]
        self._prototypes = csr_matrix((np.asarray(p["data"], dtype=np.float64), np.asarray(p["indices"], dtype=np.int64),
                                       np.asarray(p["indptr"], dtype=np.int64)), shape=(len(p["indptr"]) - 1, len(vocabulary)))
        calibration = doc.get("calibration") or {}
        self.calibration: list[float] = sorted(float(s) for s in calibration.get("scores") or [])

    def scores(self, texts: Sequence[str]) -> list[float]:
        """Each text's similarity to the topic: its highest cosine similarity to a training prompt (0: nothing in common)."""
        if not texts:
            return []
        sims = self._vectorizer.transform(list(texts)) @ self._prototypes.T
        return [float(v) for v in sims.max(axis=1).toarray().ravel()]

    def threshold_for(self, share: float) -> float:
        """The similarity threshold at which `share` of the calibration prompts pass."""
        return calibrate(self.calibration, share)

    @property
    def threshold(self) -> float:
        return float(self.doc["threshold"])


def load(path: str | Path) -> Profile:
    return Profile(json.loads(Path(path).read_text()))


def _round(values: Any) -> list[float]:
    return [round(float(v), DECIMALS) for v in values]


def build(train: Sequence[str], held_out: Sequence[str] = (), *, pass_rate: float = DEFAULT_PASS_RATE, seed: int = 0) -> Profile:
    """The profile of the training prompts `train`, its threshold calibrated on the in-topic prompts `held_out` (the
    validation split) so that `pass_rate` of them pass; leave-one-out on `train` when `held_out` has fewer than
    MIN_CALIBRATION_PROMPTS."""
    import numpy as np

    prompts = list(dict.fromkeys(t.strip() for t in train if t and t.strip()))  # each distinct prompt once, in order
    if len(prompts) < MIN_TRAIN_PROMPTS:
        raise ValueError(f"a topic profile needs at least {MIN_TRAIN_PROMPTS} distinct training prompts, got {len(prompts)}")
    if len(prompts) > MAX_PROTOTYPES:
        keep = sorted(random.Random(seed).sample(range(len(prompts)), MAX_PROTOTYPES))
        prompts = [prompts[i] for i in keep]
    vec = _vectorizer(min_df=MIN_DF)
    try:
        matrix = vec.fit_transform(prompts).tocsr()
    except ValueError:  # every n-gram in one prompt only (a handful of unrelated prompts): keep them all
        vec = _vectorizer(min_df=1)
        matrix = vec.fit_transform(prompts).tocsr()
    matrix.sort_indices()
    vocabulary = [""] * len(vec.vocabulary_)
    for term, i in vec.vocabulary_.items():
        vocabulary[i] = term
    doc: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "method": METHOD,
        "vectorizer": {"analyzer": "char_wb", "ngramRange": list(NGRAM_RANGE), "sublinearTf": True, "lowercase": True, "minDf": vec.min_df},
        "trainPrompts": len(prompts),
        "vocabulary": vocabulary,
        "idf": _round(vec.idf_),
        "prototypes": {"indptr": [int(i) for i in matrix.indptr], "indices": [int(i) for i in matrix.indices], "data": _round(matrix.data)},
    }
    profile = Profile(doc)  # scores from the rounded weights: exactly what the guard computes from the file
    held = [t.strip() for t in held_out if t and t.strip()]
    if len(held) >= MIN_CALIBRATION_PROMPTS:
        source, scores = CALIBRATION_VALIDATION, profile.scores(held)
    else:
        source = CALIBRATION_LEAVE_ONE_OUT
        sims = (profile._prototypes @ profile._prototypes.T).toarray()
        np.fill_diagonal(sims, -np.inf)
        scores = [max(0.0, float(s)) for s in sims.max(axis=1)]
    doc["calibration"] = {"source": source, "prompts": len(scores), "scores": sorted(scores)}
    doc["passRate"] = pass_rate
    doc["threshold"] = calibrate(scores, pass_rate)
    return Profile(doc)


def write(profile: Profile, path: str | Path) -> int:
    """Write the profile's JSON (compact); its size in bytes."""
    text = json.dumps(profile.doc, separators=(",", ":"), ensure_ascii=False)
    Path(path).write_text(text, encoding="utf-8")
    return len(text.encode())
