"""Cost models: compute (fitted or roofline), link, energy (radio and compute), KV sizes; device profiles.

Measuring this machine into profiles (`sparkv profile`) lives in `sparkv.profiling`; this package only fits
and evaluates the models.
"""

from sparkv.cost_models.compute import FittedCompute, RooflineCompute
from sparkv.cost_models.energy import ComputePower, RadioModel, get_radio, request_energy_j
from sparkv.cost_models.fit import Sample, select_and_fit
from sparkv.cost_models.link_calibration import LinkCalibration, apply_calibration, fit_link
from sparkv.cost_models.profiles import DeviceProfile, load_profile
from sparkv.cost_models.table import build_cost_table

__all__ = [
    "ComputePower",
    "DeviceProfile",
    "FittedCompute",
    "LinkCalibration",
    "RadioModel",
    "RooflineCompute",
    "Sample",
    "apply_calibration",
    "build_cost_table",
    "fit_link",
    "get_radio",
    "load_profile",
    "request_energy_j",
    "select_and_fit",
]
