"""A wave file checked for structure alone, without a site (what `cutover wave validate`
without `--site` is to check, issue 14): the file's keys and bounds, each runbook (file or
inline; built-in checks only, nothing bound to a site), every application once, and
`dependsOn` naming applications of the wave without a cycle. With a site, `load_wave`
(cutover/wave.py) checks all of this and the site too."""

from __future__ import annotations

from pathlib import Path

from cutover.config import ConfigError, Problem, format_path, parse_yaml, validate_document
from cutover.runbook import Runbook
from cutover.site import load_runbook
from cutover.wave import WaveFile, _subnode, dependency_problems


def wave_structure(path: str | Path) -> tuple[str, list[str]]:
    """(wave name, its applications in file order), or ConfigError naming every problem."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([Problem(file, "", f"cannot read file: {reason}")]) from None
    data, node = parse_yaml(text, file)
    wf = validate_document(WaveFile, data, file, node)
    name = str(wf.wave)
    problems: list[Problem] = []
    apps: list[tuple[str, list[str]]] = []
    first: dict[str, int] = {}
    for i, entry in enumerate(wf.applications):
        loc: list[int | str] = ["applications", i, "runbook"]
        try:
            if isinstance(entry.runbook, str):
                rb = load_runbook(Path(path).parent / entry.runbook)
            else:
                inline = dict(entry.runbook)
                inline.setdefault("wave", name)
                rb = validate_document(
                    Runbook, inline, file, _subnode(node, loc), {"site_checks": frozenset()}
                )
        except ConfigError as exc:
            problems += exc.problems
            continue
        if rb.application in first:
            problems.append(
                Problem(
                    file,
                    format_path(loc),
                    f"application '{rb.application}' is listed "
                    f"twice (first as applications[{first[rb.application]}])",
                )
            )
            continue
        first[rb.application] = i
        apps.append((rb.application, list(entry.dependsOn)))
    if not problems:
        for i, j, msg in dependency_problems(apps):
            at: list[int | str] = ["applications", first[apps[i][0]], "dependsOn"]
            problems.append(Problem(file, format_path(at + ([] if j is None else [j])), msg))
    if problems:
        raise ConfigError(problems)
    return name, [a for a, _ in apps]
