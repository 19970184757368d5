"""The backends' state before a switch, one file per backend under the site's
`loadBalancer.stateDir`, written atomically and fsynced: what `restore_load_balancer`
puts back exactly, on any worker that drives the same HAProxy.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from pydantic import ValidationError

from adapters.haproxy.config import sync_dir, write_atomically
from cutover.errors import ErrorKind, error
from cutover.traffic import BackendPrior

log = logging.getLogger(__name__)

# ------------------------------------------------------------------- prior state


class PriorStore:
    """`<dir>/<backend>.cutover-prior.json`: one backend's state before its switch."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, backend: str) -> Path:
        return self.directory / f"{backend}.cutover-prior.json"

    def load(self, backend: str) -> BackendPrior | None:
        try:
            return BackendPrior.model_validate_json(self.path(backend).read_text("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValidationError, ValueError) as exc:
            log.warning("ignoring unreadable prior state %s: %s", self.path(backend), exc)
            return None

    def save(self, prior: BackendPrior) -> None:
        """Atomically and durably, before anything changes."""
        path = self.path(prior.backend)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomically(path, prior.model_dump_json(indent=2) + "\n").replace(path)
            sync_dir(self.directory)
        except OSError as exc:
            raise error(
                ErrorKind.CONFIG_ERROR,
                f"cannot record the backend's state before the switch in {path}: {exc}; "
                "set the site's loadBalancer.stateDir to a directory this worker may write",
            ) from None

    def forget(self, backend: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(backend).unlink()
