"""bench/compare.py: rat variants, where reports go, and a short real run.

The full comparison takes many minutes; here it runs one scenario against
the minimal selectors peer (`--quick`), which shows that the report lands in
the results folder and that docs/ is left alone unless `--update-docs`.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPARE = ROOT / "bench" / "compare.py"
DOCS = [ROOT / "docs" / "BENCHMARKS.md", ROOT / "docs" / "benchmarks.png"]


def load_compare() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compare", COMPARE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes() if p.exists() else b"-")
    return h.hexdigest()


def test_rat_variants_parse() -> None:
    compare = load_compare()
    assert compare.parse_variant("rat-coalesce=--coalesce-ms 1") == (
        "rat-coalesce",
        ["--coalesce-ms", "1"],
    )
    for bad in ("coalesce=--x", "rat-x", "rat x=--y"):
        with pytest.raises(argparse.ArgumentTypeError):
            compare.parse_variant(bad)


def test_notes_are_kept_under_the_old_and_the_new_marker() -> None:
    compare = load_compare()
    old = "# old\n<!-- notes:begin (kept by bench/compare) -->\nmy analysis\n<!-- notes:end -->\n"
    text = compare.keep_notes("# new report\n", old)
    assert text.startswith("# new report\n")
    assert "my analysis" in text and text.count("notes:begin") == 1
    assert "kept by bench/compare.py" in text
    assert "Analysis" in compare.keep_notes("# new\n", None)


def test_every_scenario_has_its_command() -> None:
    compare = load_compare()
    for sc in compare.scenarios(False, 2.0):
        assert compare.reproduce(sc).startswith(f"rat bench {sc.args[0]} ")
    sweep = next(sc for sc in compare.scenarios(False, 2.0) if sc.name == "sweep-even")
    assert "--rates 500,1000,2000,10000,50000,100000" in compare.reproduce(sweep)
    assert "--pattern even" in compare.reproduce(sweep)


def run_compare(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(COMPARE), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_unknown_server_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_compare("--servers", "nonsense", "--results-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "unknown server or scenario: nonsense" in proc.stderr


@pytest.mark.slow
def test_quick_run_writes_results_not_docs(tmp_path: Path) -> None:
    before = digest(DOCS)
    proc = run_compare(
        "--quick", "--servers", "selectors,rat-bogus", "--rat-args", "rat-bogus=--no-such-flag",
        "--scenarios", "fanout-100", "--results-dir", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "skipping rat-bogus: this rat does not accept '--no-such-flag'" in proc.stderr
    assert digest(DOCS) == before  # no --update-docs: docs/ untouched
    (run_dir,) = tmp_path.iterdir()
    report = (run_dir / "report.md").read_text()
    assert "### fanout: 1 -> 100" in report
    assert "rat bench fanout --publishers 1 --window 1024" in report  # how to reproduce
    assert "| selectors |" in report and "rat-bogus (this rat does not accept" in report
    raw = json.loads((run_dir / "raw.json").read_text())
    assert raw["meta"]["servers"] == ["selectors"]
    again = run_compare("--from-results", str(run_dir / "raw.json"), "--results-dir", str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert len(list(tmp_path.iterdir())) >= 1
    assert digest(DOCS) == before
