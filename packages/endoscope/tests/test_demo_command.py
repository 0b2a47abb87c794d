"""``python -m endoscope demo`` as a user meets it: where it writes, what it prints."""

from __future__ import annotations

import pytest

from endoscope._demo import demo_model_path
from endoscope._main_job import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def scheduler():
    """Files and text, not interventions: one run per test (overrides conftest's)."""
    return None


def test_the_default_heatmap_goes_to_the_working_directorys_demo_folder(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 0
    png = tmp_path / "endoscope-demo" / "patching.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["endoscope-demo"]
    assert f"written to {png}" in capsys.readouterr().out  # the absolute path
    # The repository ignores that folder, wherever the demo is run from in it.
    root = demo_model_path().parents[4]
    ignored = (root / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "endoscope-demo/" in ignored


def test_out_and_no_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--out", "results/lens/heat.png"]) == 0
    png = tmp_path / "results" / "lens" / "heat.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert f"written to {png}" in capsys.readouterr().out
    assert main(["demo", "--no-plot"]) == 0
    assert "Heatmap" not in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_help_texts_are_plain_text(capsys):
    for argv in (["--help"], ["demo", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        text = capsys.readouterr().out
        assert "usage: python -m endoscope" in text
        assert "``" not in text and "*clean*" not in text and ":class:" not in text
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "--out PNG" in capsys.readouterr().out
