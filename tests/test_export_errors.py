"""``fsnn export --out PATH`` refuses, in one line naming the path and the fix and before any
work, a PATH that is a folder or that cannot be written (for root too: a path under a regular
file, or in /proc)."""

from __future__ import annotations

from pathlib import Path

import pytest
from clirun import refused
from nets import dense_net

from fsnn.pipelines.export import ExportError, check_out_path
from fsnn.platform.spec import save_spec

# a source that would need a tracking server: a refusal must come before it is looked up
NO_SUCH_RUN = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def spec(tmp_path: Path) -> str:
    return str(save_spec(dense_net(), tmp_path / "spec"))


def test_out_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "outdir").mkdir()
    line = refused("export", NO_SUCH_RUN, "--out", "outdir", cwd=tmp_path)
    assert "--out outdir: is a folder; give a file name, e.g. --out outdir/model.nir" in line
    assert not (tmp_path / "mlflow.db").exists()


def test_out_under_a_regular_file(tmp_path: Path, spec: str) -> None:
    (tmp_path / "plain").write_text("x")
    line = refused("export", spec, "--out", "plain/sub/x.nir", cwd=tmp_path)
    assert "--out plain/sub/x.nir: plain is a file, not a folder" in line, line
    assert "give a path in a writable folder" in line
    line = refused("export", NO_SUCH_RUN, "--out", "/etc/passwd/x.nir", cwd=tmp_path)
    assert "--out /etc/passwd/x.nir: /etc/passwd is a file, not a folder" in line, line


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_out_where_nothing_can_be_written(tmp_path: Path) -> None:
    """/proc refuses new files to root as well: the probe writes, it does not read bits."""
    line = refused("export", NO_SUCH_RUN, "--out", "/proc/fsnn/x.nir", cwd=tmp_path)
    assert "--out /proc/fsnn/x.nir: cannot write in /proc (" in line, line
    assert not (tmp_path / "mlflow.db").exists()


def test_a_writable_path_passes_and_nothing_is_made(tmp_path: Path) -> None:
    out = tmp_path / "new" / "dir" / "x.nir"
    assert check_out_path(out) == out
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []
    (tmp_path / "old.nir").write_text("")
    check_out_path(tmp_path / "old.nir")  # an existing file is overwritten


def test_the_export_itself_still_writes(tmp_path: Path, spec: str) -> None:
    pytest.importorskip("nir")
    from fsnn.pipelines.export import run_export

    assert run_export(spec, out=str(tmp_path / "a" / "m.nir")).is_file()
    with pytest.raises(ExportError, match="is a folder"):
        run_export(spec, out=str(tmp_path / "a"))
