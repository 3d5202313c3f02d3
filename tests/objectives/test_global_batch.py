"""Two gloo processes holding half a batch each compute what one process holding all of it computes.

For SimCLR with plain pairs, SimCLR with positive groups (a generated pair's four views) and MoCo: the
per-view losses, the per-sample hardness, the weights after one SGD step of the encoder *and* of the HSG
generator whose samples reach the encoder through the gradient reversal, and MoCo's queue after the step.
SGD, not Adam, so that a gradient off by the factor W (the usual mistake with a gather under DDP) shows.

The encoder and the generator run in eval mode and the views are the identity (crop scale 1, no flip, no
jitter), so that batch-norm statistics and augmentation draws, which are per process by design (see
``train.sync_batchnorm``), do not enter: what is compared is the contrastive objective and the gradient path.
The one-process reference runs here; the two processes are spawned once with ``torch.multiprocessing`` and
an Accelerator on gloo, and save their results (every case, the collectives themselves, and what
``train.sync_batchnorm`` says on CPU processes) for this process to compare.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from synthkit.config import load_pipeline
from synthkit.data.views import Views
from synthkit.distributed import gather_groups, gather_rows, reduce_values
from synthkit.encoders.model import Encoder
from synthkit.errors import RunError
from synthkit.generators.cgan import Generator
from synthkit.losses.nt_xent import per_sample_hardness
from synthkit.objectives.base import build_objective
from synthkit.producers.base import Chunk, Contribution
from synthkit.producers.hard_samples import grad_reverse
from synthkit.training.loop import _sync_batchnorm
from synthkit.training.steps import EncoderStep

pytestmark = pytest.mark.slow

TINY = Path(__file__).resolve().parents[2] / "pipelines" / "tiny.yaml"
WORLD = 2
N_REAL, N_SYN, N_PAIR = 8, 4, 4  # global; each process holds half of each chunk
LAMBDA_HARD = 0.7


def _cfg(objective: str):
    return load_pipeline(
        TINY,
        [
            f"--objective.name={objective}",
            *(
                ["--objective.queue_size=24", "--objective.queue_synthetic=true"]
                if objective == "moco"
                else []
            ),
            "--views.crop_scale=[1.0, 1.0]",
            "--views.flip_p=0.0",
            "--views.jitter_p=0.0",
        ],
    )


def _models(objective: str):
    """Encoder, objective, views and generator with fixed weights (eval mode), and the global batch."""
    cfg = _cfg(objective)
    torch.manual_seed(0)
    encoder = Encoder(cfg.encoder, 1).eval()
    generator = Generator(cfg.generator.z_dim, 1, 16, 0, base=8).eval()
    obj = build_objective(cfg.objective, encoder, cfg.encoder.proj_dim, seed=0)
    for module in obj.modules().values():
        module.eval()
    views = Views(cfg.views, 1, 16)
    g = torch.Generator().manual_seed(1)
    batch = {
        "real": torch.rand(N_REAL, 1, 16, 16, generator=g),
        "z": torch.randn(N_SYN, cfg.generator.z_dim, generator=g),
        "pair_a": torch.rand(N_PAIR, 1, 16, 16, generator=g),
        "pair_b": torch.rand(N_PAIR, 1, 16, 16, generator=g),
    }
    return encoder, obj, views, generator, batch


def _share(batch: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    return {k: v.chunk(world)[rank] for k, v in batch.items()}


def _step(acc, encoder, obj, views, generator, batch, groups: bool):
    """One encoder step (the shipped EncoderStep) with an HSG chunk and, with ``groups``, a pair chunk."""
    opt = torch.optim.SGD(encoder.parameters(), lr=0.5)
    opt_g = torch.optim.SGD(generator.parameters(), lr=0.5)
    encoder, opt, generator, opt_g = acc.prepare(encoder, opt, generator, opt_g)
    step = EncoderStep(acc, encoder, views, opt, obj)
    captured: dict[str, torch.Tensor] = {}
    per_view_of = obj.per_view

    def per_view(*args, **kwargs):  # keep the step's per-view losses for the comparison
        out = per_view_of(*args, **kwargs)
        captured["per_view"] = out.detach().clone()
        return out

    obj.per_view = per_view
    chunks = [Chunk(grad_reverse(generator(batch["z"]), LAMBDA_HARD), "syn")]
    if groups:
        chunks.append(Chunk(batch["pair_a"], "pair", partner=batch["pair_b"]))
    rec = step(batch["real"], Contribution(chunks, None, [opt_g], {}))
    obj.per_view = per_view_of
    bare = acc.unwrap_model(encoder)
    out = {
        "per_view": captured["per_view"],
        "loss_cl": torch.tensor(rec["loss_cl"]),
        **{f"encoder.{k}": v.detach().clone() for k, v in bare.state_dict().items()},
        **{f"generator.{k}": v.detach().clone() for k, v in acc.unwrap_model(generator).state_dict().items()},
    }
    if hasattr(obj, "momentum"):
        out["queue"] = obj.momentum.queue.detach().clone()
    return out


def _layout(n: dict[str, int], groups: bool) -> list[tuple[str, int]]:
    """(chunk, size) in the step's image order."""
    order = [("real", n["real"]), ("syn", n["z"])]
    return order + ([("pair_a", n["pair_a"]), ("pair_b", n["pair_b"])] if groups else [])


