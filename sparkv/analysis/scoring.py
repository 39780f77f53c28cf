"""Answer scores in [0, 1] against a reference: exact option letter, token F1, ROUGE-L, containment.

LEval scores its closed-ended tasks by exam (the option letter), its open QA by token F1 and its
summaries by ROUGE-L; `contains` (the normalised reference appears in the normalised answer) suits short
factual answers such as the built-in logbook's password. No torch here: the commands import it freely.
"""

from __future__ import annotations

import re
import string
from collections import Counter

METRICS = ("exam", "f1", "rouge", "contains")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    """Token-overlap F1 of the normalised strings, in [0, 1]."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row at a time)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (beta 1) over normalised tokens: LCS-based precision and recall."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def option_letter(text: str) -> str | None:
    """The option an answer names: the first "(X)", else "X)", "X." or "X:", else a standalone capital A-D."""
    for pattern in (r"\(([A-D])\)", r"\b([A-D])[).:]", r"\b([A-D])\b"):
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    return None


def option_match(prediction: str, reference: str) -> float:
    """1.0 when both name the same option letter, else 0.0."""
    want = option_letter(reference)
    return float(want is not None and option_letter(prediction) == want)


def contains(prediction: str, reference: str) -> float:
    """1.0 when the normalised reference appears in the normalised prediction (and is not empty)."""
    ref = normalize_answer(reference)
    return float(bool(ref) and f" {ref} " in f" {normalize_answer(prediction)} ")


def score(metric: str, prediction: str, reference: str) -> float:
    """The score of `prediction` by `metric` (one of METRICS)."""
    if metric == "exam":
        return option_match(prediction, reference)
    if metric == "f1":
        return token_f1(prediction, reference)
    if metric == "rouge":
        return rouge_l(prediction, reference)
    if metric == "contains":
        return contains(prediction, reference)
    raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")


def matches(metric: str, prediction: str, reference: str) -> bool:
    """Whether an answer counts as right: the option or containment matches, or F1 / ROUGE-L >= 0.5."""
    if metric in ("exam", "contains"):
        return score(metric, prediction, reference) == 1.0
    return score(metric, prediction, reference) >= 0.5 or contains(prediction, reference) == 1.0
