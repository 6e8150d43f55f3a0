"""The harmful-content check: the offensive-language classifier of alt-profanity-check (a maintained fork of
profanity-check: a linear SVM over TF-IDF word features, calibrated to a probability, trained on ~200k human-labelled
texts — hate speech, insults, obscenity — from Davidson et al.'s and the Wikipedia toxic-comment data sets). The trained
model ships inside the wheel (scikit-learn joblib files of the package itself), so nothing is downloaded at run time.

`load()` returns a scorer: texts → the probability that each is offensive; a text at or above the guard's threshold is
harmful. Import cost ~1 s and most of the guard's ~215 MiB resident (scikit-learn, scipy); one short text scores in
5-10 ms on a loaded 2-core CPU.
Offensive language, not intent: docs/guardrails.md has what it catches and what it misses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

DISTRIBUTION = "alt-profanity-check"
DEFAULT_THRESHOLD = 0.9

Scorer = Callable[[Sequence[str]], list[float]]


def load() -> Scorer:
    """The classifier (loaded once; raises ImportError with the install hint when the package is missing)."""
    try:
        from profanity_check import predict_prob
    except ImportError as exc:
        raise ImportError(f"the harmful-content check needs {DISTRIBUTION} (pip install 'tuneloop[guard]'): {exc}") from exc

    def score(texts: Sequence[str]) -> list[float]:
        return [float(p) for p in predict_prob(list(texts))] if texts else []

    return score


def version() -> str:
    from importlib.metadata import version as dist_version

    return dist_version(DISTRIBUTION)
