"""Field devices over MQTT: the versioned contract every door (门禁), speaker (村村响),
drone (无人机), PoC radio (对讲机) and camera worker speaks with the hub (contract.py:
topics ``xlhub/v1/{kind}/{id}/{channel}``, the envelope, one schema per kind and message,
and ``normalise`` turning a message into rows to store), and simulators of those devices
for the demo, the tests and the benchmarks (sim/). One account per device on the broker
(一机一帐号), whose ACL lets it publish only under its own topics; the grid a device belongs
to is never in the topic but in the versioned registry. docs/mqtt.md documents the contract.
"""
