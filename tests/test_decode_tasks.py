"""Generated long-context tasks: the needle is where it should be and the answer is in the prompt once."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sparkv.analysis.decode_tasks import document_tasks, make_tasks, multikey, niah, variable_tracking


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_niah_places_the_needle_at_its_depth(depth: float) -> None:
    task = niah(2000, depth, seed=3)
    body, _, question = task.prompt.rpartition("\n\n")
    at = body.index(task.answer) / len(body)
    assert abs(at - depth) < 0.05
    assert body.count(task.answer) == 1 and "magic number" in question


def test_multikey_asks_for_one_of_several_needles() -> None:
    task = multikey(2000, 0.5, seed=1, needles=4)
    assert task.prompt.count("special magic number for") == 5  # four needles and the question
    assert task.answer in task.prompt


def test_variable_tracking_chains_to_the_value() -> None:
    task = variable_tracking(2000, 0.2, seed=2, hops=2)
    assert len(re.findall(r"VAR \w+ = ", task.prompt)) == 3  # value, then two hops
    assert task.answer in task.prompt and task.kind == "vt"


def test_make_tasks_covers_every_combination_deterministically() -> None:
    tasks = make_tasks(["niah", "vt"], 1024, [0.1, 0.9], seeds=2)
    assert len(tasks) == 8
    assert tasks == make_tasks(["niah", "vt"], 1024, [0.1, 0.9], seeds=2)


def test_document_tasks_ask_each_question_after_its_document_and_score_by_its_metric(tmp_path: Path) -> None:
    path = tmp_path / "exam.jsonl"
    record = {"input": "Para one.\n\nPara two.", "instructions": ["Who?\n\n (A) Ann\n (B) Bob", "Where?"],
              "outputs": ["(B) Bob", "(A) home"], "evaluation": "exam"}
    path.write_text(json.dumps(record) + "\n" + json.dumps({**record, "input": "Other."}) + "\n")
    tasks = document_tasks(str(path), documents=2, questions=1)
    assert [(t.kind, t.seed, t.metric) for t in tasks] == [("exam", 0, "exam"), ("exam", 1000, "exam")]
    body, _, question = tasks[0].prompt.rpartition("\n\n")  # the runner trims `body` and keeps the question
    assert body == "Para one.\n\nPara two." and question.startswith("Who?\n (A) Ann\n (B) Bob\n")
    assert tasks[0].score("The answer is (B).") == 1.0 and tasks[0].score("(A)") == 0.0
    assert niah(500, 0.5, seed=1).score("no number") == 0.0  # generated tasks: the answer string must appear


def test_an_answer_ends_at_the_first_end_of_sequence_token() -> None:
    from sparkv.commands.decode_quality import until_eos

    assert until_eos([5, 6, 2, 7, 2], frozenset({2})) == [5, 6]
    assert until_eos([5, 6], frozenset({2})) == [5, 6]
