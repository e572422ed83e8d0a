"""Simulated field devices (doors, speakers, drones, radios) that speak the hub's MQTT
contract, for the demo, the tests and the benchmarks. See simulators.py."""
from devices.sim.simulators import BEHAVIOURS, BatchPublisher, DeviceFleet, SimDevice

__all__ = ["BEHAVIOURS", "BatchPublisher", "DeviceFleet", "SimDevice"]
