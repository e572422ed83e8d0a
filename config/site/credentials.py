"""Secrets of the site file: a camera's password read now from its source.

A :class:`~config.site.models.Credential` names exactly one source — an environment
variable, a file or (discouraged) the password itself.  :func:`resolve_password` reads
it when it is needed, not when the file is checked, so an unset variable is a start-up
problem of the process that needs it, not a problem of the file.  No message names the
value, only the variable or the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from config.site.models import Credential


# ---------------------------------------------------------------------------- secrets

class CredentialError(RuntimeError):
    """A password cannot be obtained; names the variable or file, never the value."""


def resolve_password(cred: Credential, name: str | None = None) -> str:
    """The password of a credentials entry, read now from its source."""
    what = f"credentials '{name}'" if name else "credentials"
    if cred.password is not None:
        return cred.password.get_secret_value()
    if cred.password_env:
        value = os.environ.get(cred.password_env)
        if not value:
            raise CredentialError(f"{what}: environment variable {cred.password_env} is not set or empty")
        return value
    if cred.password_file:
        path = Path(cred.password_file).expanduser()
        try:
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except FileNotFoundError:
            raise CredentialError(f"{what}: password file {path} does not exist") from None
        except PermissionError:
            raise CredentialError(f"{what}: password file {path} is not readable (permission denied)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialError(f"{what}: password file {path} cannot be read ({type(exc).__name__})") from None
        if not value:
            raise CredentialError(f"{what}: password file {path} is empty")
        return value
    raise CredentialError(f"{what}: no password source (password_env, password_file or password)")

