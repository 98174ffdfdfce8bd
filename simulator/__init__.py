"""A simulated telecom operator writing work items of the eight eTOM 1.3.1 processes."""

from simulator.incidents import Incident, Knobs
from simulator.profiles import PROCESSES, PROFILES
from simulator.runner import Simulator, SimulatorError

__all__ = ["PROCESSES", "PROFILES", "Incident", "Knobs", "Simulator", "SimulatorError"]
