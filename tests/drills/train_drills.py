"""Training drills: a Ray Train worker killed mid-run (Ray Train restarts the worker group), and the
``raysae train`` driver killed mid-run (the same command run again resumes). Both train from an
activation cache without shuffling, so every run sees the same rows in the same order and a resumed run
must end with exactly the weights of an uninterrupted one.

Steps replayed are the steps the killed attempt trained past the checkpoint its successor resumed from.
Every step reports to the run's progress board (``log_every_steps: 1``), which gives the step the killed
attempt reached; the history the final checkpoint carries must list every step once.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import ray
import torch
import yaml
from drill_kit import Background, DrillResult, actor_pids, duplicates, signal_all, wait_for
from raysae_process import Command, raysae_command

import raysae
from raysae.config.run import TrainSAESettings
from raysae.console import board_name
from raysae.train.checkpoint import read_state
from raysae.train.ray_train import TrainResult, train

HOOK = "blocks.1.hook_resid_post"
STEPS = 36
CHECKPOINT_EVERY = 6
KILL_AT = 15  # past the checkpoint of step 12, before the one of step 18
WORKER = "RayTrainWorker"


def cache_settings(cache: Path, out: Path, name: str, max_failures: int = 0) -> TrainSAESettings:
    """One data-parallel worker on the unshuffled cache: 36 steps of 64 rows, a checkpoint every 6."""
    return TrainSAESettings.model_validate(
        {
            "sae": {"d_model": 576, "d_sae": 256, "act_fn": "topk", "top_k": 8, "hook_point_in": HOOK},
            "trainer": {
                "batch_size": 64,
                "total_training_tokens": 64 * STEPS,
                "log_every_steps": 1,
                "checkpoint_every_steps": CHECKPOINT_EVERY,
                "initializer": {"init_batches": 1},
            },
            "cache_path": str(cache),
            "shuffle": False,
            "ray": {"data_parallel_size": 1, "model_parallel_size": 1, "max_failures": max_failures},
            "wandb": {"enabled": False},
            "output_dir": str(out / name),
            "run_name": name,
        }
    )


def reference_run(cache: Path, out: Path) -> TrainResult:
    """The uninterrupted run the drills compare with."""
    return train(cache_settings(cache, out, "reference"))


def recording_board(run_name: str) -> Any:
    """An actor under the run's board name that keeps every report rank 0 puts, with its arrival time
    (``ProgressBoard`` keeps only the latest): the step a killed attempt reached, when its successor
    reported first and from which step. Defined here so that Ray pickles the class by value."""

    class RecordingBoard:
        def __init__(self) -> None:
            self.reports: list[tuple[float, int]] = []

        def put(self, metrics: dict[str, float]) -> None:
            self.reports.append((time.time(), int(metrics["progress/step"])))

        def get(self) -> dict[str, float]:
            return {"progress/step": float(self.reports[-1][1])} if self.reports else {}

        def all(self) -> list[tuple[float, int]]:
            return list(self.reports)

    return ray.remote(RecordingBoard).options(name=board_name(run_name), num_cpus=0).remote()


def board_step(board: Any) -> int:
    return int(ray.get(board.get.remote(), timeout=30).get("progress/step", 0))


def history_figures(result_dir: Path) -> tuple[int, int]:
    """(steps missing, steps repeated) in the history of the finished run (``metrics.jsonl``)."""
    lines = (result_dir / "metrics.jsonl").read_text().splitlines()
    steps = [int(json.loads(line)["step"]) for line in lines if line]
    return len(set(range(1, STEPS + 1)) - set(steps)), duplicates(steps)


def same_weights(a: Path, b: Path) -> bool:
    """Whether two exported dictionaries hold the same weights (float32 tolerance)."""
    x, y = raysae.load_dictionary(a).state_dict(), raysae.load_dictionary(b).state_dict()
    return x.keys() == y.keys() and all(torch.allclose(x[k], y[k], rtol=1e-5, atol=1e-6) for k in x)


def kill_mid_run(
    settings: TrainSAESettings, at_step: int, actor: str, what: str, only_first: bool = False
) -> tuple[TrainResult, list, float, list[int], int]:
    """Train in the background, SIGKILL ``actor``'s processes (the first only, with ``only_first``) once
    the board shows ``at_step``, wait for the run: (result, board reports, kill time, killed pids, step
    reached at the kill)."""
    board = recording_board(settings.run_name)
    try:
        job = Background(lambda: train(settings))
        wait_for(lambda: job.done or board_step(board) >= at_step, 600, f"step {at_step}", 0.02)
        assert not job.done, f"the run ended before the kill: {job.error}"
        killed = actor_pids(actor)
        assert killed, f"no {what} to kill"
        reached = board_step(board)
        signal_all(killed[:1] if only_first else killed, signal.SIGKILL)
        t_kill = time.time()
        job.join(600)
        reports = ray.get(board.all.remote())
    finally:
        ray.kill(board)
    if job.error is not None:
        raise job.error
    return job.result, reports, t_kill, killed, reached  # type: ignore[return-value]


def worker_drill(cache: Path, out: Path, reference: Path) -> DrillResult:
    """SIGKILL the Ray Train worker once it reported step KILL_AT; Ray Train (max_failures 2) starts a
    new worker group, which resumes from the last checkpoint it registered."""
    settings = cache_settings(cache, out, "worker-killed", max_failures=2)
    result, reports, t_kill, killed, _ = kill_mid_run(settings, KILL_AT, WORKER, "Ray Train worker")
    # Puts already sent arrive within milliseconds; a new worker group takes seconds to report.
    first = [step for t, step in reports if t < t_kill + 0.5]
    resumed = [(t, step) for t, step in reports if t >= t_kill + 0.5]
    assert resumed, "no report after the kill: the run was not resumed"
    lost, repeated = history_figures(Path(settings.output_dir))
    same = same_weights(result.dictionary_path, reference)
    return DrillResult(
        drill="train worker",
        killed=f"Ray Train worker (pid {killed[0]})",
        when=f"after step {max(first)} of {STEPS}",
        completed=result.steps == STEPS,
        unit="steps",
        lost=lost,
        duplicated=repeated,
        replayed=max(first) - (resumed[0][1] - 1),
        recovery_s=resumed[0][0] - t_kill,
        failures=1,  # the failed worker group
        notes=f"resumed at step {resumed[0][1]}; weights {'equal' if same else 'DIFFER from'} "
        "the uninterrupted run's; recovery: kill to the new worker group's first step",
        same_as_uninterrupted=same,
    )


def _cli_board(run_name: str, skip: str | None = None) -> tuple[Any, str] | None:
    """(board, namespace) of the progress board a ``raysae train`` driver opened in its own anonymous
    namespace (not ``skip``'s: the board of a killed driver may outlive it for a moment)."""
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["name"] == board_name(run_name) and entry["namespace"] != skip:
            return ray.get_actor(entry["name"], namespace=entry["namespace"]), entry["namespace"]
    return None


def _wait_for_step(
    command: Command, run_name: str, step: int, skip: str | None = None
) -> tuple[Any, str, int]:
    """(board, its namespace, the step it showed) of the run in ``command`` once it shows ``step`` or
    more; fails if the command exits first."""
    found: list[tuple[Any, str]] = []
    seen = [0]

    def check() -> bool:
        if command.proc.poll() is not None:
            raise AssertionError(
                f"raysae train exited ({command.proc.returncode}):\n{command.text()[-3000:]}"
            )
        found[:] = found or [b for b in [_cli_board(run_name, skip)] if b is not None]
        seen[0] = board_step(found[0][0]) if found else 0
        return seen[0] >= step

    wait_for(check, 600, f"step {step} of {run_name}", 0.02)
    return found[0][0], found[0][1], seen[0]


def registered_step(storage: Path) -> int:
    """The step of the latest checkpoint that Ray Train's checkpoint manager registered
    (``checkpoint_manager_snapshot.json``): what a new driver resumes from."""
    snapshot = json.loads(next(storage.glob("*/checkpoint_manager_snapshot.json")).read_text())
    latest = snapshot.get("latest_checkpoint_result") or {}
    name = latest.get("checkpoint_dir_name") or latest["checkpoint"]["path"]
    return read_state(next(storage.glob(f"*/{Path(name).name}"))).step


def driver_drill(cache: Path, out: Path, reference: Path, address: str) -> DrillResult:
    """SIGKILL the ``raysae train --address`` process once its worker reported step KILL_AT, then run the
    same command again. The worker is frozen (SIGSTOP) before the driver dies, so the step read from the
    board is the last it trained; it dies with its driver (Ray ends a dead job's actors; killed here at
    once, so that it trains nothing more)."""
    settings = cache_settings(cache, out, "driver-killed")
    files = {"train.yaml": yaml.safe_dump(settings.model_dump(mode="json"))}
    args = ["train", "{tmp}/train.yaml", "--address", address]
    storage = Path(settings.output_dir) / "ray"
    with raysae_command(args, files=files) as first:
        board, namespace, _ = _wait_for_step(first, settings.run_name, KILL_AT)
        workers = actor_pids(WORKER)
        signal_all(workers, signal.SIGSTOP)
        reached = board_step(board)
        first.proc.kill()
        first.proc.wait()
        signal_all(workers, signal.SIGKILL)
    resumed_from = registered_step(storage)
    with raysae_command(args, files=files) as again:
        started = time.monotonic()
        _, _, first_step = _wait_for_step(again, settings.run_name, 1, skip=namespace)
        recovery_s = time.monotonic() - started
        code = again.proc.wait(timeout=600)
        assert code == 0, f"the re-run failed ({code}):\n{again.text()[-3000:]}"
    lost, repeated = history_figures(Path(settings.output_dir))
    same = same_weights(Path(settings.output_dir) / "dictionary", reference)
    return DrillResult(
        drill="train driver",
        killed="`raysae train` process",
        when=f"after step {reached} of {STEPS}",
        completed=registered_step(storage) == STEPS,
        unit="steps",
        lost=lost,
        duplicated=repeated,
        # the re-run's first report says so if it resumed from an older checkpoint than the registered one
        replayed=reached - min(resumed_from, first_step - 1),
        recovery_s=recovery_s,
        failures=1,  # the killed run
        notes=f"re-run resumed from the checkpoint of step {resumed_from} (first step seen: {first_step}); weights "
        f"{'equal' if same else 'DIFFER from'} the uninterrupted run's; recovery: re-run start to its "
        "first step",
        same_as_uninterrupted=same,
    )


STREAM_STEPS = 40
MODEL_ACTOR = "MapWorker"  # Ray Data's actor class for map_batches(ActivationExtractor)


def streaming_settings(out: Path) -> TrainSAESettings:
    """One worker streaming layer-1 residuals from the model actors: 40 steps of 64 tokens."""
    return TrainSAESettings.model_validate(
        {
            "sae": {"d_model": 576, "d_sae": 256, "act_fn": "topk", "top_k": 8, "hook_point_in": HOOK},
            "trainer": {
                "batch_size": 64,
                "total_training_tokens": 64 * STREAM_STEPS,
                "log_every_steps": 1,
                "initializer": {"init_batches": 1},
            },
            "activations": {
                "total_tokens": 64 * STREAM_STEPS * 2,
                "batch_windows": 2,
                "tokens": {"context_size": 32},
            },
            "ray": {"data_parallel_size": 1, "model_parallel_size": 1},
            "wandb": {"enabled": False},
            "output_dir": str(out / "stream-actor-killed"),
            "run_name": "stream-actor-killed",
        }
    )


def streaming_actor_drill(out: Path) -> DrillResult:
    """SIGKILL the Ray Data actor holding SmolLM2 while streaming training consumes it (after step 8);
    Ray Data restarts the actor and retries its tasks, and training must still run every step on the
    full token budget."""
    settings = streaming_settings(out)
    result, reports, t_kill, killed, reached = kill_mid_run(
        settings, 8, MODEL_ACTOR, "model actor", only_first=True
    )
    later = [t for t, step in reports if t > t_kill and step > reached]
    lines = (Path(settings.output_dir) / "metrics.jsonl").read_text().splitlines()
    steps = [int(json.loads(line)["step"]) for line in lines if line]
    return DrillResult(
        drill="model actor, streaming training",
        killed=f"Ray Data model actor (pid {killed[0]})",
        when=f"after step {reached} of {STREAM_STEPS}",
        completed=result.steps == STREAM_STEPS,
        unit="steps",
        lost=len(set(range(1, STREAM_STEPS + 1)) - set(steps)),
        duplicated=duplicates(steps),
        replayed=None,
        recovery_s=(later[0] - t_kill) if later else None,
        failures=1,  # the dead actor's tasks, retried on its replacement
        notes="recovery: kill to the next step reported past the one reached; streamed rows are not "
        "identified one by one (the cache drill checks rows by identity on the same pipeline)",
    )
