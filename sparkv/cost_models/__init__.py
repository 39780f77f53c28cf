"""Cost models: compute (fitted or roofline), link, energy (radio and compute), KV sizes; device profiles.

Measuring (`sparkv profile`) lives in `profiler` / `profile_build` and loads torch only when called.
"""

from sparkv.cost_models.compute import FittedCompute, RooflineCompute
from sparkv.cost_models.energy import ComputePower, RadioModel, get_radio, request_energy_j
from sparkv.cost_models.fit import Sample, select_and_fit
from sparkv.cost_models.link_calibration import LinkCalibration, apply_calibration, calibrate_link, fit_link
from sparkv.cost_models.profiles import DeviceProfile, load_profile
from sparkv.cost_models.sensors import EnergySensor, open_sensor
from sparkv.cost_models.table import build_cost_table

__all__ = [
    "ComputePower",
    "DeviceProfile",
    "EnergySensor",
    "FittedCompute",
    "LinkCalibration",
    "RadioModel",
    "RooflineCompute",
    "Sample",
    "apply_calibration",
    "build_cost_table",
    "calibrate_link",
    "fit_link",
    "get_radio",
    "load_profile",
    "open_sensor",
    "request_energy_j",
    "select_and_fit",
]
