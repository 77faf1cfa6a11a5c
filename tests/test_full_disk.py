"""A full disk during a sweep (reproduced with a file size limit, RLIMIT_FSIZE): ``lst-fast sweep`` stops with
one line naming the file and the cause and exit status 1, leaves no temporary file, and a rerun with space
finishes the sweep with the tables of an uninterrupted one."""

import subprocess
import sys

import pytest

from helpers import cli_args, single_threaded_env, sweep_config, table_numbers, unit_files

# Runs lst-fast with a file size limit; SIGXFSZ ignored, so that a write past it fails with EFBIG ("File too
# large") as a full disk fails with ENOSPC, instead of killing the process.
LIMITED = (
    "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "limit = int(sys.argv.pop(1)); resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
    "from lst_fast import cli; sys.exit(cli.main(sys.argv[1:]))"
)


def lst_fast(*args, limit=None):
    """Runs ``lst-fast ARGS`` in a subprocess, with the file size limit ``limit`` (bytes) if given; then images
    are loaded in the process itself (--workers 0): the limit also holds for the shared memory of loader workers."""
    prefix = [sys.executable, "-m", "lst_fast.cli"]
    if limit is not None:
        prefix, args = [sys.executable, "-c", LIMITED, str(limit)], (*args, "--workers", "0")
    return subprocess.run(prefix + [str(a) for a in args], check=False, capture_output=True, text=True,
                          env=single_threaded_env(), timeout=600)


@pytest.fixture(scope="module")
def config(image_folder, tiny_checkpoint):
    return sweep_config(image_folder, tiny_checkpoint, iters=2)


@pytest.fixture(scope="module")
def uninterrupted(config, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    assert lst_fast(*cli_args(config, out)).returncode == 0
    return out


def tables_of(out) -> list[str]:
    """``lst-fast tables`` of ``out``, Tables 1 and 2 as CSV, without the folder's name."""
    result = [lst_fast("tables", out, "--table", which, "--format", "csv") for which in ("1", "2")]
    assert all(r.returncode == 0 for r in result)
    return [r.stdout.replace(str(out), "DIR") for r in result]


def assert_failed_cleanly(result, out, path):
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [f"lst-fast sweep: error: cannot write {out / path}: File too large"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_manifest_write_fails(config, uninterrupted, tmp_path):
    out = tmp_path / "sweep"
    sizes = {name: (uninterrupted / name).stat().st_size for name in ("selection.json", "manifest.json")}
    assert sizes["selection.json"] < sizes["manifest.json"]  # written first, so a limit between stops the manifest
    failed = lst_fast(*cli_args(config, out), limit=sizes["selection.json"] + 1)
    assert_failed_cleanly(failed, out, "manifest.json")
    assert not (out / "manifest.json").exists() and not (out / "units").exists()

    assert lst_fast(*cli_args(config, out)).returncode == 0
    assert tables_of(out) == tables_of(uninterrupted)
    assert table_numbers(out) == table_numbers(uninterrupted)


def test_unit_write_fails_after_others_are_finished(config, uninterrupted, tmp_path):
    out = tmp_path / "sweep"
    assert lst_fast(*cli_args(config, out), "--phase", "traverse").returncode == 0
    finished = {name: path.read_bytes() for name, path in unit_files(out).items()}
    triangle_size = min(p.stat().st_size for p in (uninterrupted / "units" / "triangles").iterdir())
    # the finished LST units could not be written under the limit: the failing run skips them, never rewrites them
    assert min(p.stat().st_size for p in (out / "units" / "traverse").iterdir()) > triangle_size

    failed = lst_fast(*cli_args(config, out), limit=triangle_size - 1)
    assert_failed_cleanly(failed, out, "units/triangles/b00000.safetensors")
    assert {name: path.read_bytes() for name, path in unit_files(out).items()} == finished  # nothing lost

    rerun = lst_fast(*cli_args(config, out))
    assert rerun.returncode == 0 and "LST: 0 units" in rerun.stdout and "triangles: 3 units" in rerun.stdout
    assert tables_of(out) == tables_of(uninterrupted)
    assert table_numbers(out) == table_numbers(uninterrupted)
