"""The sites a worker serves: its own configuration, never a workflow's input (issue 13).

A workflow's input names its site and the digest of the version it was written against
(`SiteRef`). The workflow asks its worker for that site once (`resolve_site`); every later
step carries only the reference, and the worker fills the site in before the activity runs
(`SiteInterceptor`). A worker keeps every version of a site file it has served (its archive
directory), so a cutover started before an edit of the file runs to its end on the version
it started with, also across worker restarts.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from cutover.catalog import RESOLVE_SITE
from cutover.config import ConfigError, Problem
from cutover.errors import ErrorKind
from cutover.models import SiteLookup, StepContext
from cutover.site import SiteConfig, SiteRef, load_site, site_digest, site_ref


def default_archive() -> Path:
    """Where a worker keeps the site versions it has served."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(os.environ.get("CUTOVER_SITE_ARCHIVE") or Path(state) / "cutover" / "sites")


class SiteStore:
    """Sites by digest; the current version of each by name."""

    def __init__(self, archive: Path | None = None) -> None:
        self._archive = archive
        self._by_digest: dict[str, SiteConfig] = {}
        self._current: dict[str, str] = {}
        self._lock = threading.Lock()
        if archive is not None and archive.is_dir():
            for path in sorted(archive.glob("*.json")):
                self._load_archived(path)

    def _load_archived(self, path: Path) -> None:
        try:
            site = SiteConfig.model_validate(json.loads(path.read_text()))
        except (OSError, ValueError, ValidationError):
            return  # a torn write (the archive is rewritten whole); the file is the truth
        self._by_digest[site_digest(site)] = site

    def add(self, site: SiteConfig) -> SiteRef:
        """Serve `site` (the current version of its name) and archive it."""
        ref = site_ref(site)
        with self._lock:
            self._by_digest[ref.digest] = site
            self._current[site.name] = ref.digest
        if self._archive is not None:
            self._archive.mkdir(parents=True, exist_ok=True)
            path = self._archive / f"{ref.digest.removeprefix('sha256:')}.json"
            if not path.exists():
                tmp = path.with_suffix(".tmp")
                tmp.write_text(site.model_dump_json())
                tmp.replace(path)
        return ref

    def load(self, paths: Iterable[str | Path]) -> list[SiteRef]:
        """Load site files (every problem named by `load_site`); two files may not claim
        one site name."""
        refs: list[SiteRef] = []
        names: dict[str, str] = {}
        for path in paths:
            site = load_site(path)
            if site.name in names:
                why = f"site '{site.name}' is also defined by {names[site.name]}; expected one "
                raise ConfigError([Problem(str(path), "name", why + "file per site name")])
            names[site.name] = str(path)
            refs.append(self.add(site))
        return refs

    def current(self, name: str) -> SiteRef | None:
        digest = self._current.get(name)
        return None if digest is None else SiteRef(name=name, digest=digest)

    def resolve(self, ref: SiteRef) -> SiteConfig:
        """The site `ref` names, or a ConfigError (non-retryable) saying what to fix."""
        site = self._by_digest.get(ref.digest)
        if site is None and self._archive is not None:
            # another process of this worker host may have archived it since we started
            path = self._archive / f"{ref.digest.removeprefix('sha256:')}.json"
            if path.is_file():
                self._load_archived(path)
                site = self._by_digest.get(ref.digest)
        if site is not None and site.name == ref.name:
            return site
        served = ", ".join(sorted(self._current)) or "none: start it with --site FILE"
        if ref.name not in self._current:
            msg = (
                f"site '{ref.name}' is not one this worker serves (it serves: {served}); "
                f"start the worker of task queue {_queue()} with --site FILE for it"
            )
        else:
            msg = (
                f"site '{ref.name}' at {ref.digest} is not a version this worker has (its "
                f"current one is {self._current[ref.name]}): the input was written against "
                "another version of the site file; write the input again (`cutover run "
                "--print-input`) or give the worker that version"
            )
        raise ApplicationError(msg, type=ErrorKind.CONFIG_ERROR.value, non_retryable=True)


def _queue() -> str:
    try:
        return activity.info().task_queue
    except RuntimeError:
        return "(this worker's)"


_SHARED: list[SiteStore] = []


def shared() -> SiteStore:
    """The process's store (archived under `default_archive()`): what `build_worker`
    serves unless given another; tests add their sites to it in-process."""
    if not _SHARED:
        _SHARED.append(SiteStore(default_archive()))
    return _SHARED[0]


class SiteActivities:
    def __init__(self, store: SiteStore) -> None:
        self._store = store

    @activity.defn(name=RESOLVE_SITE)
    def resolve_site(self, req: SiteLookup) -> SiteConfig:
        """The worker's own site for a workflow's `siteRef` (read-only)."""
        return self._store.resolve(req.siteRef)


class SiteInterceptor(Interceptor):
    """Fills each step's site in from the worker's store, by the step's `siteRef`.
    `staging_dir`: this worker's own staging directory (a data host's `--staging-dir`),
    in place of the site's `stagingDir`."""

    def __init__(self, store: SiteStore, staging_dir: Path | None = None) -> None:
        self._store = store
        self._staging = staging_dir

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _FillSite(next, self._store, self._staging)


class _FillSite(ActivityInboundInterceptor):
    def __init__(
        self, next: ActivityInboundInterceptor, store: SiteStore, staging: Path | None
    ) -> None:
        super().__init__(next)
        self._store = store
        self._staging = staging

    def _fill(self, value: Any) -> Any:
        if isinstance(value, StepContext):
            if value.site is None and value.siteRef is not None:
                site = self._store.resolve(value.siteRef)
                if self._staging is not None:
                    site = site.model_copy(update={"stagingDir": str(self._staging)})
                return value.model_copy(update={"site": site})
            return value
        if isinstance(value, BaseModel):
            update = {
                name: filled
                for name in type(value).model_fields
                if (field := getattr(value, name)) is not None
                and isinstance(field, StepContext)
                and (filled := self._fill(field)) is not field
            }
            return value.model_copy(update=update) if update else value
        return value

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        input.args = [self._fill(a) for a in input.args]
        return await super().execute_activity(input)
