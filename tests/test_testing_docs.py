"""docs/testing.md runs (issue 5, item 6): every `# name.py` block is a file of a project.

The guide's blocks are written into an isolated pytest session (`pytester`) as a user
would save them, the golden history is recorded by running its module as a script, and
pytest then runs every test in them, as a user's session would: no conftest of this
project, nothing but replay's plugin (pytest-trio's and anyio's files run with those
plugins, where installed).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import re
from pathlib import Path

import pytest

from replay._codec import decode

pytest_plugins = ["pytester"]

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "testing.md"
BLOCK = re.compile(r"^```(?P<lang>\w+)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
FILE = re.compile(r"^# (?P<name>[\w/]+\.py)\n")


def blocks(lang: str) -> list[str]:
    return [m["body"] for m in BLOCK.finditer(GUIDE.read_text()) if m["lang"] == lang]


def files() -> dict[str, str]:
    found = {}
    for body in blocks("python"):
        named = FILE.match(body)
        assert named, f"a python block of the guide names no file:\n{body[:200]}"
        assert named["name"] not in found, f"two blocks are {named['name']}"
        found[named["name"]] = body
    return found


def count_tests(source: str) -> int:
    return len(re.findall(r"^(?:async )?def test_", source, re.MULTILINE))


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    for name, body in files().items():
        pytester.makepyfile(**{name.removesuffix(".py"): body})
    return pytester


def test_the_guide_names_its_files() -> None:
    assert sorted(files()) == sorted([
        "shop.py", "test_shop.py", "test_shop_waiting.py", "test_determinism.py",
        "test_shop_engine.py", "test_shop_pytest_trio.py", "test_shop_anyio.py",
        "test_shop_history.py", "test_stepping.py"])


def test_the_spec_example_is_tested_in_under_20_lines() -> None:
    _name, *lines = files()["test_shop.py"].splitlines()
    assert len(lines) < 20


def test_every_test_of_the_guide_passes_with_plain_pytest(project: pytest.Pytester) -> None:
    recorded = project.runpython(project.path / "test_shop_history.py")
    assert recorded.ret == 0, recorded.stderr.str()
    assert (project.path / "histories" / "checkout-approved.json").exists()
    plain = {name: body for name, body in files().items()
             if name.startswith("test_") and "pytest_trio" not in name and "anyio" not in name}
    result = project.runpytest("-p", "no:trio", "-p", "no:anyio", *plain)
    result.assert_outcomes(passed=sum(map(count_tests, plain.values())))


@pytest.mark.skipif(importlib.util.find_spec("pytest_trio") is None,
                    reason="needs pytest-trio")
def test_the_pytest_trio_example_passes(project: pytest.Pytester) -> None:
    result = project.runpytest("-p", "no:anyio", "test_shop_pytest_trio.py")
    result.assert_outcomes(passed=count_tests(files()["test_shop_pytest_trio.py"]))


@pytest.mark.skipif(importlib.util.find_spec("anyio") is None, reason="needs anyio")
def test_the_anyio_example_passes(project: pytest.Pytester) -> None:
    result = project.runpytest("-p", "no:trio", "test_shop_anyio.py")
    result.assert_outcomes(passed=count_tests(files()["test_shop_anyio.py"]))


def test_the_sample_history_record_is_a_real_one(project: pytest.Pytester) -> None:
    [sample] = [json.loads(body) for body in blocks("json")]
    project.runpython(project.path / "test_shop_history.py")
    exported = json.loads((project.path / "histories" / "checkout-approved.json").read_text())
    assert {k: v for k, v in sample.items() if k != "records"} == {
        k: v for k, v in exported.items() if k != "records"}
    [shown] = sample["records"]
    real = exported["records"][shown["seq"] - 1]
    assert list(shown) == list(real)
    assert {**real, "recorded_at": shown["recorded_at"]} == shown
    assert decode(base64.b64decode(shown["value"])) == shown["value_json"]
