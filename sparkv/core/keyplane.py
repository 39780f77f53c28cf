"""The quantised key plane: what in-storage scoring reads (HillInfer's INT8/INT4 keys beside the fp16 KV).

Per layer, one record per token group: G tokens x d values (d = KV heads x head dim, the post-RoPE keys of
all KV heads concatenated) at `bits` bits, two INT4 values per byte with the low nibble first, then one fp16
scale per block of 32 values (symmetric, as GGML's Q8_0/Q4_0). Records are packed back to back, so a run of
adjacent groups is one contiguous span; an O_DIRECT read covers its 512 B-aligned envelope.
"""

from __future__ import annotations

from sparkv.core.decode import DIRECT_ALIGN

QUANT_BLOCK = 32  # values per fp16 scale


def key_record_bytes(group_tokens: int, key_width: int, bits: int) -> int:
    """Bytes of one group's record: G x d values at `bits` bits, then G x d / 32 fp16 scales."""
    if bits not in (4, 8):
        raise ValueError(f"key scoring bits must be 4 or 8, got {bits}")
    if key_width % QUANT_BLOCK:
        raise ValueError(f"key width {key_width} is not a multiple of the quantisation block {QUANT_BLOCK}")
    return group_tokens * (key_width * bits // 8 + 2 * key_width // QUANT_BLOCK)


def plane_span(first: int, count: int, record_bytes: int) -> tuple[int, int]:
    """The 512 B-aligned (offset, bytes) an O_DIRECT read of records [first, first + count) covers."""
    lo = first * record_bytes // DIRECT_ALIGN * DIRECT_ALIGN
    hi = -(-(first + count) * record_bytes // DIRECT_ALIGN) * DIRECT_ALIGN
    return lo, hi - lo


def runs(groups: tuple[int, ...]) -> list[tuple[int, int]]:
    """Ascending groups -> (first, count) runs of adjacent groups."""
    out: list[tuple[int, int]] = []
    for g in groups:
        if out and out[-1][0] + out[-1][1] == g:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((g, 1))
    return out


def span_bytes(groups: tuple[int, ...], record_bytes: int) -> int:
    """Bytes an O_DIRECT read of these groups' records moves (aligned envelope of each run)."""
    return sum(plane_span(first, n, record_bytes)[1] for first, n in runs(groups))
