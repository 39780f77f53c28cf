"""Cost models: compute (fitted or roofline), link, energy (radio and compute), KV sizes; device profiles."""

from sparkv.cost_models.compute import FittedCompute, RooflineCompute
from sparkv.cost_models.energy import ComputePower, RadioModel, get_radio, request_energy_j
from sparkv.cost_models.profiles import DeviceProfile, load_profile
from sparkv.cost_models.table import build_cost_table

__all__ = [
    "ComputePower",
    "DeviceProfile",
    "FittedCompute",
    "RadioModel",
    "RooflineCompute",
    "build_cost_table",
    "get_radio",
    "load_profile",
    "request_energy_j",
]
