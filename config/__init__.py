"""Shared ground: the hub's one vocabulary (vocabulary.py: every code and its Chinese
label), process settings (`XLHUB_*` env vars) and the site file.

The site file (YAML) describes the grid tree (网格), cameras, devices, departments,
users and rules.  Every layer may import from here; this package imports from no
other hub package.
"""
