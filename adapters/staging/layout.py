"""The staging dir's namespace: where each thing the workers keep on the conversion host lives.

    <stagingDir>/apps/<application>/   one application's staging: staged disks, digest maps,
                                       state, pre-converted and converted images
    <stagingDir>/pools/<pool>/         dir pools created for target storage mappings

Applications live one level down, under `apps/`, so no application name can equal an
internal directory (before, `<stagingDir>/<application>` let an application named `pools`
discard every target pool). Every per-application path is computed by `application_dir`;
nothing else is created at the top level.

Cutovers in flight across a worker upgrade: an older worker staged at
`<stagingDir>/<application>`. `application_dir` keeps using that directory for a workflow
whose staged state (`<disk>.state.json`) it holds, as long as the new directory does not
exist, so a warm copy made before the upgrade is neither copied again in the downtime nor
left behind; `legacy_files` names exactly what such a workflow may remove there (never a
directory: the old path of an application named `pools` is the pool root).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from cutover.disknames import output_name, safe_name
from cutover.errors import ErrorKind, error
from cutover.errors import config_error as config_error
from cutover.models import StepContext
from cutover.site import SiteConfig

APPS = "apps"
POOLS = "pools"
#: Everything the staging dir holds at its top level.
INTERNAL = (APPS, POOLS)
#: Suffix of a staged disk's state file (`StagedDisk.state`).
STATE_SUFFIX = ".state.json"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(name: str, what: str) -> str:
    """A single safe path component: letters, digits, `.`, `_`, `-`; no `..`."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise config_error(
            f"{what} name {name!r} is not allowed in a staging path: use letters, digits, "
            "'.', '_' and '-' (starting with a letter or digit, no '..', no '/')"
        )
    return name


def root(site: SiteConfig) -> Path:
    """The site's `stagingDir` (absolute)."""
    if not site.stagingDir:
        raise config_error("the site config has no `stagingDir` (where disks are staged)")
    path = Path(site.stagingDir)
    if not path.is_absolute():
        raise config_error(f"`stagingDir` must be an absolute path, not {path}")
    return path


def pools_root(site: SiteConfig) -> Path:
    """Where dir pools that do not exist yet are created, one directory per pool."""
    return root(site) / POOLS


def confine(base: Path, path: Path) -> None:
    """`path` (symlinks resolved) must be `base` or lie under it; else `ConfigError`."""
    real_base = base.resolve()
    real = path.resolve()
    if real != real_base and real_base not in real.parents:
        raise config_error(f"{path} resolves to {real}, outside the staging dir {real_base}")


def application_dir(site: SiteConfig, application: str, workflow_id: str | None = None) -> Path:
    """The one place an application's staging path is computed: `<stagingDir>/apps/<app>`;
    for `workflow_id`, its pre-upgrade directory while that holds its staging (see
    `legacy_dir`). Confined: neither `apps` nor the application's directory may lead out."""
    base = root(site)
    name = check_name(application, "application")
    apps = base / APPS
    if apps.is_symlink():
        raise config_error(f"{apps} is a symlink: the staging dir's `{APPS}` must be a directory")
    path = apps / name
    if workflow_id is not None and not (path.exists() or path.is_symlink()):
        old = legacy_dir(site, application, workflow_id)
        if old is not None:
            return old
    confine(apps, path)
    return path


def legacy_dir(site: SiteConfig, application: str, workflow_id: str) -> Path | None:
    """`<stagingDir>/<application>` when an older worker staged this workflow's disks there
    (a real directory holding a state file of `workflow_id`); else None."""
    base = root(site)
    old = base / check_name(application, "application")
    if old.is_symlink() or not old.is_dir() or old.resolve() != base.resolve() / old.name:
        return None
    return old if _disks_of(old, workflow_id) else None


def legacy_files(site: SiteConfig, application: str, workflow_id: str) -> list[Path]:
    """The files of this workflow's staged disks in its pre-upgrade directory: for each
    disk with a state file of `workflow_id`, the regular files (or links) named
    `<disk>.*`. Never a directory, never another workflow's disk."""
    old = legacy_dir(site, application, workflow_id)
    if old is None:
        return []
    disks = _disks_of(old, workflow_id)
    out = []
    for p in sorted(old.iterdir()):
        if p.is_dir() and not p.is_symlink():
            continue
        if any(p.name.startswith(d + ".") for d in disks):
            out.append(p)
    return out


def _disks_of(directory: Path, workflow_id: str) -> list[str]:
    disks = []
    for state in directory.glob("*" + STATE_SUFFIX):
        if state.is_symlink() or not state.is_file():
            continue
        try:
            data = json.loads(state.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("workflowId") == workflow_id:
            disks.append(state.name.removesuffix(STATE_SUFFIX))
    return disks


# ------------------------------------------------------------- files of one cutover


def confined(root: Path, candidate: str | Path, what: str) -> Path:
    """`candidate` resolved (symlinks too) if it lies inside `root`; else `PathRejected`."""
    base = root.resolve()
    path = Path(candidate)
    if not path.is_absolute():
        path = base / path
    resolved = path.resolve()
    if resolved != base and base not in resolved.parents:
        raise error(ErrorKind.PATH_REJECTED, f"{what} {str(candidate)!r} is outside {base}")
    return resolved


def staging_dir(site: SiteConfig) -> Path:
    """The site's `stagingDir`: every staged and converted image lies inside it."""
    return root(site)


def converted_path(ctx: StepContext, disk_key: str, fmt: str) -> Path:
    """The converted image, in this workflow's staging dir beside the staged disk (named
    after it, distinct from every name the warm copy uses)."""
    key = safe_name(disk_key, "disk key")
    return (
        application_dir(ctx.resolved_site, ctx.application, ctx.workflowId)
        / f"{key}.converted.{fmt}"
    )


def legacy_converted_path(ctx: StepContext, disk_key: str, fmt: str) -> Path:
    """Where a worker before this namespace wrote the converted image."""
    return root(ctx.resolved_site) / output_name(ctx.application, disk_key, fmt)


def staging_root(ctx: StepContext) -> Path:
    return root(ctx.resolved_site)


def app_dir(ctx: StepContext) -> Path:
    """This workflow's staging dir (`application_dir`)."""
    return application_dir(ctx.resolved_site, ctx.application, ctx.workflowId)


@dataclass(frozen=True)
class StagedDisk:
    """The files of one staged disk."""

    raw: Path
    src_map: Path
    copy_map: Path
    state: Path
    #: one byte per block: changed in `raw` since the pre-converted image last caught up
    dirty: Path
    #: the target image kept in step with the source during the warm phase (qcow2)
    mirror: Path

    @staticmethod
    def of(ctx: StepContext, disk: str) -> StagedDisk:
        base = app_dir(ctx)
        check_name(disk, "disk")
        staged = StagedDisk(
            raw=base / f"{disk}.raw",
            src_map=base / f"{disk}.src.sha256",
            copy_map=base / f"{disk}.copy.sha256",
            state=base / f"{disk}{STATE_SUFFIX}",
            dirty=base / f"{disk}.dirty",
            mirror=base / f"{disk}.target.qcow2",
        )
        for p in (staged.raw, staged.src_map, staged.copy_map, staged.state, staged.mirror):
            confine(staging_root(ctx), p)
        return staged
