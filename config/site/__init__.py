"""The site file (YAML): the grid tree (网格), credentials, cameras, devices, departments
and users of one deployment — its models and a loader that reports every problem at once.

    site = load_site(path)                     # raises SiteError listing every problem
    site, problems = check_site_file(path)     # never raises for bad input
    site, problems = check_site_data(data)     # the same, for data already parsed

Each :class:`Problem` names the file, the 1-based line, the path inside the document
(``cameras[2].rtsp_url``) and a reason in plain English.  No secret ever appears in a
problem, a repr or an exception message: plain passwords are ``SecretStr`` and URLs with
embedded credentials are refused without being echoed.

How checking works: pydantic validates the document field by field (``extra="forbid"``
everywhere, so a typo'd key is a problem); independently, the *rules* pass walks the raw
data and checks what spans objects (duplicate codes and ids, references into the grid
tree, credentials and departments, level order) and the per-object rules (exactly one
password source, department handlers …).  The rules pass tolerates broken data, so a
cross-reference problem is reported even when a sibling field failed.  The same rules run
as model validators when the models are built directly (``Site.model_validate(data)``).

What lives where (import from ``config.site``; the modules are its parts):

    models.py       the models (GeoPoint, GridNode, Credential, Onvif, Camera, Device,
                    Department, User, Site and its grid tree helpers) and their field
                    types and value checks (url_problem, RtspUrl, user names, hosts)
    rules.py        the rules on raw data: what spans objects and the per-object rules;
                    imports no model (the models import it)
    credentials.py  resolve_password and CredentialError: a password read from its source
    problems.py     Problem and SiteError, paths and line numbers, the wording of
                    reasons, check_site_data
    loader.py       reading the file: encodings, YAML hardening (alias cycles and bombs,
                    duplicate keys), read_site_document, check_site_file and load_site
    change.py       one change to the live registry checked by the same checks
                    (change_problems: the problems a change brings) and worded in
                    Chinese naming the field (zh) for the administration API

Field types shared with the alerting sections are config/fields.py's, codes and labels
config/vocabulary.py's; config/alerting.py holds the alerting models and must not import
this package (it imports them).
"""
from __future__ import annotations

from config.site.credentials import CredentialError, resolve_password
from config.site.loader import check_site_file, load_site
from config.site.models import (Camera, Credential, Department, Device, GeoPoint, GridNode, Onvif, Site, User,
                                url_problem)
from config.site.problems import Problem, SiteError, check_site_data

__all__ = [
    "CredentialError", "Camera", "Credential", "Department", "Device", "GeoPoint", "GridNode", "Onvif", "Problem",
    "Site", "SiteError", "User", "check_site_data", "check_site_file", "load_site", "resolve_password", "url_problem",
]
