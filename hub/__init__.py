"""The hub's command line (`xlhub`) and process supervisor.

Wires every layer together — embedded PostgreSQL/Mosquitto, migrations, the registry,
the API, ingest, camera workers and the demo simulators — so it sits downstream of all
of them and nothing imports from it (tests excepted).
"""
