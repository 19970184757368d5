"""Operators in the Temporal UI: a real dev server with its Web UI, driven by headless Chromium.

The test owns a dev server started *with* the Web UI (the session's server is headless), a
worker with the test activities (tests/world.py) on its own task queue, and Debian's
`chromium` driven by the `playwright` package (never `playwright install`: no downloads).
What an operator does here goes through the UI: start the cutover from the Start Workflow
form, find it in the list by its search attributes, read its current details, step
summaries and `status` query, send the `approve`, `extend`, `finalize` and `rollback`
Updates (refused ones too). The client is used to wait and to check what the UI did (and
to start the rollback test's cutover, as the CLI would). Screenshots (and each page's
text) land in test-artifacts/ui/<test>/.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from temporalio.api.failure.v1 import Failure
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from cutover import server
from cutover.models import CutoverResult, Outcome, Phase
from cutover.temporal import DATA_CONVERTER, connect
from tests.conftest import DevServer
from tests.factories import cutover_input
from tests.site_refs import SiteByReference, by_reference
from tests.test_workflow import wait_phase
from tests.world import World
from workers.worker import build_worker
from workflows.cutover import AppCutoverWorkflow, workflow_id_for

if TYPE_CHECKING:
    from playwright.async_api import Browser, FrameLocator, Locator, Page, Route

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "ui"
NS = "default"


def _require_browser() -> None:
    """Fail (never skip) with what to install when the browser stack is missing."""
    missing: list[str] = []
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        missing.append("the `playwright` Python package: .venv/bin/pip install playwright")
    if not CHROMIUM.exists():
        missing.append(
            "Debian's chromium at /usr/bin/chromium: "
            "apt-get install -y --no-install-recommends chromium"
        )
    if missing:
        pytest.fail(
            "the Temporal UI browser test needs "
            + "; and ".join(missing)
            + " (scripts/setup.sh installs both; never `playwright install`)",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server.temporal_binary()
    d = tmp_path_factory.mktemp("temporal-ui")
    srv = DevServer(d / "temporal.db", d / "server.log", ui=True)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
async def ui_client(ui_server: DevServer) -> AsyncIterator[Client]:
    yield await connect(ui_server.address, NS, interceptors=[SiteByReference()])


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    _require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield b
        await b.close()


class Shots:
    """Numbered screenshots (and the page's text) under tmp_path, copied to ARTIFACTS/name."""

    def __init__(self, page: Page, where: Path) -> None:
        self.page, self.where, self.n = page, where, 0
        self.t0 = time.monotonic()
        where.mkdir(parents=True, exist_ok=True)

    async def take(self, name: str) -> None:
        self.n += 1
        stem = self.where / f"{self.n:02d}-{name}"
        with (self.where / "timings.txt").open("a") as f:
            f.write(f"{time.monotonic() - self.t0:6.1f}s {stem.name}\n")
        await self.page.screenshot(path=f"{stem}.png", full_page=True)
        stem.with_suffix(".txt").write_text(await self.page.inner_text("body"))

    def publish(self) -> None:
        dest = ARTIFACTS / self.where.name
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(self.where, dest)


@contextlib.asynccontextmanager
async def operator_page(
    browser: Browser, ui_server: DevServer, artefacts: Path
) -> AsyncIterator[tuple[Page, Shots]]:
    """A fresh page on the UI; screenshots published even (above all) when the test fails."""
    page = await browser.new_page(viewport={"width": 1600, "height": 1200})
    page.set_default_timeout(15_000)
    await _hermetic(page, ui_server.ui_url)
    shots = Shots(page, artefacts)
    try:
        yield page, shots
    except BaseException:
        with contextlib.suppress(Exception):
            await shots.take("failure")
        raise
    finally:
        shots.publish()
        await page.close()


async def _hermetic(page: Page, ui_url: str) -> None:
    """Only the local UI: its news feed and docs links must not reach the internet."""

    async def route(r: Route) -> None:
        if r.request.url.startswith(ui_url) or r.request.url.startswith("data:"):
            await r.continue_()
        else:
            await r.abort()

    await page.route("**/*", route)


def _visible(page: Page, test_id: str) -> Locator:
    """The UI renders some controls twice (one hidden, for narrow screens)."""
    return page.locator(f"[data-testid='{test_id}']:visible")


async def _type_json(page: Page, editor: Locator, data: dict[str, Any]) -> None:
    """The UI's payload editor (CodeMirror) keeps what was typed last time: replace it,
    as an operator pasting the JSON would."""
    await editor.click()
    await page.keyboard.press("Control+A")
    await page.keyboard.press("Delete")
    await page.keyboard.insert_text(json.dumps(data))


async def _send_update(page: Page, name: str, data: dict[str, Any]) -> Locator:
    """More Actions -> Send an Update: pick the update by name, type its JSON, submit."""
    await page.get_by_role("button", name="More Actions").click()
    await _visible(page, "update-button").click()
    dialog = page.get_by_role("dialog").filter(has_text="Send an Update")
    await _visible(page, "update-select-button").click()
    await page.get_by_role("option", name=re.compile(rf"^{name}\b")).click()
    await _type_json(page, dialog.get_by_role("textbox", name="Data"), data)
    # Leaving the editor reformats the JSON and resizes the dialog: do that first, or the
    # click on Submit can land while the button moves (as a hurried person's would).
    await dialog.get_by_role("textbox", name="Data").evaluate("e => e.blur()")
    await dialog.get_by_role("button", name="Submit").click()
    return dialog


def _details(page: Page) -> FrameLocator:
    """Current details: the UI renders the workflow's markdown in a sandboxed iframe."""
    return page.frame_locator("iframe[src*='/render']")


async def test_operator_runs_a_cutover_from_the_temporal_ui(
    browser: Browser, ui_server: DevServer, ui_client: Client, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    world = World()
    queue = f"ui-{uuid.uuid4().hex[:8]}"
    inp = cutover_input(
        queue,
        approval={"required": True, "approvers": ["ops-lead"], "allowEarlyFinalize": True},
        rollbackWindowMinutes=30,
        checkIntervalSeconds=5,
    )
    app = inp.runbook.application
    wid = workflow_id_for(app)
    base = f"{ui_server.ui_url}/namespaces/{NS}/workflows"
    async with (
        operator_page(browser, ui_server, tmp_path / "start-approve-finalize") as (page, shots),
        build_worker(ui_client, queue, activities=world.activities()),
    ):
        # 1. Start Workflow form: ID, task queue, type, the CutoverInput as JSON.
        await page.goto(f"{base}/start-workflow")
        await page.get_by_test_id("workflowId").fill(wid)
        await page.get_by_test_id("taskQueue").fill(queue)
        await page.get_by_test_id("workflowType").fill("AppCutover")
        await _type_json(
            page,
            page.get_by_role("textbox", name="Data"),
            by_reference(inp).model_dump(mode="json", exclude_none=True),
        )
        await expect(page.get_by_text("Task Queue is Active")).to_be_visible()
        await shots.take("start-form")
        await page.get_by_test_id("start-workflow-button").click()
        await expect(page.get_by_role("link", name="Workflow started successfully")).to_be_visible()
        await shots.take("started")
        handle = ui_client.get_workflow_handle(wid, result_type=CutoverResult)
        await wait_phase(handle, Phase.AWAITING_APPROVAL)

        # 2. The list, filtered by a search attribute, with the cutover columns.
        await page.goto(base)
        await page.get_by_test_id("toggle-manual-query").click()
        await page.get_by_test_id("workflow-manual-search-input").fill(
            f'CutoverApplication="{app}"'
        )
        await page.get_by_test_id("workflow-manual-search-button").click()
        await page.get_by_test_id("workflows-summary-table-configuration-button").click()
        for col in ("Run ID", "End"):  # room for ours on the screenshot
            await page.get_by_test_id(f"orderable-list-item-{col}-remove-button").click()
        for col in ("CutoverWave", "CutoverApplication", "CutoverPhase", "CutoverOutcome"):
            await page.get_by_test_id(f"orderable-list-item-{col}-add-button").click()
        await page.get_by_test_id("drawer-close-button").click()
        row = page.get_by_role("row").filter(has_text=wid)
        await expect(row).to_have_count(1)
        for text in (app, "AWAITING_APPROVAL", "RUNNING", "AppCutover"):
            await expect(row).to_contain_text(text)
        await expect(page.get_by_role("row").filter(has_text="cutover-")).to_have_count(1)
        await shots.take("list-filtered")

        # 3. The detail page: step summaries on the timeline, current details.
        await row.get_by_role("link", name=wid).click()
        await expect(page.get_by_text(f"warm pre_copy for {app}")).to_be_visible()
        await expect(page.get_by_text(f"check dns_ttl_lowered for {app}")).to_be_visible()
        await shots.take("timeline")
        await page.get_by_test_id("user-metadata-tab").click()
        details = _details(page).locator("body")
        await expect(details).to_contain_text(f"{app} (wave 2): AWAITING_APPROVAL")
        await expect(details).to_contain_text("waiting for approval by one of: ops-lead")
        await shots.take("current-details-awaiting-approval")

        # 4. Updates from the UI: a refused approver, then the right one.
        dialog = await _send_update(page, "approve", {"approver": "mallory"})
        await expect(dialog).to_contain_text(
            f"'mallory' is not an allowed approver for {app} (allowed: ops-lead)"
        )
        await shots.take("approve-refused")
        # ... and no stack trace under it (cutover.temporal's failure converter)
        await expect(dialog).not_to_contain_text('File "')
        assert (await handle.query(AppCutoverWorkflow.status)).approvedBy is None
        await dialog.get_by_test_id("cancel-modal-button").click()
        await expect(dialog).to_be_hidden()
        dialog = await _send_update(page, "approve", {"approver": "ops-lead", "comment": "ui"})
        await expect(dialog).to_be_hidden()
        await shots.take("approve-accepted")
        await wait_phase(handle, Phase.ROLLBACK_WINDOW)
        await page.reload()
        details = _details(page).locator("body")
        await expect(details).to_contain_text("ROLLBACK_WINDOW")
        await expect(details).to_contain_text("post-checks passing: 4 of 4")
        await shots.take("current-details-window")

        before = (await handle.query(AppCutoverWorkflow.status)).windowClosesAt
        dialog = await _send_update(page, "extend", {"minutes": 5, "requestedBy": "ops-lead"})
        await expect(dialog).to_be_hidden()
        async with asyncio.timeout(10):
            while (await handle.query(AppCutoverWorkflow.status)).windowClosesAt == before:
                await asyncio.sleep(0.1)
        after = (await handle.query(AppCutoverWorkflow.status)).windowClosesAt
        assert before is not None and after is not None
        assert (after - before).total_seconds() == 300
        dialog = await _send_update(page, "finalize", {"requestedBy": "ops-lead"})
        await expect(dialog).to_be_hidden()
        result = await asyncio.wait_for(handle.result(), 30)

        assert result.outcome == Outcome.COMPLETED, result.reason
        assert result.reason == "finalized early by ops-lead"
        assert result.approvedBy == "ops-lead"
        assert "mark_source_migrated" in world.calls  # finalize ran
        await page.reload()
        details = _details(page).locator("body")
        await expect(details).to_contain_text(f"{app} (wave 2): DONE")
        await expect(details).to_contain_text("COMPLETED: finalized early by ops-lead")
        await shots.take("current-details-done")
        await page.get_by_test_id("queries-tab").click()
        await page.get_by_role("button", name="Run Query").click()
        await expect(page.locator("main")).to_contain_text('"approvedBy": "ops-lead"')
        await shots.take("query-status")

        # 5. The list again: the outcome is filterable.
        await page.goto(base)
        await page.get_by_test_id("toggle-manual-query").click()
        await page.get_by_test_id("workflow-manual-search-input").fill(
            f'CutoverApplication="{app}" AND CutoverOutcome="COMPLETED"'
        )
        await page.get_by_test_id("workflow-manual-search-button").click()
        row = page.get_by_role("row").filter(has_text=wid)
        await expect(row).to_contain_text("COMPLETED")
        await expect(row).to_contain_text(re.compile(r"\bDONE\b"))
        await shots.take("list-completed")


async def test_operator_rolls_a_cutover_back_from_the_temporal_ui(
    browser: Browser, ui_server: DevServer, ui_client: Client, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    world = World()
    queue = f"ui-{uuid.uuid4().hex[:8]}"
    inp = cutover_input(
        queue,
        approval={"allowEarlyFinalize": False},
        rollbackWindowMinutes=30,
        checkIntervalSeconds=5,
    )
    app = inp.runbook.application
    base = f"{ui_server.ui_url}/namespaces/{NS}/workflows"
    async with (
        operator_page(browser, ui_server, tmp_path / "rollback") as (page, shots),
        build_worker(ui_client, queue, activities=world.activities()),
    ):
        # Started as the CLI starts it; the UI takes over in the rollback window.
        handle = await ui_client.start_workflow(
            AppCutoverWorkflow.run, inp, id=workflow_id_for(app), task_queue=queue
        )
        await wait_phase(handle, Phase.ROLLBACK_WINDOW)
        await page.goto(f"{base}/{handle.id}")
        await page.get_by_test_id("user-metadata-tab").click()
        details = _details(page).locator("body")
        await expect(details).to_contain_text(f"{app} (wave 2): ROLLBACK_WINDOW")
        await expect(details).not_to_contain_text("finalize")  # not offered: not allowed

        dialog = await _send_update(page, "finalize", {"requestedBy": "ops-lead"})
        await expect(dialog).to_contain_text(
            "this runbook does not allow finalizing before the window closes"
        )
        await shots.take("finalize-refused")
        await dialog.get_by_test_id("cancel-modal-button").click()
        dialog = await _send_update(
            page, "rollback", {"reason": "p95 up", "requestedBy": "ops-lead"}
        )
        await expect(dialog).to_be_hidden()
        result = await asyncio.wait_for(handle.result(), 30)
        assert result.outcome == Outcome.ROLLED_BACK
        assert result.reason == "rollback requested by ops-lead: p95 up"
        assert "restart_source" in world.calls and "remove_target_domain" in world.calls

        await page.reload()
        details = _details(page).locator("body")
        await expect(details).to_contain_text("ROLLED_BACK: rollback requested by ops-lead: p95 up")
        await shots.take("current-details-rolled-back")
        await page.get_by_test_id("timeline-tab").click()
        await expect(
            page.get_by_text(f"compensation restart_source for {app}").first
        ).to_be_visible()
        await shots.take("timeline-compensations")

        await page.goto(base)
        await page.get_by_test_id("toggle-manual-query").click()
        await page.get_by_test_id("workflow-manual-search-input").fill(
            f'CutoverWave="2" AND CutoverOutcome="ROLLED_BACK" AND CutoverApplication="{app}"'
        )
        await page.get_by_test_id("workflow-manual-search-button").click()
        await expect(page.get_by_role("row").filter(has_text=handle.id)).to_have_count(1)
        await shots.take("list-rolled-back")


def test_update_refusals_carry_no_stack_trace() -> None:
    """What the UI's update dialog prints under a refusal: nothing but its reason."""
    for kind, traced in (("Refused", False), ("InvalidState", True)):
        failure = Failure()
        try:
            raise ApplicationError("no", type=kind, non_retryable=True)
        except ApplicationError as exc:
            DATA_CONVERTER.failure_converter.to_failure(
                exc, DATA_CONVERTER.payload_converter, failure
            )
        assert failure.message == "no"
        assert bool(failure.stack_trace) is traced, kind
