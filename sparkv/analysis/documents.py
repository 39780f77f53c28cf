"""Documents with questions and reference answers, from the built-in logbook or any JSONL file.

A document argument is `builtin` or `FILE.jsonl[:INDEX][?KEY=VALUE&...]`:

    builtin                                   the generated station logbook (no download)
    data/quality.jsonl                        the first record of an LEval-format file
    data/quality.jsonl:3                      its fourth record (0-based line among non-blank lines)
    notes.jsonl?context=passage&question=q&answer=a&metric=f1
                                              a JSONL file whose fields have other names

LEval records are `{"input": doc, "instructions": [question, ...], "outputs": [answer, ...],
"evaluation": "exam" | "f1" | "rouge"}`; those are the default field names. A question or answer field
may hold one string or a list (questions and answers are paired in order). The metric is `metric=` if
given, else the record's `evaluation`, else token F1 (`contains` for the built-in logbook).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from sparkv.analysis.scoring import METRICS
from sparkv.core.errors import UserError

FIELD_KEYS = {"context": "input", "question": "instructions", "answer": "outputs"}


@dataclass(frozen=True)
class Document:
    """One document and the questions asked about it."""

    source: str  # file path, or "builtin"
    index: int  # record (0-based, among non-blank lines)
    text: str
    questions: tuple[tuple[str, str], ...]  # (question, reference answer)
    metric: str  # how answers are scored: one of sparkv.analysis.scoring.METRICS


@dataclass(frozen=True)
class DocumentSpec:
    """A parsed document argument."""

    path: str  # "builtin" or a JSONL path
    index: int | None  # one record, or None for all of them
    fields: dict[str, str]  # context/question/answer -> field name in the records
    metric: str | None  # forced metric, or None (the record's `evaluation`, else f1)


def parse_document_spec(text: str) -> DocumentSpec:
    """Split `FILE.jsonl[:INDEX][?context=F&question=F&answer=F&metric=M]` (module docstring)."""
    head, _, query = text.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    unknown = sorted(set(options) - {*FIELD_KEYS, "metric"})
    if unknown:
        raise UserError(f"document {text!r}: unknown option(s) {', '.join(unknown)}; "
                        f"expected context, question, answer, metric")  # fmt: skip
    metric = options.pop("metric", None)
    if metric is not None and metric not in METRICS:
        raise UserError(f"document {text!r}: metric must be one of {', '.join(METRICS)}, got {metric!r}")
    index: int | None = None
    path = head
    stem, colon, tail = head.rpartition(":")
    if colon and tail.isdigit() and stem:
        path, index = stem, int(tail)
    return DocumentSpec(path, index, {**FIELD_KEYS, **options}, metric)


def _texts(value: Any, what: str, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return [str(v) for v in value]
    raise UserError(f"{where}: field {what} must be a string or a list of strings, got {type(value).__name__}")


def _record_document(record: Any, spec: DocumentSpec, index: int, where: str) -> Document:
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object per line, got {type(record).__name__}")
    missing = [name for name in spec.fields.values() if name not in record]
    if missing:
        raise UserError(f"{where}: no field(s) {', '.join(missing)}; the record has {', '.join(sorted(record))} "
                        f"(name them with ?context=F&question=F&answer=F)")  # fmt: skip
    f = spec.fields
    text = _texts(record[f["context"]], f["context"], where)
    questions = _texts(record[f["question"]], f["question"], where)
    answers = _texts(record[f["answer"]], f["answer"], where)
    if len(questions) == 1 and len(answers) > 1:
        answers = answers[:1]  # several references for one question: score against the first
    evaluation = str(record.get("evaluation", "")).lower()
    metric = spec.metric or (evaluation if evaluation in METRICS else "f1")
    return Document(spec.path, index, "\n".join(text), tuple(zip(questions, answers, strict=False)), metric)


def load_documents(text: str, context_tokens: int = 4096, limit: int | None = None) -> list[Document]:
    """The documents a document argument names (one for `builtin` or `FILE:INDEX`), at most `limit`."""
    spec = parse_document_spec(text)
    if spec.path == "builtin":
        from sparkv.executor.model.document import TOKENS_PER_ENTRY, station_logbook

        doc = station_logbook(entries=max(8, int(context_tokens / TOKENS_PER_ENTRY)))
        return [Document("builtin", 0, doc.text, ((doc.question, doc.answer),), spec.metric or "contains")]
    path = Path(spec.path)
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        raise UserError(f"document file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read document file {path}: {exc}") from None
    if not lines:
        raise UserError(f"document file {path} holds no records")
    if spec.index is not None and not 0 <= spec.index < len(lines):
        raise UserError(f"{path} holds {len(lines)} documents; index {spec.index} is out of range")
    chosen = [spec.index] if spec.index is not None else list(range(len(lines)))[:limit]
    out = []
    for i in chosen:
        where = f"{path}:{i + 1}"
        try:
            record = json.loads(lines[i])
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not JSON ({exc.msg})") from None
        out.append(_record_document(record, spec, i, where))
    return out


def load_document(text: str, context_tokens: int = 4096) -> tuple[str, str, str, str]:
    """(context, first question, its reference answer, metric) of one document argument."""
    doc = load_documents(text, context_tokens, limit=1)[0]
    if not doc.questions:
        raise UserError(f"document {text!r} has no question")
    question, answer = doc.questions[0]
    return doc.text, question, answer, doc.metric
