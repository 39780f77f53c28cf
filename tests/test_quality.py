"""Codec quality analysis: the metrics can tell lossless from broken KV, scorers, data loading, the command."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from sparkv.analysis.quality import (
    CodecCost,
    DocumentCost,
    Outcome,
    codec_kv,
    compare,
    compare_codecs,
    generate_on_kv,
    load_documents,
    normalize_answer,
    option_letter,
    option_match,
    task_score,
    token_f1,
)
from sparkv.cli import main
from sparkv.commands.quality import meets_target, summarise
from sparkv.core.errors import UserError
from sparkv.cost_models.codecs import get_codec
from sparkv.executor.model.models import LoadedModel, tiny_model
from sparkv.executor.model.prefill import full_prefill_reference, reference_kv


@cache
def model() -> LoadedModel:
    return tiny_model("llama", initializer_range=0.1)  # wider init: greedy decoding does not collapse


def ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed))


@dataclass(frozen=True)
class ZeroVCodec:
    """Test double: K passes through, V arrives as zeros (the kind travels in the payload's first byte)."""

    name: str = "zero-v"
    lossless: bool = False
    fixed_size: bool = True

    def encode(self, array: np.ndarray, *, kind: str = "k", layer: int = 0) -> bytes:
        return kind.encode() + array.astype(np.float32).tobytes()

    def decode(self, payload: bytes, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        x = np.frombuffer(payload[1:], np.float32).reshape(shape).astype(dtype)
        return np.zeros_like(x) if payload[:1] == b"v" else x

    def wire_bytes(self, shape: tuple[int, ...], dtype: npt.DTypeLike, *, kind: str = "k", layer: int = 0) -> int:
        return 1 + 4 * int(np.prod(shape))


# ---- the KV paths ----


def test_query_on_lossless_kv_equals_full_prefill() -> None:
    loaded, context, query = model(), ids(70, 1), ids(6, 2)
    _, want = full_prefill_reference(loaded, context, query, 12)
    got = generate_on_kv(loaded, reference_kv(loaded, context), query, 12)
    assert got.tokens == want and got.query_logprobs.shape == (6, 256)


def test_lossless_codec_agrees_exactly() -> None:
    queries = [ids(5, s) for s in range(3)]
    base, per_codec = compare_codecs(model(), ids(90, 7), queries, [get_codec("raw"), get_codec("fp32+zstd")],
                                     chunk_tokens=32, new_tokens=16)
    for _, gens in per_codec.values():
        for b, g in zip(base, gens, strict=True):
            a = compare(b, g)
            assert a.first_token and a.exact and a.prefix_fraction == 1.0 and a.kl_nats == 0.0


def test_broken_codec_is_measured_as_broken() -> None:
    queries = [ids(5, s) for s in range(10, 16)]
    base, per_codec = compare_codecs(model(), ids(90, 8), queries, [ZeroVCodec(), get_codec("int8")],
                                     chunk_tokens=32, new_tokens=16)
    zero = [compare(b, g) for b, g in zip(base, per_codec["zero-v"][1], strict=True)]
    good = [compare(b, g) for b, g in zip(base, per_codec["int8"][1], strict=True)]
    assert min(a.kl_nats for a in zero) > 0.01
    assert np.mean([a.prefix_fraction for a in zero]) < 0.9 and not all(a.exact for a in zero)
    assert np.mean([a.kl_nats for a in good]) < 0.1 * np.mean([a.kl_nats for a in zero])


def test_a_codec_that_decodes_to_the_same_kv_reuses_generations() -> None:
    queries = [ids(5, s) for s in range(20, 23)]
    runs: list[int] = []
    codecs = [get_codec("int8"), get_codec("int8+zstd"), get_codec("int4")]
    _, per_codec = compare_codecs(model(), ids(90, 9), queries, codecs, chunk_tokens=32, new_tokens=8,
                                  on_run=lambda: runs.append(1))
    assert per_codec["int8+zstd"][1] is per_codec["int8"][1]  # same decoded values: not run again
    assert per_codec["int4"][1] is not per_codec["int8"][1]
    assert per_codec["int8+zstd"][0].wire_bytes != per_codec["int8"][0].wire_bytes  # its own bytes
    assert len(runs) == 4 * len(queries)  # progress still counts every (codec, question)


def test_codec_kv_counts_every_cell() -> None:
    kv = reference_kv(model(), ids(70, 3))  # 4 layers, chunks of 32, 32, 6 tokens
    lossy, cost = codec_kv(kv, get_codec("int4"), chunk_tokens=32)
    codec = get_codec("int4")
    want = sum(codec.wire_bytes((2, n, 16), np.float32, kind=kind) for n in (32, 32, 6) for kind in "kv") * 4
    assert cost.cells == 12 and cost.wire_bytes == want
    assert cost.fp16_bytes == 4 * 2 * (2 * 70 * 16) * 2  # layers, K and V, elements, bytes
    assert [k.shape for k, _ in lossy] == [k.shape for k, _ in kv] and lossy[0][0].dtype == kv[0][0].dtype
    assert cost.encode_s > 0 and cost.decode_s > 0


# ---- scoring ----


def test_token_f1() -> None:
    assert token_f1("The relu and tanh.", "relu, selu, tanh") == pytest.approx(2 * (2 / 3) * (2 / 3) / (4 / 3))
    assert token_f1("an apple", "the Apple!") == 1.0
    assert token_f1("cat", "dog") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("the", "dog") == 0.0
    assert normalize_answer("  The  Quick, brown fox! ") == "quick brown fox"


def test_option_letters() -> None:
    assert option_letter("(B) Their subconscious knew") == "B"
    assert option_letter("The answer is (C).") == "C"
    assert option_letter("D. They were tired") == "D"
    assert option_letter("I am not sure") is None
    assert option_letter("A cat? The answer is B) because") == "B"  # "A" as an article is not an option
    assert option_match("B", "(B) Their subconscious") == 1.0
    assert option_match("(A)", "(B) x") == 0.0
    assert option_match("B", "no letter here") == 0.0
    assert task_score("quality", "(A)", "(A) yes") == 1.0
    f1 = 2 * 1 * 0.4 / 1.4  # precision 2/2, recall 2/5
    assert task_score("multidoc_qa", "by mail", "you can replace by mail") == pytest.approx(f1)


# ---- data ----


def test_load_documents(tmp_path: Path) -> None:
    rows = [{"input": f"doc {i}", "instructions": ["q1", "q2", "q3"], "outputs": ["a1", "a2", "a3"]} for i in range(3)]
    (tmp_path / "quality.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    docs = load_documents(tmp_path, "quality", documents=2, questions_per_doc=2)
    assert [d.text for d in docs] == ["doc 0", "doc 1"] and docs[1].questions == (("q1", "a1"), ("q2", "a2"))
    with pytest.raises(UserError, match="unknown dataset"):
        load_documents(tmp_path, "narrative_qa", 1, 1)
    with pytest.raises(UserError, match="cannot read"):
        load_documents(tmp_path, "multidoc_qa", 1, 1)
    (tmp_path / "scientific_qa.jsonl").write_text('{"input": "x"}\n')
    with pytest.raises(UserError, match="not an LEval record"):
        load_documents(tmp_path, "scientific_qa", 1, 1)


def test_load_documents_from_any_jsonl(tmp_path: Path) -> None:
    rows = [{"story": f"long text {i}", "ask": "what?", "gold": "a summary", "id": i} for i in range(3)]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    docs = load_documents(tmp_path, f"{path}?context=story&question=ask&answer=gold&metric=rouge", 2, 1)
    assert [d.dataset for d in docs] == ["mine", "mine"] and docs[0].metric == "rouge"
    assert docs[1].text == "long text 1" and docs[1].questions == (("what?", "a summary"),)
    assert task_score("rouge", "a short summary", "a summary") == pytest.approx(2 * 0.5 / 1.5)  # LCS 1 of 2 / 1
    with pytest.raises(UserError, match=r"unknown dataset 'nope\.jsonl'.*JSONL file"):
        load_documents(tmp_path, "nope.jsonl", 1, 1)


def test_quality_command_scores_a_users_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sparkv.executor.model.models import tiny_model_dir

    model = tiny_model_dir(tmp_path / "tiny", num_layers=2, tokenizer=True)
    path = tmp_path / "notes.jsonl"
    path.write_text(json.dumps({"passage": "the meeting moved to friday " * 20, "q": "when?", "a": "friday"}))
    argv = ["quality", "--model", str(model), "--codec", "int8", "--dataset", f"{path}?context=passage&question=q"
            "&answer=a", "--documents", "1", "--max-context-tokens", "128", "--chunk-tokens", "32", "--new-tokens",
            "3", "--no-progress", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 0
    data = json.loads((tmp_path / "out" / "quality.json").read_text())
    assert {s["dataset"] for s in data["summaries"]} == {"notes", "all"}
    assert data["outcomes"][0]["reference"] == "friday"


# ---- the command ----


def outcome(codec: str, first: bool, lossless: float, lossy: float) -> Outcome:
    return Outcome("quality", 0, 0, codec, 100, 10, first, 1.0 if first else 0.5, first, 0.01, lossless, lossy,
                   "A", "A", "(A)")


def test_summary_and_target() -> None:
    outcomes = [outcome("int4", True, 1.0, 1.0)] * 19 + [outcome("int4", False, 0.0, 0.0)]
    costs = [DocumentCost("quality", 0, "int4", CodecCost(27, 100, 0.1, 0.2, 10))]
    row = summarise(outcomes, costs, "int4", None)
    assert row["questions"] == 20 and row["bytes_pct_fp16"] == 27.0 and row["first_token_pct"] == 95.0
    assert row["score_lossless_pts"] == 95.0 and row["score_diff_pts"] == 0.0 and row["encode_ms_per_cell"] == 10.0
    assert meets_target(row)
    assert not meets_target({**row, "bytes_pct_fp16": 31.0})
    assert not meets_target({**row, "score_diff_pts": -1.5})


@pytest.mark.parametrize(
    "argv",
    [["--codec", "int3"], ["--documents", "0"], ["--new-tokens", "0"], ["--model", "/nonexistent/model"]],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quality", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sparkv quality: error:") and err.count("\n") == 1


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SPARKV_SLOW") != "1", reason="set SPARKV_SLOW=1 to run the real SmolLM2")
def test_quality_command_on_smollm2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["quality", "--codec", "raw", "--codec", "int8", "--dataset", "scientific_qa", "--documents", "1",
            "--questions-per-doc", "1", "--max-context-tokens", "600", "--new-tokens", "8", "--no-progress",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "codec raw" in printed and "codec int8" in printed and "mean KL nats" in printed
    data = json.loads((tmp_path / "quality.json").read_text())
    raw = next(s for s in data["summaries"] if s["codec"] == "raw" and s["dataset"] == "all")
    assert raw["first_token_pct"] == 100.0 and raw["kl_nats"] == 0.0 and raw["bytes_pct_fp16"] == 200.0
    assert data["config"]["max_context_tokens"] == 600 and (tmp_path / "quality.csv").is_file()
