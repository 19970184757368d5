"""The fleet's ledger and placement rules (pure logic, `cutover.fleet`)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cutover.fleet import Fleet, FleetBook, FleetRelease, FleetRequest, fleet_state


def permits(token: str, holder: str, urgent: bool = False, **res: int) -> FleetRequest:
    resources = {k.replace("_", ":", 1): v for k, v in res.items()}
    return FleetRequest(
        token=token, holder=holder, kind="permits", resources=resources, urgent=urgent
    )


def test_permits_never_exceed_a_limit_and_are_granted_in_order_as_released() -> None:
    book = FleetBook()
    for i in range(4):
        book.add(permits(f"t{i}", f"w{i}", host_h1=2, datastore_ds=3))
    assert [r.token for r, _ in book.grant()] == ["t0", "t1"]  # host h1 allows 2
    assert book.grant() == []
    book.release(FleetRelease(holder="w0", token="t0"))
    assert [r.token for r, _ in book.grant()] == ["t2"]
    assert book.in_use() == {"host:h1": 2, "datastore:ds": 2}


def test_an_urgent_copy_goes_first_and_a_blocked_one_is_never_overtaken() -> None:
    book = FleetBook()
    book.add(permits("a", "wa", host_h1=1))
    assert [r.token for r, _ in book.grant()] == ["a"]
    book.add(permits("big", "wb", host_h1=1, esxi_e1=1))  # waits for host h1
    book.add(permits("small", "wc", esxi_e1=1))  # would fit, but e1 is what `big` waits for
    book.add(permits("final", "wd", urgent=True, host_h1=1))
    assert book.grant() == []
    book.release(FleetRelease(holder="wa"))
    # the downtime's copy first; `big` still waits on h1, and `small` may not pass it on e1
    assert [r.token for r, _ in book.grant()] == ["final"]
    book.release(FleetRelease(holder="wd"))
    assert [r.token for r, _ in book.grant()] == ["big"]
    state = fleet_state(book)
    assert state.waiting == 1
    assert {u.resource: (u.inUse, u.limit, u.waiting) for u in state.resources} == {
        "host:h1": (1, 1, 0),
        "esxi:e1": (1, 1, 1),
    }


def test_a_host_goes_to_the_least_loaded_and_a_retried_request_counts_once() -> None:
    book = FleetBook()
    req = FleetRequest(token="h-a", holder="wa", kind="host", pick=["h1", "h2"])
    book.add(req)
    book.add(req)  # the activity retried: one request
    assert book.grant() == [(req, "h1")]
    book.add(FleetRequest(token="h-b", holder="wb", kind="host", pick=["h1", "h2"]))
    assert [h for _, h in book.grant()] == ["h2"]
    book.add(FleetRequest(token="h-c", holder="wc", kind="host", pick=["h1"]))
    assert [h for _, h in book.grant()] == ["h1"]  # placement narrows the choice
    assert book.load() == {"h1": 2, "h2": 1}
    book.release(FleetRelease(holder="wa"))  # the cutover ended: all it held
    assert book.load() == {"h1": 1, "h2": 1}
    assert book.holders() == ["wb", "wc"]


def test_placement_prefers_hosts_near_the_data_and_limits_come_from_the_site() -> None:
    fleet = Fleet.model_validate(
        {
            "dataHosts": [
                {"name": "conv-01", "datastores": ["ds-a"]},
                {"name": "conv-02", "pools": ["fast"], "maxCopies": 1},
                {"name": "conv-03"},
            ],
            "limits": {"perDataHost": 4, "perEsxiHost": 2},
        }
    )
    assert fleet.candidates(["ds-a"], []) == ["conv-01"]
    assert fleet.candidates(["ds-z"], ["fast"]) == ["conv-02"]
    assert fleet.candidates(["ds-z"], []) == ["conv-01", "conv-02", "conv-03"]
    assert fleet.copy_resources("conv-02", ["esx1", "esx1"], ["ds-a"]) == {
        "host:conv-02": 1,
        "esxi:esx1": 2,
    }  # no perDatastore limit: datastores are not counted


def test_a_fleet_names_each_host_once_in_a_valid_form() -> None:
    with pytest.raises(ValidationError, match="each name once"):
        Fleet.model_validate({"dataHosts": [{"name": "h1"}, {"name": "h1"}]})
    with pytest.raises(ValidationError, match="name"):
        Fleet.model_validate({"dataHosts": [{"name": "Bad Host"}]})
    with pytest.raises(ValidationError, match="dataHosts"):
        Fleet.model_validate({"dataHosts": []})


def test_a_worker_role_that_cannot_serve_its_sites_is_refused_naming_the_fix() -> None:
    import argparse

    from cutover.cli.service import _role_problem
    from cutover.site import SiteConfig

    plain = SiteConfig.model_validate({"name": "dc1"})
    fleet = SiteConfig.model_validate({"name": "dc2", "fleet": {"dataHosts": [{"name": "h1"}]}})

    def args(**kw: object) -> argparse.Namespace:
        base = {"role": "all", "data_host": None, "staging_dir": None, "max_copies": None,
                "deployment": None, "build_id": None}  # fmt: skip
        return argparse.Namespace(**{**base, **kw})

    assert _role_problem(args(), [plain]) is None
    assert "run --role all" in str(_role_problem(args(role="orchestration"), [plain]))
    assert _role_problem(args(role="orchestration"), [fleet]) is None
    assert "needs --data-host" in str(_role_problem(args(role="data"), [fleet]))
    assert "needs --staging-dir" in str(_role_problem(args(role="data", data_host="h1"), [fleet]))
    ok = args(role="data", data_host="h1", staging_dir="/srv/h1")
    assert _role_problem(ok, [fleet]) is None
    assert "it names: h1" in str(_role_problem(args(**{**vars(ok), "data_host": "h9"}), [fleet]))
    versioned = args(**{**vars(ok), "deployment": "d", "build_id": "b1"})
    assert "a data host is not versioned" in str(_role_problem(versioned, [fleet]))
    assert "needs --deployment" in str(_role_problem(args(build_id="b1"), [plain]))


def test_a_host_reported_lost_is_offered_only_when_no_other_is_and_for_a_while() -> None:
    from datetime import UTC, datetime, timedelta

    from cutover.fleet import SUSPECT_FOR

    t0 = datetime(2026, 12, 5, tzinfo=UTC)
    book = FleetBook()
    book.lost("h1", t0)
    book.add(FleetRequest(token="a", holder="wa", kind="host", pick=["h1", "h2"]))
    assert [h for _, h in book.grant(t0 + timedelta(seconds=1))] == ["h2"]  # h1 is idler
    book.add(FleetRequest(token="b", holder="wb", kind="host", pick=["h1"]))
    assert [h for _, h in book.grant(t0 + timedelta(seconds=2))] == ["h1"]  # the only one
    assert fleet_state(book).lost == ["h1"]
    book.add(FleetRequest(token="c", holder="wc", kind="host", pick=["h1", "h2"]))
    later = t0 + SUSPECT_FOR + timedelta(seconds=1)
    book.release(FleetRelease(holder="wb"))
    assert [h for _, h in book.grant(later)] == ["h1"]  # forgiven: least loaded again
    assert fleet_state(book).lost == []
