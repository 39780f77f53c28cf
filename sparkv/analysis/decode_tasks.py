"""Generated long-context tasks for decode quality: needle in a haystack at several depths, and RULER-style
multi-key needles and variable tracking (Hsieh et al., RULER, 2024: the task shapes, generated here in-house;
nothing is downloaded). A task is a prompt and the answer string a correct generation contains.
`document_tasks` turns questions on real documents (LEval JSONL, read in place) into tasks scored by their
dataset's metric instead."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sparkv.analysis.documents import load_documents
from sparkv.analysis.scoring import score

_FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ",
    "A quiet morning passed at the harbour while the boats rocked gently against the pier. ",
    "The committee reviewed the quarterly figures and agreed to meet again next month. ",
    "Rain fell over the hills, and the river carried leaves down to the old stone bridge. ",
)
_KEYS = ("apple", "river", "falcon", "copper", "meadow", "lantern", "glacier", "harbor", "violet", "summit")


@dataclass(frozen=True)
class Task:
    kind: str  # "niah", "multikey", "vt"
    prompt: str  # the whole user message: haystack, then the question
    answer: str  # a correct generation contains this string
    depth: float  # where the needle sits, 0 (start) .. 1 (end); 0 for a document question
    seed: int
    metric: str = ""  # "": correct when the answer string appears; else a scoring metric (exam, f1, rouge, contains)

    def score(self, text: str) -> float:
        """The generation's score in [0, 1]."""
        if not self.metric:
            return float(self.answer in text)
        return score(self.metric, text, self.answer)


def _haystack(words: int, rng: random.Random) -> list[str]:
    out: list[str] = []
    while sum(len(s.split()) for s in out) < words:
        out.append(rng.choice(_FILLER))
    return out


def _insert(sentences: list[str], depth: float, text: str) -> list[str]:
    at = round(depth * len(sentences))
    return [*sentences[:at], text + " ", *sentences[at:]]


def niah(words: int, depth: float, seed: int) -> Task:
    """One needle: a 7-digit magic number for a key, asked for at the end."""
    rng = random.Random(seed)
    key, value = rng.choice(_KEYS), str(rng.randint(1_000_000, 9_999_999))
    text = _insert(_haystack(words, rng), depth, f"The special magic number for {key} is {value}.")
    question = f"What is the special magic number for {key}? Answer with the number only."
    return Task("niah", "".join(text) + "\n\n" + question, value, depth, seed)


def multikey(words: int, depth: float, seed: int, needles: int = 4) -> Task:
    """Several needles with different keys; the question names one (RULER niah_multikey_1)."""
    rng = random.Random(seed)
    keys = rng.sample(_KEYS, needles)
    values = [str(rng.randint(1_000_000, 9_999_999)) for _ in keys]
    sentences = _haystack(words, rng)
    target = rng.randrange(needles)
    for i, (k, v) in enumerate(zip(keys, values, strict=True)):
        d = depth if i == target else rng.random()
        sentences = _insert(sentences, d, f"The special magic number for {k} is {v}.")
    question = f"What is the special magic number for {keys[target]}? Answer with the number only."
    return Task("multikey", "".join(sentences) + "\n\n" + question, values[target], depth, seed)


def variable_tracking(words: int, depth: float, seed: int, hops: int = 2) -> Task:
    """A chain VAR A = value, VAR B = VAR A, ...; asked for the value of the chain's last variable (RULER vt)."""
    rng = random.Random(seed)
    names = [f"X{rng.randint(10, 99)}{chr(65 + i)}" for i in range(hops + 1)]
    value = str(rng.randint(10_000, 99_999))
    sentences = _haystack(words, rng)
    span = 0.3 / max(hops, 1)
    for i, name in enumerate(names):
        rhs = value if i == 0 else f"VAR {names[i - 1]}"
        sentences = _insert(sentences, min(1.0, depth + i * span), f"VAR {name} = {rhs}.")
    question = f"What is the numeric value of VAR {names[-1]}? Answer with the number only."
    return Task("vt", "".join(sentences) + "\n\n" + question, value, depth, seed)


TASKS: dict[str, Callable[[int, float, int], Task]] = {"niah": niah, "multikey": multikey, "vt": variable_tracking}
WORDS_PER_TOKEN = 0.75  # rough English ratio: size a haystack from a token target, then trim by the tokenizer


def make_tasks(kinds: list[str], target_tokens: int, depths: list[float], seeds: int) -> list[Task]:
    """Every kind x depth x seed, each sized to roughly `target_tokens` (the runner trims to fit exactly)."""
    words = int(target_tokens * WORDS_PER_TOKEN)
    return [TASKS[k](words, d, s) for k in kinds for d in depths for s in range(seeds)]


def document_tasks(path: str, documents: int, questions: int) -> list[Task]:
    """The first `questions` questions of each of the first `documents` documents of an LEval-format JSONL file:
    the document, then the question (its blank lines closed up: the runner trims the text before the last blank
    line) and its metric's instruction; kind = the file's stem, seed = 1000 x document + question."""
    from sparkv.analysis.quality import INSTRUCTIONS  # beside the torch-side quality study

    out = []
    for doc in load_documents(path, limit=documents):
        label = Path(doc.source).stem
        for j, (question, reference) in enumerate(doc.questions[:questions]):
            ask = question.replace("\r", "").strip()
            while "\n\n" in ask:
                ask = ask.replace("\n\n", "\n")
            prompt = f"{doc.text}\n\n{ask}\n{INSTRUCTIONS[doc.metric]}"
            out.append(Task(label, prompt, reference, 0.0, 1000 * doc.index + j, doc.metric))
    return out
