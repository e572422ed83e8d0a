"""Simulated field devices (doors, speakers, drones, radios) that speak the hub's MQTT
contract, for the demo, the tests and the benchmarks.

- device.py: one simulated device (:class:`SimDevice`): identity, state, message envelope.
- behaviours.py: how each kind behaves (:data:`BEHAVIOURS`: telemetry, events) and answers
  commands (:class:`~devices.sim.behaviours.Command`).
- fleet.py: :class:`DeviceFleet`, many devices in one process: connections, the scheduler
  thread, publishing, outages (cut/restore), load generation.
- publisher.py: :class:`BatchPublisher`, the batching paho client used for load generation.
- __main__.py: ``python -m devices.sim``.
"""
from devices.sim.behaviours import BEHAVIOURS
from devices.sim.device import SimDevice
from devices.sim.fleet import DeviceFleet
from devices.sim.publisher import BatchPublisher

__all__ = ["BEHAVIOURS", "BatchPublisher", "DeviceFleet", "SimDevice"]
