"""The bus: the versioned MQTT contract every source, worker and the API speak, on shared
ground below all of them (cameras/ and devices/ publish on it, ingest/ stores it, alerts/
and api/ send commands on it).

- bus.topics      ``xlhub/v1/{kind}/{source_id}/{channel}``: build and parse topics
- bus.envelope    v / id / ts / seq, ContractError, the shared field types
- bus.telemetry   ``tele`` / ``state`` bodies per kind
- bus.events      ``evt/<type>`` bodies per event type, ``avail``
- bus.commands    ``cmd/<name>`` typed bodies (both sides use them), ``res`` answers
- bus.normalise   one message → the rows ingest stores
- bus.client      the one MQTT client factory, command PUBLISH properties

Codes and labels (kinds, event types and their severities) are config/vocabulary.py's.
docs/mqtt.md is the human-readable version; bus/README.md says who talks to whom."""
