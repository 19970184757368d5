"""The warm data path's activities: pre-copy, incremental passes, the final sync and its
integrity check, and discarding the staging. Thin: the copy engine, the staging layout and
the digest maps are described and built in `adapters.staging.copy`; the sources are
`cutover.ports.DiskSource` implementations.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio import activity

from activities.common import attempt as _attempt
from adapters.staging import layout as staging
from adapters.staging.copy import (
    BLOCK,
    CHUNK,
    ConsistencyReport,
    DiskCopier,
    DiskState,
    MirrorHooks,
    PassStats,
    Reader,
    data_consistency_confirmed,
    integrity_error,
)
from adapters.staging.layout import StagedDisk, app_dir, check_name, config_error
from adapters.vsphere.client import ClientPool
from adapters.vsphere.disk_source import vsphere_sources
from cutover import facts as F
from cutover.catalog import Compensation, Step, WarmStep
from cutover.models import StepContext, StepInput, StepResult
from cutover.ports import DiskSource, SourceFactory


@dataclass
class DiskActivities:
    """The warm data path's activities; `sources` picks and opens the disks (injectable)."""

    sources: SourceFactory
    block_size: int = BLOCK
    chunk_size: int = CHUNK
    #: keeps a pre-converted target image in step (qcow2 targets); None: convert in window
    mirror: MirrorHooks | None = None

    @classmethod
    def for_vsphere(cls, pool: ClientPool, mirror: MirrorHooks | None = None) -> DiskActivities:
        return cls(vsphere_sources(pool), mirror=mirror)

    def activities(self) -> list[Callable[..., Any]]:
        return [self.pre_copy, self.incremental_sync, self.final_data_sync, self.discard_staging]

    @property
    def _copier(self) -> DiskCopier:
        return DiskCopier(self.block_size, self.chunk_size, self.mirror)

    # -- steps

    def _each(
        self, inp: StepInput, precopy: bool, run: Callable[[DiskSource], PassStats]
    ) -> tuple[list[DiskSource], list[PassStats], StepResult]:
        ctx = inp.context
        app_dir(ctx)  # reject a bad application name before touching any source
        sources = self.sources(ctx, precopy)
        stats: list[PassStats] = []
        try:
            for src in sources:
                check_name(src.name, "disk")
            if len({s.name for s in sources}) != len(sources):
                raise config_error("two source disks map to the same staging name")
            for src in sources:
                stats.append(run(src))
        finally:
            for src in sources:
                src.close()
        result = StepResult(
            step=inp.step,
            changed=any(s.mode != "done" for s in stats),
            attempt=_attempt(),
        )
        result.facts[F.DISKS] = ",".join(s.name for s in sources)
        result.details["bytesMoved"] = sum(s.bytesMoved for s in stats)
        result.details["bytesRead"] = sum(s.bytesRead for s in stats)
        result.details["bytesWritten"] = sum(s.bytesWritten for s in stats)
        result.details["bytesVerified"] = sum(s.bytesVerified for s in stats)
        result.details["seconds"] = round(sum(s.seconds for s in stats), 3)
        for src, st in zip(sources, stats, strict=True):
            staged = StagedDisk.of(ctx, src.name)
            state = DiskState.load(staged.state)
            result.facts[F.per_disk(F.STAGING_PATH, src.name)] = str(staged.raw)
            if state is not None and state.changeId:
                result.facts[F.per_disk(F.CHANGE_ID, src.name)] = state.changeId
            if state is not None:
                result.details[f"passes.{src.name}"] = len(state.passes)
            result.details[f"mode.{src.name}"] = st.mode
            result.details[f"bytesMoved.{src.name}"] = st.bytesMoved
            result.details[f"resumedFrom.{src.name}"] = st.resumedFrom
        return sources, stats, result

    def _catch_up(self, inp: StepInput, sources: list[DiskSource], result: StepResult) -> None:
        """Warm phase, source still serving: bring the pre-converted images up to date."""
        if self.mirror is None:
            return
        for src in sources:
            for k, v in self.mirror.after_warm_pass(inp.context, src.name).items():
                result.details[f"{k}.{src.name}"] = v

    @activity.defn(name=WarmStep.PRE_COPY)
    def pre_copy(self, inp: StepInput) -> StepResult:
        srcs, _, result = self._each(inp, True, lambda s: self._copier.precopy_disk(inp.context, s))
        self._catch_up(inp, srcs, result)
        return result

    @activity.defn(name=WarmStep.INCREMENTAL_SYNC)
    def incremental_sync(self, inp: StepInput) -> StepResult:
        label = f"pass-{inp.passNumber}"
        srcs, _, result = self._each(
            inp, False, lambda s: self._copier.sync_disk(inp.context, s, label)
        )
        result.details["pass"] = inp.passNumber
        self._catch_up(inp, srcs, result)
        return result

    @activity.defn(name=Step.FINAL_DATA_SYNC)
    def final_data_sync(self, inp: StepInput) -> StepResult:
        """The last pass after quiesce, then the integrity check of the digest maps."""
        sources, stats, result = self._each(
            inp, False, lambda s: self._copier.final(inp.context, s)
        )
        result.details["cold"] = any(s.label == "precopy" for s in stats)
        t0 = time.monotonic()
        bad: list[str] = []
        for src in sources:
            root, differing = self._copier.verify_disk(inp.context, src.name)
            result.facts[F.per_disk(F.DIGEST_ROOT, src.name)] = root
            if differing:
                shown = ", ".join(str(i) for i in differing[:10])
                bad.append(f"{src.name}: {len(differing)} block(s) differ ({shown})")
        result.details["integritySeconds"] = round(time.monotonic() - t0, 3)
        if bad:
            raise integrity_error(
                "the staged copy does not match the source after the final sync: " + "; ".join(bad)
            )
        result.details["integrity"] = "source and copy digest maps match"
        return result

    @activity.defn(name=Compensation.DISCARD_STAGING)
    def discard_staging(self, inp: StepInput) -> StepResult:
        """Remove this application's staging dir; a no-op when it is not there. At the
        pre-upgrade path (`adapters.staging.layout`), only this workflow's disk files."""
        ctx = inp.context
        removed = staging.legacy_files(ctx.resolved_site, ctx.application, ctx.workflowId)
        for f in removed:
            f.unlink(missing_ok=True)
        if removed and removed[0].parent.name not in staging.INTERNAL:
            with contextlib.suppress(OSError):  # only when empty
                removed[0].parent.rmdir()
        path = staging.application_dir(ctx.resolved_site, ctx.application)
        if path.is_symlink():
            path.unlink()  # never follow a link out of the staging dir
            removed.append(path)
        elif path.exists():
            shutil.rmtree(path)
            removed.append(path)
        return StepResult(
            step=inp.step,
            changed=bool(removed),
            details={"removed": ",".join(str(p) for p in removed)},
            attempt=_attempt(),
        )

    def consistency(self, ctx: StepContext) -> list[ConsistencyReport]:
        """`data_consistency_confirmed` for every disk of the application (frozen source)."""
        sources = self.sources(ctx, False)
        reports = []
        try:
            for s in sources:
                # what the target boots: the pre-converted image where there is one
                reader = self.mirror.reader(ctx, s.name) if self.mirror else None
                copy: Path | Reader = StagedDisk.of(ctx, s.name).raw if reader is None else reader
                try:
                    reports.append(data_consistency_confirmed(s, copy, self.block_size))
                finally:
                    if reader is not None:
                        reader.close()
            return reports
        finally:
            for s in sources:
                s.close()
