"""Documents from any JSONL (LEval's fields or named ones) and the scores answers get: exam, F1, ROUGE-L."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparkv.analysis.documents import load_document, load_documents, parse_document_spec
from sparkv.analysis.scoring import contains, matches, rouge_l, score, token_f1
from sparkv.core.errors import UserError


def write_jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_a_document_argument_splits_into_path_index_fields_and_metric() -> None:
    spec = parse_document_spec("data/x.jsonl:3?context=passage&answer=a&metric=rouge")
    assert (spec.path, spec.index, spec.metric) == ("data/x.jsonl", 3, "rouge")
    assert spec.fields == {"context": "passage", "question": "instructions", "answer": "a"}
    with pytest.raises(UserError, match="unknown option"):
        parse_document_spec("x.jsonl?colour=red")
    with pytest.raises(UserError, match="metric must be"):
        parse_document_spec("x.jsonl?metric=bleu")


def test_leval_records_and_named_fields(tmp_path: Path) -> None:
    leval = write_jsonl(tmp_path / "l.jsonl", [
        {"input": "doc one", "instructions": ["q1", "q2"], "outputs": ["a1", "a2"], "evaluation": "rouge"},
        {"input": "doc two", "instructions": ["q3"], "outputs": ["a3"], "evaluation": "exam"},
    ])  # fmt: skip
    docs = load_documents(str(leval))
    assert [d.metric for d in docs] == ["rouge", "exam"] and docs[0].questions == (("q1", "a1"), ("q2", "a2"))
    assert load_document(f"{leval}:1") == ("doc two", "q3", "a3", "exam")
    own = write_jsonl(tmp_path / "o.jsonl", [{"passage": "text", "q": "why?", "a": ["because", "since"]}])
    assert load_document(f"{own}?context=passage&question=q&answer=a") == ("text", "why?", "because", "f1")
    with pytest.raises(UserError, match=r"no field\(s\) input, instructions, outputs.*\?context=F"):
        load_document(str(own))
    with pytest.raises(UserError, match="index 5 is out of range"):
        load_document(f"{leval}:5")


def test_the_builtin_document_is_scored_by_containment() -> None:
    context, question, answer, metric = load_document("builtin", 512)
    assert answer in context and "password" in question and metric == "contains"


def test_scores() -> None:
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    # articles dropped: "cat on mat" against "cat sat on mat", LCS 3: precision 1, recall 0.75
    assert rouge_l("a cat on a mat", "the cat sat on the mat") == pytest.approx(2 * 0.75 / 1.75)
    assert rouge_l("dog", "cat") == 0.0 and token_f1("", "") == 1.0
    assert contains("The password is amber-123.", "amber-123") == 1.0 and contains("amber-1234", "amber-123") == 0.0
    assert score("exam", "(B) because", "B") == 1.0
    assert matches("contains", "it is saffron-876", "saffron-876") and not matches("f1", "no idea", "saffron-876")
    with pytest.raises(ValueError, match="unknown metric"):
        score("bleu", "a", "b")