def _by_image(per_view: torch.Tensor, sizes: dict[str, int], groups: bool) -> dict[str, torch.Tensor]:
    """Per-view losses as {chunk: (view 1 losses, view 2 losses)} stacked, from the step's row layout."""
    m = per_view.shape[0] // 2
    out, offset = {}, 0
    for name, size in _layout(sizes, groups):
        out[name] = torch.stack([per_view[offset : offset + size], per_view[m + offset : m + offset + size]])
        offset += size
    return out


CASES = {"simclr": ("simclr", False), "groups": ("simclr", True), "moco": ("moco", True)}


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        ACCELERATE_USE_CPU="1",
    )
    torch.set_num_threads(1)
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    for case, (objective, groups) in CASES.items():
        encoder, obj, views, generator, batch = _models(objective)
        res = _step(acc, encoder, obj, views, generator, _share(batch, rank, WORLD), groups)
        torch.save(res, Path(out) / f"{case}-rank{rank}.pt")
    # the collectives themselves: rows of unequal counts, their gradient, reduced records
    x = torch.full((rank + 2, 3), float(rank), requires_grad=True)
    rows_all, mine = gather_rows(x)
    weights = torch.arange(float(rows_all.numel())).view_as(rows_all)
    (rows_all * weights).sum().backward()  # the same loss on both processes
    res = {"gathered": rows_all.detach(), "grad": x.grad, "expected_grad": WORLD * weights[mine]}
    res["groups"] = gather_groups(torch.tensor([0, 1, 1, 0][: rank + 3]))
    record = {"loss": float(rank), "steps": 7, "stage": "x"}
    res["reduced"] = torch.tensor(
        [reduce_values(record, acc.device, op)["loss"] for op in ("mean", "max", "sum")]
        + [reduce_values(record, acc.device)["steps"]]
    )
    torch.save(res, Path(out) / f"collectives-rank{rank}.pt")
    # train.sync_batchnorm on CPU processes: refused by the loop, with a reason
    try:
        _sync_batchnorm(_models("simclr")[0], acc)
        message = ""
    except RunError as exc:
        message = str(exc)
    (Path(out) / f"sync-rank{rank}.txt").write_text(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def spawned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two spawned gloo processes, every case: one start-up for all the tests here."""
    out = tmp_path_factory.mktemp("global_batch")
    threads = torch.get_num_threads()
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD)
    torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_equal_one_process_on_the_same_global_batch(case, spawned: Path) -> None:
    from accelerate import Accelerator

    objective, groups = CASES[case]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    encoder, obj, views, generator, batch = _models(objective)
    before = {
        **{f"encoder.{k}": v.clone() for k, v in encoder.state_dict().items()},
        **{f"generator.{k}": v.clone() for k, v in generator.state_dict().items()},
    }
    ref = _step(Accelerator(cpu=True), encoder, obj, views, generator, batch, groups)
    torch.set_num_threads(threads)
    shares = [torch.load(spawned / f"{case}-rank{r}.pt", weights_only=True) for r in range(WORLD)]

    sizes = {k: len(v) for k, v in batch.items()}
    ref_views = _by_image(ref["per_view"], sizes, groups)
    local_sizes = {k: v // WORLD for k, v in sizes.items()}
    for name in ref_views:
        got = torch.cat([_by_image(s["per_view"], local_sizes, groups)[name] for s in shares], dim=1)
        torch.testing.assert_close(
            got, ref_views[name], rtol=1e-5, atol=1e-5, msg=f"per-view losses of {name}"
        )
        # hardness: the mean of an image's two views, as the step and the export define it
        ref_hard = per_sample_hardness(ref_views[name].flatten())
        torch.testing.assert_close(per_sample_hardness(got.flatten()), ref_hard, rtol=1e-5, atol=1e-5)
    # the global loss is the mean of the processes' losses (equal shares)
    mean_loss = sum(float(s["loss_cl"]) for s in shares) / WORLD
    assert mean_loss == pytest.approx(float(ref["loss_cl"]), rel=1e-5)
    # one SGD step: the same weights on both processes and as one process's (encoder and HSG generator)
    # (MoCo: and the same queue, its keys enqueued in the one-process order)
    moved: set[str] = set()
    for key, value in ref.items():
        if key.startswith(("encoder.", "generator.", "queue")):
            for s in shares:
                torch.testing.assert_close(s[key], value, rtol=1e-5, atol=1e-6, msg=key)
            if key in before and value.is_floating_point() and not torch.equal(value, before[key]):
                moved.add(key.split(".")[0])
    # the generator moved through the gradient reversal alone (no other generator loss in this step)
    assert moved == {"encoder", "generator"}


def test_the_collectives_on_two_processes(spawned: Path) -> None:
    for r in range(WORLD):
        s = torch.load(spawned / f"collectives-rank{r}.pt", weights_only=True)
        torch.testing.assert_close(s["gathered"][:, 0], torch.tensor([0.0, 0, 1, 1, 1]))
        torch.testing.assert_close(s["grad"], s["expected_grad"])  # summed over both processes' losses
        assert s["groups"].tolist() == [0, 1, 1, 2, 3, 3, 2]  # rank 1's ids shifted past rank 0's
        assert s["reduced"].tolist() == [0.5, 1.0, 1.0, 7.0]  # mean, max, sum; counters pass through


def test_sync_batchnorm_on_two_cpu_processes_is_a_clear_error(spawned: Path) -> None:
    for r in range(WORLD):
        message = (spawned / f"sync-rank{r}.txt").read_text()
        assert message.startswith("train.sync_batchnorm=true needs GPUs: torch's SyncBatchNorm does not run")
        assert "--train.sync_batchnorm=false" in message
