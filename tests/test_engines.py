"""Determinism across engines and worker counts: the same inputs and config give the same bytes."""

from __future__ import annotations

import pytest

from .support import DATA, FIXTURES, run_prepare

INPUTS = [DATA / "openai.jsonl", DATA / "tools.jsonl", FIXTURES / "bad" / "malformed.jsonl", DATA / "text.jsonl"]


def files(out):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.fixture(scope="module")
def single_worker(tmp_path_factory):
    _, out = run_prepare(tmp_path_factory.mktemp("w1"), INPUTS, workers=1, shard_max_rows=120, batch_size=32)
    return files(out)


@pytest.mark.parametrize("workers", [2, 4])
def test_worker_count_does_not_change_a_byte(tmp_path, single_worker, workers):
    _, out = run_prepare(tmp_path, INPUTS, workers=workers, shard_max_rows=120, batch_size=32)
    assert sum(name.endswith(".arrow") for name in single_worker) > 3
    assert files(out) == single_worker


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the session, stopped with ray.shutdown() (never `ray stop`, which kills every
    Ray process on the machine). Offline, Ray's probe of an outside address fails at once, harmlessly."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_ray_engine_gives_the_local_engine_bytes(tmp_path, single_worker, ray_cluster):
    _, out = run_prepare(tmp_path, INPUTS, engine="ray", shard_max_rows=120, batch_size=32)
    assert files(out) == single_worker


@pytest.mark.ray
@pytest.mark.parametrize("window", [0, 5])
def test_ray_engine_packs_like_the_local_engine(tmp_path, ray_cluster, monkeypatch, window):
    """A planned pack (`jobs/planned_pack.py`: rows by tasks, the plan on the driver, packed shards by tasks)
    writes the record stream's packed shards, manifest and rejects, and leaves no rows pass behind."""
    from lossmask.jobs import prepare

    planned = []
    run = prepare.run_planned_pack
    monkeypatch.setattr(prepare, "run_planned_pack", lambda *a: planned.append(1) or run(*a))
    inputs = [DATA / "openai.jsonl"]
    options = {"pack": 256, "pack_window": window, "shard_max_rows": 3, "unit_bytes": 2000}
    _, local = run_prepare(tmp_path, inputs, out_name="local", **options)
    _, ray = run_prepare(tmp_path, inputs, engine="ray", out_name="ray", **options)
    assert planned == [1]
    assert len([f for f in files(local) if f.startswith("shard-")]) > 1
    assert files(ray) == files(local)


def test_ray_that_fails_to_start_is_shut_down_and_one_setup_error(tmp_path, monkeypatch):
    """Whatever `ray.init` had started before failing is shut down (no agents left behind), and the user gets one
    line. Ray itself is replaced: a real failed start takes minutes of connection retries."""
    import sys
    import types

    from lossmask.errors import SetupError

    calls: list[str] = []

    def init(**kwargs):
        calls.append("init")
        raise ConnectionError("Could not find any running Ray instance.\nPlease specify the one to connect to.")

    fake = types.ModuleType("ray")
    fake.is_initialized = lambda: False
    fake.init = init
    fake.shutdown = lambda: calls.append("shutdown")
    fake.data = types.ModuleType("ray.data")
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setitem(sys.modules, "ray.data", fake.data)
    with pytest.raises(SetupError, match=r"^--engine ray could not start Ray: ConnectionError: Could not find"):
        run_prepare(tmp_path, [DATA / "openai.jsonl"], engine="ray")
    assert calls == ["init", "shutdown"]


def _raises_setup_error() -> None:
    from lossmask.errors import SetupError

    raise SetupError("input gone.jsonl does not exist")


def _raises_other() -> None:
    raise ZeroDivisionError("division by zero\nand a second line")


@pytest.mark.ray
def test_a_ray_tasks_failure_reaches_the_user_as_it_was_raised_in_one_line(ray_cluster):
    """A task's SetupError is the user's one line (not Ray's wrapper with its traceback); anything else is one line
    that names it."""
    from lossmask.engines.ray_units import _get
    from lossmask.errors import SetupError

    with pytest.raises(SetupError, match=r"^input gone.jsonl does not exist$"):
        _get(ray_cluster.remote(_raises_setup_error).remote())
    with pytest.raises(SetupError, match=r"^a Ray task failed: ZeroDivisionError: division by zero$"):
        _get(ray_cluster.remote(_raises_other).remote())
