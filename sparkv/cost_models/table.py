"""Turn a device profile, a model spec, a codec and a link into the `CostTable` a policy plans with."""

from __future__ import annotations

import numpy as np

from sparkv.core.attention import parse_attention
from sparkv.core.config import LinkConfig, LocalKV
from sparkv.core.costs import CostTable
from sparkv.core.model import ModelSpec
from sparkv.core.request import Request
from sparkv.cost_models.kv import cell_bytes_grid
from sparkv.cost_models.local import local_costs
from sparkv.cost_models.profiles import DeviceProfile
from sparkv.cost_models.sparse_cost import fraction_grid, load_sparsity_profile, sparse_compute_grid_s


def compute_grid_s(spec: ModelSpec, request: Request, profile: DeviceProfile) -> np.ndarray:
    """[chunks, layers] seconds to compute each cell; the same for every layer of a chunk."""
    grid = np.empty((request.num_chunks, spec.num_layers), dtype=np.float64)
    for c in range(request.num_chunks):
        grid[c, :] = profile.compute.layer_s(spec, request.chunk_len(c), request.chunk_start(c))
    return grid


def build_cost_table(
    request: Request,
    spec: ModelSpec,
    profile: DeviceProfile,
    link: LinkConfig,
    codec: str,
    bandwidth_prior_bps: float,
    attention: str = "dense",
    seed: int = 0,
    local: LocalKV | None = None,
) -> CostTable:
    """Predictions for one request; `bandwidth_prior_bps` is the expected trace rate (before efficiency).

    With a block-sparse `attention`, each cell's compute is scaled by its computed fraction of key blocks,
    drawn (with `seed`) from the measured sparsity profile: chunks then differ in cost at the same position.
    `local` names the chunks kept on local disk (the disk lane's costs, `CostTable.local`)."""
    profile.check_model(spec)
    att = parse_attention(attention)
    if att.sparse:
        fractions = fraction_grid(load_sparsity_profile(att), att, request, spec.num_layers, seed)
        compute_grid = sparse_compute_grid_s(spec, request, profile.compute, fractions)
    else:
        compute_grid = compute_grid_s(spec, request, profile)
    query_layer = profile.compute.layer_s(spec, request.query_tokens, request.context_tokens)
    install_fixed_s, install_s_per_byte = profile.install_cost(codec)
    return CostTable(
        compute_cell_s=compute_grid,
        compute_launch_s=profile.compute.launch_s,
        cell_bytes=cell_bytes_grid(spec, request, codec),
        transfer_fixed_s=link.rtt_s + link.per_transfer_s + install_fixed_s,
        install_s_per_byte=install_s_per_byte,
        query_layer_s=np.full(spec.num_layers, query_layer),
        first_token_s=profile.compute.first_token_s(spec),
        bandwidth_prior_bps=max(bandwidth_prior_bps * link.efficiency, 1.0),
        link_efficiency=link.efficiency,
        local=local_costs(request, spec, profile, local) if local is not None else None,
    )
