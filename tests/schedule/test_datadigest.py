"""The new-data trigger's content digest (tuneloop.contract.datadigest), issue 20 item 13 and the suspicion that it can
read a file still being written: each test is named after the behaviour that failed before the fix."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tuneloop.contract import datadigest

pytestmark = pytest.mark.unit


def tree(root: Path) -> Path:
    (root / "support" / "2026-11").mkdir(parents=True)
    (root / "support" / "a.jsonl").write_text('{"messages": []}\n')
    (root / "support" / "2026-11" / "b.jsonl").write_text('{"messages": [1]}\n')
    return root


@pytest.mark.parametrize("pattern", ["**", "support", "support/", "support/**"])
def test_a_double_star_or_a_directory_glob_matches_the_files_under_it(tmp_path: Path, pattern: str):
    """Before (Python 3.11): `**` and a directory name matched directories only: 0 files, a baseline that never fired."""
    d = datadigest.digest(tree(tmp_path), pattern)
    assert (d["files"], d["bytes"]) == (2, 35)
    assert d["digest"] == datadigest.digest(tmp_path, "support/**/*.jsonl")["digest"]


def test_the_digest_of_an_ordinary_pattern_is_unchanged(tmp_path: Path):
    """The digest of the files a pattern matched before the fix is the same value (no spurious run after an upgrade)."""
    import hashlib

    tree(tmp_path)
    h = hashlib.sha256()
    for rel in ("support/2026-11/b.jsonl", "support/a.jsonl"):
        data = (tmp_path / rel).read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode() + data)
    assert datadigest.digest(tmp_path, "support/**/*.jsonl")["digest"] == f"sha256:{h.hexdigest()}"


@pytest.mark.parametrize("pattern", ["../*", "support/../../*", "/etc/*", "..", "a/.."])
def test_a_glob_that_leaves_the_claim_is_refused(tmp_path: Path, pattern: str):
    """Before: `../*` read files outside the claim."""
    root = tree(tmp_path / "claim")
    (tmp_path / "secret.jsonl").write_text("outside")
    with pytest.raises(datadigest.DigestError, match="leaves the data root"):
        datadigest.digest(root, pattern)


def test_a_symbolic_link_out_of_the_claim_fails_the_check_instead_of_being_read(tmp_path: Path):
    root = tree(tmp_path / "claim")
    (tmp_path / "secret.jsonl").write_text("outside")
    os.symlink(tmp_path / "secret.jsonl", root / "support" / "c.jsonl")
    with pytest.raises(datadigest.DigestError, match="outside the data root"):
        datadigest.digest(root, "support/*.jsonl")
    log = tmp_path / "termination"
    assert datadigest.main(["--root", str(root), "--glob", "support/*.jsonl", "--termination-log", str(log)]) == 1
    assert "outside the data root" in json.loads(log.read_text())["error"]


def test_a_file_still_being_written_is_read_again_until_it_is_stable(tmp_path: Path, monkeypatch):
    """Before: a file appended to during the read gave a digest of a torn file (size of one moment, contents of
    another)."""
    root = tree(tmp_path)
    target = root / "support" / "a.jsonl"
    real = datadigest._stamp
    calls = {"n": 0}

    def stamp(p: Path):
        if p == target:
            calls["n"] += 1
            if calls["n"] == 2:  # just after the first read: a writer appends a record
                with target.open("a") as f:
                    f.write('{"messages": [2]}\n')
        return real(p)

    monkeypatch.setattr(datadigest, "_stamp", stamp)
    slept = []
    got = datadigest.digest(root, "**", sleep=slept.append)
    monkeypatch.setattr(datadigest, "_stamp", real)
    assert got == datadigest.digest(root, "**") and slept == [0.5]  # the settled file, read once more


def test_a_file_that_keeps_changing_fails_the_check(tmp_path: Path, monkeypatch):
    root = tree(tmp_path)
    target = root / "support" / "a.jsonl"
    real = datadigest._stamp
    seen = {"n": 0}

    def stamp(p: Path):
        if p == target:
            seen["n"] += 1
            if seen["n"] % 2 == 0:
                with target.open("a") as f:
                    f.write("x")
        return real(p)

    monkeypatch.setattr(datadigest, "_stamp", stamp)
    with pytest.raises(datadigest.DigestError, match="changed while it was read, 3 times"):
        datadigest.digest(root, "**", sleep=lambda s: None)


@pytest.mark.parametrize("pattern", [".", "./", "./support", "support/."])
def test_a_dot_pattern_means_the_directory_not_a_crashed_digest_job(tmp_path: Path, pattern: str):
    """Found by the property test: pathlib (3.11) raised IndexError on `.`, which the digest Job did not catch."""
    d = datadigest.digest(tree(tmp_path), pattern)
    assert d["files"] == 2
