"""Which attention a locally computed chunk uses: a name, parsed once, shared by both worlds.

Grammar (`parse_attention`):

    dense                                   exact causal attention (the default)
    block-sparse[:key=value,...]            block-sparse attention over pooled keys, keys:
        tau=<0..1>     keep, per query block and head, the fewest key blocks whose softmax mass over the
                       pooled (block-mean) scores reaches tau (default 0.9)
        topk=<n>       instead keep the n highest-scoring key blocks (tau is then ignored)
        block=<n>      tokens per query and key block (default 64)
        sink=<n>       first n key blocks always kept (attention sinks, default 1)
        local=<n>      the diagonal block and the n-1 blocks before it always kept (default 1)
        dense_below=<n>  attend densely while a query block sees at most n key blocks (default 4)

e.g. "block-sparse:tau=0.9,block=64". Only names and numbers live here; the kernel is
`sparkv.executor.model.sparse_prefill` and the cost model `sparkv.cost_models.sparse_cost`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparkv.core.errors import UserError

KINDS = ("dense", "block-sparse")
_KEYS = ("tau", "topk", "block", "sink", "local", "dense_below")


@dataclass(frozen=True)
class AttentionSpec:
    """Settings of the attention used for local prefill."""

    kind: str = "dense"  # "dense" or "block-sparse"
    tau: float = 0.9  # cumulative softmax mass of pooled scores kept per (query block, head)
    top_k: int = 0  # > 0: keep this many key blocks instead of a mass threshold
    block: int = 64  # tokens per query block and per key block
    sink_blocks: int = 1  # first key blocks always kept
    local_blocks: int = 1  # diagonal block and the (local_blocks - 1) before it always kept
    dense_below: int = 4  # a query block seeing at most this many key blocks attends densely

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"unknown attention {self.kind!r}: use one of {', '.join(KINDS)}")
        if not 0.0 < self.tau <= 1.0:
            raise UserError(f"attention tau must be in (0, 1], got {self.tau}")
        if self.top_k < 0 or self.block < 1 or self.sink_blocks < 0 or self.local_blocks < 1 or self.dense_below < 0:
            raise UserError(
                f"attention settings out of range: topk={self.top_k} (>= 0), block={self.block} (>= 1), "
                f"sink={self.sink_blocks} (>= 0), local={self.local_blocks} (>= 1), dense_below={self.dense_below}"
            )

    @property
    def sparse(self) -> bool:
        return self.kind == "block-sparse"

    @property
    def name(self) -> str:
        """The canonical name; `parse_attention(spec.name) == spec`."""
        if not self.sparse:
            return "dense"
        rule = f"topk={self.top_k}" if self.top_k else f"tau={self.tau:g}"
        return (
            f"block-sparse:{rule},block={self.block},sink={self.sink_blocks},local={self.local_blocks},"
            f"dense_below={self.dense_below}"
        )


def parse_attention(text: str) -> AttentionSpec:
    """An `AttentionSpec` from its name (grammar in the module docstring)."""
    kind, _, rest = text.strip().lower().partition(":")
    if kind not in KINDS:
        raise UserError(f"unknown attention {text!r}: use 'dense' or 'block-sparse:tau=0.9,block=64'")
    if kind == "dense":
        if rest:
            raise UserError(f"attention 'dense' takes no settings, got {text!r}")
        return AttentionSpec()
    values: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key not in _KEYS:
            raise UserError(f"bad attention setting {item!r} in {text!r}: use key=value with key in {', '.join(_KEYS)}")
        try:
            values[key] = float(value)
        except ValueError:
            raise UserError(f"attention setting {key} needs a number, got {value!r} in {text!r}") from None
    ints = {k: int(values[k]) for k in ("topk", "block", "sink", "local", "dense_below") if k in values}
    for key in ints:
        if values[key] != ints[key]:
            raise UserError(f"attention setting {key} must be a whole number, got {values[key]} in {text!r}")
    d = AttentionSpec(kind="block-sparse")
    return AttentionSpec(
        kind="block-sparse",
        tau=values.get("tau", d.tau),
        top_k=ints.get("topk", d.top_k),
        block=ints.get("block", d.block),
        sink_blocks=ints.get("sink", d.sink_blocks),
        local_blocks=ints.get("local", d.local_blocks),
        dense_below=ints.get("dense_below", d.dense_below),
    )
