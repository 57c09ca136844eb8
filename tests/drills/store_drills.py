"""Store drills: SIGKILL the MongoDB-protocol store (secantusd-py) while analysis writes feature documents
and while autointerp explains and scores, keep it down a few seconds, restart it on the same data folder
and port. The jobs' store calls retry connection errors (``StoreConfig.retries``), so the job should
wait and go on; if it fails instead, the drill runs it again (a re-run skips finished work). The final
store must hold exactly the expected documents: every identity once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from autointerp_data import DICT_ID as TOY_DICT
from autointerp_data import HOOK as TOY_HOOK
from autointerp_data import fill
from drill_kit import Background, DrillResult, KillableStore, counting, duplicates, killable_store, wait_for
from fake_openai import FakeServer, FakeState

from raysae.analysis.job import analyze
from raysae.autointerp.job import run_autointerp, wanted_scorers
from raysae.autointerp.work import explainer_id
from raysae.config import SAEConfig
from raysae.config.analysis import AnalysisConfig
from raysae.config.autointerp import AutointerpConfig
from raysae.dictionaries import build_dictionary
from raysae.store import Store, StoreConfig

HOOK = "blocks.1.hook_resid_post"
DB = "drill"
D_SAE = 512
WRITE_BATCH = 16  # feature documents per upsert: D_SAE / 16 = 32 writes
DOWN_S = 6.0  # dead longer than one server selection (5 s), so the store's own retries are needed
AUTOINTERP_FEATURES = 8
RETRY_LOG = ("raysae.store.retry", "retry")  # the store's warning on each retried call


def _watcher(uri: str) -> Store:
    """A store handle for the drill's own reads: one attempt, short timeouts."""
    return Store(StoreConfig(uri=uri, db=DB, retries=0, server_selection_timeout_ms=1000))


def _identities(store: Store, collection: str, fields: tuple[str, ...], query: dict[str, Any]) -> list[tuple]:
    return [
        tuple(d[f] for f in fields)
        for d in store.db[collection].find(query, {"_id": 0, **dict.fromkeys(fields, 1)})
    ]


def _kill_and_restart(store: KillableStore, count: Callable[[], int]) -> tuple[int, float]:
    """Kill the store, keep it down DOWN_S, restart it; returns (``count()`` at the kill, the
    monotonic time of the restart)."""
    before = count()
    store.kill()
    time.sleep(DOWN_S)
    store.restart()
    return before, time.monotonic()


def analysis_drill(folder: Path, lm: Any) -> DrillResult:
    """Kill the store after the first batch of feature documents is written."""
    torch.manual_seed(0)
    sae = build_dictionary(SAEConfig(d_model=576, d_sae=D_SAE, act_fn="topk", top_k=8, hook_point_in=HOOK))
    path = sae.save(folder / "sae")
    with killable_store(folder / "store") as store, counting(*RETRY_LOG) as retries:
        cfg = AnalysisConfig.model_validate(
            {
                "activations": {"total_tokens": 512, "batch_windows": 4, "tokens": {"context_size": 32}},
                "write_batch_features": WRITE_BATCH,
                "dla_chunk_features": WRITE_BATCH,
                "store": {"uri": store.uri, "db": DB},
            }
        )
        watch = _watcher(store.uri)

        def written() -> int:
            return watch.db.features.count_documents({"dictionary_id": path.name})

        def job() -> Any:
            return analyze(path, cfg, use_ray=False, progress=False, lm=lm)

        run = Background(job)
        wait_for(lambda: run.done or written() >= WRITE_BATCH, 600, "the first feature documents", 0.01)
        assert not run.done, f"the analysis ended before the kill: {run.error}"
        at_kill, up = _kill_and_restart(store, written)
        wait_for(lambda: run.done or written() > at_kill, 600, "a feature document after the restart", 0.01)
        recovery_s = time.monotonic() - up
        run.join(600)
        failed, reran = run.error, False
        if failed is not None:  # the job gave up: a re-run replaces the documents
            job()
            reran = True
        features = _identities(watch, "features", ("hook", "index"), {"dictionary_id": path.name})
        analyses = list(watch.db.analyses.find({"dictionary_id": path.name}, {"_id": 0, "status": 1}))
        watch.close()
    want = {(HOOK, i) for i in range(D_SAE)}
    return DrillResult(
        drill="store mid-analysis",
        killed="secantusd-py (SIGKILL)",
        when=f"after {at_kill} of {D_SAE} feature documents; down {DOWN_S:g} s",
        completed=set(features) == want and [a["status"] for a in analyses] == ["complete"],
        unit="docs",
        lost=len(want - set(features)),
        duplicated=duplicates(features),
        replayed=D_SAE if reran else 0,
        recovery_s=recovery_s,
        failures=retries.count + (1 if failed else 0),
        notes=("the job failed and was re-run: " + type(failed).__name__ if failed else "the job waited")
        + "; recovery: restart to the next document written; failures: store calls retried"
        + (f"; missing: {sorted(i for _, i in want - set(features))[:20]}" if want - set(features) else ""),
    )


