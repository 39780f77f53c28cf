"""The simulated world: SimPy link, device, KV server and energy, driving any `Policy`."""

from sparkv.sim.engine import DEFAULT_MAX_TIME_S, SimRun, SimulationStalled, simulate
from sparkv.sim.world import World, build_world

__all__ = ["DEFAULT_MAX_TIME_S", "SimRun", "SimulationStalled", "World", "build_world", "simulate"]
