"""docs/integrating.md documents every flag of `spotler-outbox fake-api` and every endpoint
the fake serves: read from the parser and the route table, not listed by hand."""

from __future__ import annotations

import argparse
from pathlib import Path

from spotler_outbox.worker.console.cli import build_parser
from spotler_outbox.worker.fake_spotler import server

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrating.md"


def fake_api_section() -> str:
    text = DOC.read_text()
    return text[text.index("## Trying it against the fake Spotler API"):]


def fake_api_flags() -> list[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [flag for action in sub.choices["fake-api"]._actions for flag in action.option_strings
            if flag.startswith("--") and flag != "--help"]


def test_the_fake_apis_flags_and_endpoints_are_all_documented() -> None:
    section = fake_api_section()
    flags = fake_api_flags()
    assert "--reject-orderid" in flags  # the parser was read
    assert [f for f in flags if f"`{f}" not in section] == []
    routes = [(method, path) for method, path in server._ROUTES if path.startswith("/_fake/")]
    assert [r for r in routes if f"`{r[0]} {r[1]}" not in section
            and f"{r[0]} {r[1]}`" not in section and f"{r[0]} {r[1]}?" not in section] == []


def test_every_fake_api_flag_says_what_it_does() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    undocumented = [a.option_strings for a in sub.choices["fake-api"]._actions
                    if a.option_strings and not a.help and a.dest not in ("port",)]
    assert undocumented == []
