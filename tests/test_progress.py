"""Long phases (GAN pre-training, diffusion stage 1, pool sampling, export) say when they start and end.

A batch log (``--no-progress``, or stderr not a terminal) gets one line when a phase starts and one with
its time and last losses when it ends; a terminal gets a bar between them.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from synthkit.cli import main
from synthkit.progress import Phase, duration

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "pipelines" / "tiny.yaml")
TINY_DIFFUSION = str(ROOT / "pipelines" / "tiny-diffusion.yaml")
STAMP = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO "


def _lines(err: str, pattern: str) -> list[int]:
    """Indices of the stderr lines that are log records matching ``pattern``."""
    regex = re.compile(STAMP + pattern)
    return [i for i, line in enumerate(err.splitlines()) if regex.match(line)]


def test_gan_pretraining_logs_its_start_and_end_before_the_first_epoch(tmp_path: Path, capsys) -> None:
    argv = ["train", TINY, "--out", str(tmp_path / "run"), "--no-progress", "--train.trackers=[]"]
    assert main([*argv, "--generator.pretrain_steps=5", "--train.epochs=1"]) == 0
    err = capsys.readouterr().err
    start = _lines(err, r"synthkit\.producers\.cgan: pretraining cGAN: 5 steps of realism alone, 16 samples")
    end = _lines(
        err, r"synthkit\.producers\.cgan: pretraining cGAN: done in \d+\.\d s \(loss_d [\d.]+, loss_g_adv "
    )
    epoch = _lines(err, r"synthkit\.training\.loop: epoch 1/1 ")
    assert len(start) == len(end) == len(epoch) == 1, err
    assert start[0] < end[0] < epoch[0]
    assert "\r" not in err  # no bar frames in a log


def test_a_diffusion_run_and_its_export_log_every_phase(tmp_path: Path, capsys) -> None:
    run, out = tmp_path / "run", tmp_path / "s"
    assert main(["train", TINY_DIFFUSION, "--out", str(run), "--no-progress", "--train.trackers=[]"]) == 0
    err = capsys.readouterr().err
    stage1 = r"synthkit\.producers\.diffusion: diffusion stage 1 \(UNet on the real images\): "
    assert len(_lines(err, stage1 + r"20 steps, batch 32 \.\.\.$")) == 1, err
    assert len(_lines(err, stage1 + r"done in \d+\.\d s \(loss_diffusion [\d.]+\)$")) == 1, err
    # a pool per epoch after the warm-up (3 epochs, warm-up 1): its size, guidance and t_split, then its time
    pool = r"synthkit\.producers\.diffusion: sampling the pool of epoch (\d)"
    starts = [re.search(pool, err.splitlines()[i]).group(1) for i in _lines(err, pool + r": \d+ imgs \(")]
    ends = _lines(err, pool + r": done in \d+\.\d s \(hardness [\d.]+, pair_similarity [-\d.]+\)$")
    assert starts == ["2", "3"] and len(ends) == 2, err

    assert main(["generate", "--run", str(run), "--out", str(out), "--n", "8", "--no-progress"]) == 0
    err = capsys.readouterr().err
    gen = r"synthkit\.export: generate: "
    assert len(_lines(err, gen + r"16 imgs \(8 hard samples and 8 pair samples\) \.\.\.$")) == 1, err
    assert len(_lines(err, gen + r"done in \d+\.\d s \(samples 16, hardness_mean [\d.]+\)$")) == 1, err


def test_a_phase_that_fails_logs_no_end_and_a_bar_only_when_asked(caplog) -> None:
    log = logging.getLogger("synthkit.test_progress")
    with caplog.at_level(logging.INFO, logger="synthkit.test_progress"):
        with pytest.raises(RuntimeError), Phase("failing", 3, progress=False, logger=log):
            raise RuntimeError("boom")
        with Phase("quiet", 2, progress=False, logger=log, main=False) as phase:
            phase.update(2)
    assert [r.getMessage() for r in caplog.records] == ["failing: 3 steps ..."]
    bars = {
        (progress, main): not Phase("b", 2, progress=progress, logger=log, main=main).bar.disable
        for progress in (True, False)
        for main in (True, False)
    }
    assert bars == {(True, True): True, (True, False): False, (False, True): False, (False, False): False}
    assert [duration(s) for s in (0.42, 58.24, 125.0)] == ["0.4 s", "58.2 s", "2 min 05 s"]