def autointerp_drill(folder: Path) -> DrillResult:
    """Kill the store once two features are explained; the fake chat endpoint answers in 0.2 s."""
    with (
        FakeServer(FakeState()) as fake,
        killable_store(folder / "store") as store,
        counting(*RETRY_LOG) as retries,
    ):
        seed = Store.connect(StoreConfig(uri=store.uri, db=DB))
        fill(seed, AUTOINTERP_FEATURES)
        seed.close()
        cfg = AutointerpConfig.model_validate(
            {
                "dictionary_id": TOY_DICT,
                "use_ray": False,
                "features_in_flight": 1,
                "endpoint": {"base_url": fake.url, "model": "fake-model", "cache": False, "backoff_s": 0.01},
                "scorer": {"n_activating": 8, "n_non_activating": 8},
                "store": {"uri": store.uri, "db": DB},
            }
        )
        reference = _reference_requests(cfg, fake, store.uri)
        fake.state.latency_s = 0.2
        watch = _watcher(store.uri)
        eid = explainer_id(cfg)
        ok = {"dictionary_id": TOY_DICT, "status": "ok"}

        def done() -> int:
            return watch.db.explanations.count_documents(
                {**ok, "explainer": eid}
            ) + watch.db.scores.count_documents(ok)

        run = Background(lambda: run_autointerp(cfg, progress=False))
        wait_for(lambda: run.done or done() >= 2, 600, "two explanations", 0.01)
        assert not run.done, f"autointerp ended before the kill: {run.error}"
        at_kill, up = _kill_and_restart(store, done)
        wait_for(lambda: run.done or done() > at_kill, 600, "a result after the restart", 0.01)
        recovery_s = time.monotonic() - up
        run.join(600)
        failed = run.error
        if failed is not None:  # the job gave up: a re-run resumes where it stopped
            run_autointerp(cfg, progress=False)
        query = {"dictionary_id": TOY_DICT}
        explanations = _identities(watch, "explanations", ("hook", "index", "explainer", "status"), query)
        scores = _identities(watch, "scores", ("hook", "index", "scorer", "status"), query)
        watch.close()
        requests = len(fake.state.requests)
    n, scorers = AUTOINTERP_FEATURES, wanted_scorers(cfg)
    want = {(TOY_HOOK, i, eid) for i in range(n)}
    want_scores = {(TOY_HOOK, i, s) for i in range(n) for s in scorers}
    got = [e[:3] for e in explanations if e[3] == "ok"]
    got_scores = [s[:3] for s in scores if s[3] == "ok"]
    return DrillResult(
        drill="store mid-autointerp",
        killed="secantusd-py (SIGKILL)",
        when=f"after {at_kill} results; down {DOWN_S:g} s",
        completed=set(got) == want and set(got_scores) == want_scores,
        unit="docs",
        lost=len(want - set(got)) + len(want_scores - set(got_scores)),
        duplicated=duplicates(e[:3] for e in explanations) + duplicates(s[:3] for s in scores),
        replayed=requests - reference,
        replayed_unit="requests",
        recovery_s=recovery_s,
        failures=retries.count + (1 if failed else 0),
        notes=("the job failed and was re-run: " + type(failed).__name__ if failed else "the job waited")
        + f"; replayed: chat requests beyond an uninterrupted run's {reference}; {n} features × "
        f"(1 explanation + {len(scorers)} scores); recovery: restart to the next result written",
    )


def _reference_requests(cfg: AutointerpConfig, fake: FakeServer, uri: str) -> int:
    """Chat requests of an uninterrupted run of the same job (on a copy of the features, no latency)."""
    ref = Store.connect(StoreConfig(uri=uri, db=f"{DB}_reference"))
    try:
        fill(ref, AUTOINTERP_FEATURES)
        run_autointerp(cfg, ref, progress=False)
    finally:
        ref.client.drop_database(ref.db_name)
        ref.close()
    n = len(fake.state.requests)
    fake.state.requests.clear()
    return n


def acknowledged_writes_drill(folder: Path, trials: int = 3) -> DrillResult:
    """Kill the store right after it acknowledged a batch of feature documents, ``trials`` times: every
    acknowledged document must be there after the restart (a job never writes it again)."""
    docs = [{"index": i, "frequency": 0.1, "top_examples": [{"tokens": ["a"] * 32}] * 20} for i in range(16)]
    lost = duplicated = 0
    restart_s = 0.0
    with killable_store(folder / "store") as store:
        for trial in range(trials):
            config = StoreConfig(uri=store.uri, db=f"{DB}{trial}")
            with Store.connect(config) as writer:
                acknowledged = writer.upsert_features("acked", HOOK, docs)
            store.kill()
            start = time.monotonic()
            store.restart()
            restart_s += time.monotonic() - start
            with Store.connect(config) as reader:
                found = _identities(reader, "features", ("hook", "index"), {"dictionary_id": "acked"})
            lost += acknowledged - len(set(found))
            duplicated += duplicates(found)
    return DrillResult(
        drill="store acked writes",
        killed="secantusd-py (SIGKILL)",
        when=f"right after {len(docs)} docs were acknowledged (x{trials})",
        completed=lost == 0,
        unit="docs",
        lost=lost,
        duplicated=duplicated,
        replayed=None,
        recovery_s=restart_s / trials,
        failures=0,
        notes="recovery: the store's restart",
    )
