"""The CLI imports only what the action that runs needs: listing actions,
the data tools and the upgrade tools never import torch (checked in a fresh
interpreter's sys.modules, not with a timer), and the table of actions still
drives the help and the usage errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from caffe_ft.cli import main
from caffe_ft.cli.actions import ACTIONS

UPGRADE = Path(__file__).parent / "fixtures" / "upgrade"

# Runs caffe_ft's main in a fresh interpreter, then says whether torch was imported.
_PROBE = ("import sys\n"
          "from caffe_ft.cli import main\n"
          "status = main(sys.argv[1:])\n"
          "print('torch imported:', 'torch' in sys.modules)\n"
          "sys.exit(status)\n")


def run_cli(*argv: str | Path, cwd: Path | None = None) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-c", _PROBE, *map(str, argv)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout


@pytest.fixture(scope="module")
def image_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Three tiny images converted to an LMDB, and the converting run's stdout."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    lines = []
    for index in range(3):
        cv2.imwrite(str(root / f"{index}.png"), rng.integers(0, 256, (4, 5, 3), np.uint8))
        lines.append(f"{index}.png {index}\n")
    (root / "list.txt").write_text("".join(lines))
    status, out = run_cli("convert_imageset", f"{root}/", root / "list.txt", root / "db")
    assert status == 0
    return root / "db", out


def test_help_does_not_import_torch() -> None:
    status, out = run_cli("--help")
    assert status == 0
    assert "convert_imageset" in out and "torch imported: False" in out


def test_convert_imageset_does_not_import_torch(image_db: tuple[Path, str]) -> None:
    db, out = image_db
    assert (db / "data.mdb").is_file()
    assert "torch imported: False" in out


def test_compute_image_mean_does_not_import_torch(image_db: tuple[Path, str],
                                                  tmp_path: Path) -> None:
    status, out = run_cli("compute_image_mean", image_db[0], tmp_path / "mean.binaryproto")
    assert status == 0
    assert (tmp_path / "mean.binaryproto").stat().st_size > 0
    assert "torch imported: False" in out


def test_upgrade_net_proto_text_does_not_import_torch(tmp_path: Path) -> None:
    source = UPGRADE / "alexnet_finetune_oxford102_v1__train_val.prototxt"
    status, out = run_cli("upgrade_net_proto_text", source, tmp_path / "net.prototxt")
    assert status == 0
    assert "layer {" in (tmp_path / "net.prototxt").read_text()
    assert "torch imported: False" in out


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_every_action_names_a_runner_that_exists(name: str) -> None:
    assert callable(ACTIONS[name].load())


def test_help_lists_every_action(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, act in ACTIONS.items():
        assert f"  {name}" in out and act.help in out


def test_no_action_prints_the_list_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "actions:" in capsys.readouterr().out


def test_unknown_action_lists_the_actions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trian"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("caffe_ft: unknown action: trian\n")
    assert all(name in err for name in ACTIONS)


def test_action_help_lists_its_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compute_image_mean", "-help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: caffe_ft compute_image_mean [-backend lmdb] INPUT_DB")
    assert "  -backend (" in out and "  -v (" in out


def test_unknown_flag_lists_the_actions_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert_imageset", "-grey", "root/", "list", "db"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("caffe_ft convert_imageset: unknown flag -grey for "
                          "'convert_imageset'.")
    assert "  -gray (" in err
