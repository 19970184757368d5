"""Input limits on every YAML file the CLI and the worker read (`cutover.config`): a file
past its size is refused before it is read; a document whose aliases nest into a
multiplication ("alias bomb") is refused before any value is built, naming the file and
the limits; ordinary anchors and merge keys still load."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from cutover import config
from cutover.config import ConfigError, parse_yaml

CUTOVER = str(Path(sys.executable).parent / "cutover")
SEED = Path(__file__).resolve().parent.parent / "examples" / "customer-analytics-api.yaml"


def bomb(levels: int, width: int) -> str:
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_any_value_is_built() -> None:
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as exc:
        parse_yaml(bomb(9, 9), "bomb.yaml")  # 9^9: 387 million values once expanded
    assert time.monotonic() - t0 < 10  # a hang guard, not a benchmark: it takes ms
    [p] = exc.value.problems
    assert p.file == "bomb.yaml"
    assert p.message.startswith("refused: 81 alias uses expanding to 926,177,116 values")
    assert "(limits: 100,000 aliases, 1,000,000 values)" in p.message


def test_a_site_whose_free_form_field_nests_aliases_is_refused_with_exit_2(
    tmp_path: Path,
) -> None:
    """The issue's case: `expectJson` (free-form) with aliases 4x per level."""
    levels = ["    l0: &l0 {k: v}"]
    for i in range(1, 12):
        refs = ", ".join(f"x{j}: *l{i - 1}" for j in range(4))
        levels.append(f"    l{i}: &l{i} {{{refs}}}")
    site = tmp_path / "site.yaml"
    site.write_text(
        "checks:\n  probe:\n    type: http\n    url: http://127.0.0.1:1/\n    expectJson:\n"
        + "\n".join(levels) + "\n"
    )  # fmt: skip
    done = subprocess.run([CUTOVER, "validate", str(SEED), "--site", str(site)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2, done
    assert f"{site}: (document): refused:" in done.stdout + done.stderr


def test_an_oversized_file_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = tmp_path / "runbook.yaml"
    with big.open("wb") as f:
        f.truncate(config.MAX_FILE_BYTES + 1)  # sparse: nothing to read, were it read
    done = subprocess.run([CUTOVER, "validate", str(big)], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 2, done
    assert "refused: 16,777,217 bytes, more than the 16,777,216" in done.stdout + done.stderr


def test_ordinary_anchors_and_merge_keys_still_load() -> None:
    text = (
        "defaults: &d {samples: 20, maxErrorRate: 0}\n"
        + "".join(f"c{i}: {{<<: *d, url: http://h/{i}}}\n" for i in range(2000))
    )  # fmt: skip
    data, _ = parse_yaml(text, "ok.yaml")
    assert data["c1999"] == {"samples": 20, "maxErrorRate": 0, "url": "http://h/1999"}
