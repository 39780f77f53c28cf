"""The simulated world: SimPy link, device, KV server and energy, driving any `Policy`."""

from sparkv.engine.world import World, build_world
from sparkv.sim.engine import DEFAULT_MAX_TIME_S, SimRun, SimulationStalled, simulate

__all__ = ["DEFAULT_MAX_TIME_S", "SimRun", "SimulationStalled", "World", "build_world", "simulate"]
