"""Commands that report back: the state machine (model.py), the device_commands table as
outbox and record (service.py), signed commands (signing.py).  The devices worker
(devices/worker.py) publishes them — QoS 1, MQTT 5 message expiry, response topic and
correlation data — and follows the phases the devices answer with.  See README.md."""
from devices.commands.model import FINAL, OPEN, STATE_LABELS, Requester
from devices.commands.service import apply_phase, create_command, expire_overdue, get_command

__all__ = ["FINAL", "OPEN", "STATE_LABELS", "Requester", "apply_phase", "create_command", "expire_overdue",
           "get_command"]
