"""Does a lossy KV codec change the answer? Lossless KV vs KV through a codec, same query on top.

For each document the context's KV is computed once by a full prefill (the lossless KV); a codec's KV is
that KV cut into cells of `chunk_tokens` tokens per layer, each K and V encoded and decoded. The query is
then prefilled on top of each KV and decoded greedily, and the two runs are compared: first token, the
first `new_tokens` tokens, KL divergence of the next-token distributions at the query's positions, and the
task score of each answer (LEval: option letter for quality, token F1 for scientific_qa and multidoc_qa;
ROUGE-L for summaries; any JSONL of documents can be scored, see `load_documents`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from sparkv.analysis import documents as document_files
from sparkv.analysis.scoring import normalize_answer, option_letter, option_match, score, token_f1
from sparkv.core.errors import UserError
from sparkv.cost_models.codecs import KVCodec
from sparkv.executor.model.hf_compat import forward_with_cache, new_dynamic_cache
from sparkv.executor.model.models import LoadedModel, eos_token_ids

if TYPE_CHECKING:
    from sparkv.analysis.sparse_study import CellRecord

KV = list[tuple[Tensor, Tensor]]  # per layer (K, V) [num_kv_heads, tokens, head_dim]
TASKS = {"quality": "exam", "scientific_qa": "f1", "multidoc_qa": "f1"}  # LEval file -> scoring
INSTRUCTIONS = {
    "exam": "Answer with the letter of the correct option only.",
    "f1": "Answer the question briefly, using the document.",
    "rouge": "Answer using the document.",
    "contains": "Answer briefly, using the document.",
}
__all__ = ["normalize_answer", "option_letter", "option_match", "task_score", "token_f1"]  # scoring, re-exported


# ---- data ----


@dataclass(frozen=True)
class Document:
    """One LEval document with the questions used from it."""

    dataset: str  # quality, scientific_qa, multidoc_qa, or the file it came from
    index: int  # line in the JSONL file
    text: str
    questions: tuple[tuple[str, str], ...]  # (question, reference answer)
    metric: str = "f1"  # how answers are scored: exam, f1, rouge or contains (sparkv.analysis.scoring)


def load_documents(data_dir: Path, dataset: str, documents: int, questions_per_doc: int) -> list[Document]:
    """The first `documents` documents of `dataset` with their first `questions_per_doc` questions.

    `dataset` is an LEval task read from `data_dir` (quality, scientific_qa, multidoc_qa), or any JSONL file:
    LEval's fields, or others named as `FILE.jsonl?context=F&question=F&answer=F[&metric=M]`
    (`sparkv.analysis.documents`); its label in tables is the file's stem."""
    if dataset not in TASKS:
        spec = document_files.parse_document_spec(dataset)
        if not Path(spec.path).is_file():
            raise UserError(f"unknown dataset {dataset!r}: use one of {', '.join(TASKS)} or a JSONL file "
                            "(FILE.jsonl[?context=F&question=F&answer=F&metric=exam|f1|rouge|contains])")  # fmt: skip
        label = Path(spec.path).stem
        return [Document(label, d.index, d.text, d.questions[:questions_per_doc], d.metric)
                for d in document_files.load_documents(dataset, limit=documents)]  # fmt: skip
    path = data_dir / f"{dataset}.jsonl"
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc
    out = []
    for index, line in enumerate(lines[:documents]):
        try:
            item = json.loads(line)
            pairs = tuple(zip(item["instructions"], item["outputs"], strict=False))[:questions_per_doc]
            out.append(Document(dataset, index, str(item["input"]), pairs, TASKS[dataset]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"{path}:{index + 1}: not an LEval record ({exc})") from exc
    return out


def prompt_ids(
    loaded: LoadedModel, doc: Document, question: str, max_context_tokens: int
) -> tuple[Tensor, Tensor]:
    """Context ids [T] (chat-template head + document, truncated) and query ids [Q] (question + instruction)."""
    tok = loaded.tokenizer
    instruction = INSTRUCTIONS[doc.metric]
    if tok is not None and getattr(tok, "chat_template", None):
        marker = "\x00QUESTION\x00"
        messages = [{"role": "user", "content": marker}]
        full = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        head, tail = full.split(marker)
        context, query = head + doc.text, f"\n\n{question}\n\n{instruction}{tail}"
    else:
        context, query = doc.text, f"\n\nQuestion: {question}\n{instruction}\nAnswer:"
    return loaded.encode(context, max_context_tokens), loaded.encode(query)


# ---- scoring ----


def task_score(dataset_or_metric: str, prediction: str, reference: str) -> float:
    """Score in [0, 1] by a metric (exam, f1, rouge, contains) or by an LEval task's metric."""
    return score(TASKS.get(dataset_or_metric, dataset_or_metric), prediction, reference)


# ---- the two KV paths ----


@dataclass(frozen=True)
class CodecCost:
    """A codec applied to every cell of one context."""

    wire_bytes: int  # sum of len(encode(...)) over all cells, K and V (measured, not estimated)
    fp16_bytes: int  # the same cells as plain fp16
    encode_s: float  # total seconds encoding
    decode_s: float  # total seconds decoding
    cells: int  # (chunk, layer) cells


def codec_kv(kv: KV, codec: KVCodec, chunk_tokens: int) -> tuple[KV, CodecCost]:
    """Every cell's K and V through encode and decode, as the KV server and the receiver would."""
    out: KV = []
    wire = fp16 = cells = 0
    enc_s = dec_s = 0.0
    for layer, (k, v) in enumerate(kv):
        pair = []
        for kind, t in (("k", k), ("v", v)):
            work = torch.float16 if t.dtype == torch.float16 else torch.float32
            x = t.detach().to("cpu", work).numpy()  # [KV, T, hd]
            parts = []
            for start in range(0, x.shape[1], chunk_tokens):
                cell = np.ascontiguousarray(x[:, start : start + chunk_tokens])
                t0 = time.perf_counter()
                payload = codec.encode(cell, kind=kind, layer=layer)
                t1 = time.perf_counter()
                parts.append(codec.decode(payload, cell.shape, cell.dtype))
                dec_s += time.perf_counter() - t1
                enc_s += t1 - t0
                wire, fp16 = wire + len(payload), fp16 + 2 * cell.size
                cells += kind == "k"
            pair.append(torch.from_numpy(np.concatenate(parts, axis=1)).to(t.device, t.dtype))
        out.append((pair[0], pair[1]))
    return out, CodecCost(wire, fp16, enc_s, dec_s, cells)


@dataclass(frozen=True)
class Generation:
    """The query prefilled on top of a KV, then greedy decoding."""

    query_logprobs: Tensor  # [Q, vocab] float32 log-softmax of the next token at each query position
    tokens: list[int]  # greedy tokens, at most new_tokens, ending at the first end-of-sequence token


def generate_on_kv(
    loaded: LoadedModel, kv: KV, query_ids: Tensor, new_tokens: int, eos_ids: frozenset[int] = frozenset()
) -> Generation:
    """Prefill `query_ids` [Q] on top of the context `kv` and decode up to `new_tokens` tokens greedily."""
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be >= 1, got {new_tokens}")
    cache = new_dynamic_cache()  # full-length layers, as the reference prefill uses
    for layer, (k, v) in enumerate(kv):
        cache.update(k[None], v[None], layer)  # copied into the cache's own tensors
    model = loaded.model
    with torch.inference_mode():
        out = forward_with_cache(model, cache, query_ids.to(loaded.device)[None])
        logprobs = torch.log_softmax(out.logits[0].float(), dim=-1)  # [Q, vocab]
        tokens = [int(logprobs[-1].argmax())]
        while len(tokens) < new_tokens and tokens[-1] not in eos_ids:
            step = torch.tensor([[tokens[-1]]], device=loaded.device)
            out = forward_with_cache(model, cache, step)
            tokens.append(int(out.logits[0, -1].argmax()))
    return Generation(logprobs.cpu(), tokens)


@dataclass(frozen=True)
class Agreement:
    """How far a codec's run follows the lossless one."""

    first_token: bool  # same first token
    prefix_fraction: float  # positions equal before the first divergence / longer sequence's length
    exact: bool  # identical token sequences
    kl_nats: float  # mean over query positions of KL(lossless || codec) of the next-token distribution


def compare(base: Generation, other: Generation) -> Agreement:
    a, b = base.tokens, other.tokens
    same = 0
    while same < min(len(a), len(b)) and a[same] == b[same]:
        same += 1
    p_log, q_log = base.query_logprobs, other.query_logprobs
    kl = (p_log.exp() * (p_log - q_log)).sum(dim=-1).clamp(min=0.0)  # [Q]
    return Agreement(a[0] == b[0], same / max(len(a), len(b)), a == b, float(kl.mean()))


def compare_codecs(
    loaded: LoadedModel,
    context_ids: Tensor,
    queries: Sequence[Tensor],
    codecs: Sequence[KVCodec],
    chunk_tokens: int = 512,
    new_tokens: int = 32,
    eos_ids: frozenset[int] = frozenset(),
    on_run: Callable[[], object] | None = None,
) -> tuple[list[Generation], dict[str, tuple[CodecCost, list[Generation]]]]:
    """Lossless generations per query, and per codec its cost and generations; `on_run` after each."""
    from sparkv.executor.model.prefill import reference_kv

    def run(kv: KV, q: Tensor) -> Generation:
        gen = generate_on_kv(loaded, kv, q, new_tokens, eos_ids)
        if on_run is not None:
            on_run()
        return gen

    kv = reference_kv(loaded, context_ids)
    base = [run(kv, q) for q in queries]
    out: dict[str, tuple[CodecCost, list[Generation]]] = {}
    seen: list[tuple[KV, list[Generation]]] = []  # decoded KVs so far and their generations
    for codec in codecs:
        lossy, cost = codec_kv(kv, codec, chunk_tokens)
        # a codec that decodes to exactly the same KV as one already run (e.g. "X+zstd" after "X": the
        # lossless stage changes the bytes, not the values) gets the same generations: the model is
        # deterministic, so they are reused instead of recomputed
        same = next((gens for other, gens in seen if same_kv(lossy, other)), None)
        if same is None:
            same = [run(lossy, q) for q in queries]
            seen.append((lossy, same))
        elif on_run is not None:
            for _ in queries:
                on_run()
        out[codec.name] = (cost, same)
    return base, out


def same_kv(a: KV, b: KV) -> bool:
    """Every layer's K and V equal bit for bit."""
    if len(a) != len(b):
        return False
    return all(torch.equal(ka, kb) and torch.equal(va, vb) for (ka, va), (kb, vb) in zip(a, b, strict=True))


# ---- a run over LEval ----

DEFAULT_CODECS = ("fp16", "int8", "int4-g32", "int4-t32-s1-rot", "int4-t32-s1-rot+zstd")


@dataclass(frozen=True)
class QualityConfig:
    """Everything a quality run depends on; saved beside its results."""

    codecs: tuple[str, ...] = DEFAULT_CODECS
    datasets: tuple[str, ...] = tuple(TASKS)
    documents: int = 2  # per dataset, the first ones in the file
    questions_per_doc: int = 2  # the first ones of each document
    max_context_tokens: int = 3000  # template head + document, truncated
    chunk_tokens: int = 512  # tokens per cell, as the KV server streams them
    new_tokens: int = 32  # greedy tokens compared (and the answer that is scored)
    model: str = "smollm2"  # "smollm2" or a Hugging Face model directory
    data_dir: str = ""  # LEval JSONL folder; "" for ../shared/datasets/leval
    attention: tuple[str, ...] = ()  # local-prefill attentions compared with dense (fp16 KV), e.g. block-sparse


@dataclass(frozen=True)
class Outcome:
    """One question under one codec."""

    dataset: str
    document: int  # line in the dataset file
    question: int  # index among the document's questions
    codec: str
    context_tokens: int
    query_tokens: int
    first_token: bool
    prefix_fraction: float
    exact: bool
    kl_nats: float
    score_lossless: float  # task score in [0, 1] of the lossless answer
    score_codec: float  # the same for the codec's answer
    answer_lossless: str
    answer_codec: str
    reference: str


@dataclass(frozen=True)
class DocumentCost:
    """One codec on one document's context."""

    dataset: str
    document: int
    codec: str
    cost: CodecCost


def default_data_dir() -> Path:
    from sparkv.core.paths import shared_path

    found = shared_path("datasets", "leval")
    if found is None:
        raise UserError("LEval data not found under ../shared/datasets/leval; give --data-dir")
    return found


ATTENTION_PREFIX = "attention="  # the `codec` label of a local-prefill attention's outcomes


def run_quality(
    loaded: LoadedModel, config: QualityConfig, show_progress: bool = True, cells: list[CellRecord] | None = None
) -> tuple[list[Outcome], list[DocumentCost]]:
    """Every (document, question, codec) of `config`, with a progress bar over query runs.

    Each attention of `config.attention` is one more variant (labelled `attention=<name>`): the context
    computed locally with it (fp16 KV, `sparse_study.sparse_prefill_kv`); its per-cell records are appended
    to `cells` when given."""
    from tqdm import tqdm

    from sparkv.analysis.sparse_study import sparse_prefill_kv
    from sparkv.core.attention import parse_attention
    from sparkv.cost_models.codecs import get_codec

    if loaded.tokenizer is None:
        raise UserError(f"model {loaded.model_id} has no tokenizer; the quality run needs text")
    codecs = [get_codec(name) for name in config.codecs]
    leval = any(ds in TASKS for ds in config.datasets)
    data_dir = Path(config.data_dir) if config.data_dir or not leval else default_data_dir()
    per_set = (load_documents(data_dir, ds, config.documents, config.questions_per_doc) for ds in config.datasets)
    docs = [d for ds_docs in per_set for d in ds_docs]
    eos = eos_token_ids(loaded)
    outcomes: list[Outcome] = []
    costs: list[DocumentCost] = []
    attentions = [parse_attention(a) for a in config.attention]
    total = sum(len(d.questions) for d in docs) * (1 + len(codecs) + len(attentions))
    with tqdm(total=total, unit="run", desc="quality", disable=not show_progress) as bar:
        for doc in docs:
            prompts = [prompt_ids(loaded, doc, q, config.max_context_tokens) for q, _ in doc.questions]
            if not prompts:
                continue
            context_ids = prompts[0][0]  # the same for every question of the document
            bar.set_postfix_str(f"{doc.dataset}[{doc.index}] prefill {len(context_ids)} tokens")
            base, per_codec = compare_codecs(loaded, context_ids, [q for _, q in prompts], codecs,
                                             config.chunk_tokens, config.new_tokens, eos, bar.update)
            texts = [loaded.tokenizer.decode(g.tokens, skip_special_tokens=True).strip() for g in base]
            for spec in attentions:
                bar.set_postfix_str(f"{doc.dataset}[{doc.index}] {spec.name}")
                kv, records = sparse_prefill_kv(loaded, context_ids, spec, config.chunk_tokens,
                                                f"{doc.dataset}[{doc.index}]")  # fmt: skip
                if cells is not None:
                    cells.extend(records)
                gens = []
                for _, q in prompts:
                    gens.append(generate_on_kv(loaded, kv, q, config.new_tokens, eos))
                    bar.update()
                fp16 = sum(2 * (k.numel() + v.numel()) for k, v in kv)
                per_codec[ATTENTION_PREFIX + spec.name] = (CodecCost(fp16, fp16, 0.0, 0.0, len(records)), gens)
            for name, (cost, gens) in per_codec.items():
                costs.append(DocumentCost(doc.dataset, doc.index, name, cost))
                for i, (gen, (_, query_ids)) in enumerate(zip(gens, prompts, strict=True)):
                    ref = doc.questions[i][1]
                    answer = loaded.tokenizer.decode(gen.tokens, skip_special_tokens=True).strip()
                    scores = task_score(doc.metric, texts[i], ref), task_score(doc.metric, answer, ref)
                    outcomes.append(Outcome(doc.dataset, doc.index, i, name, len(context_ids), len(query_ids),
                                            **asdict(compare(base[i], gen)), score_lossless=scores[0],
                                            score_codec=scores[1], answer_lossless=texts[i], answer_codec=answer,
                                            reference=ref))
    return outcomes, costs
