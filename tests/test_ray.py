"""The Ray Data engine (docs/method.md §11) on one local Ray instance shared by these tests (2 CPUs, 2 actors).
The oracle is the single-process table."""
import os

import pytest
from helpers import assert_same_table, make_records, run_cli, write_pool

ray = pytest.importorskip("ray", reason="the Ray engine needs the extra: pip install 'lark_fast[ray]'")
pytest.importorskip("ray.data", reason="the Ray engine needs Ray Data: pip install 'lark_fast[ray]'")

import lark_fast  # noqa: E402
from lark_fast.models import load_student  # noqa: E402
from lark_fast.ray import read_pool, score_dataset  # noqa: E402
from lark_fast.table import ScoreTable  # noqa: E402

N_PROBLEMS, PER_PROBLEM = 50, 4  # 200 trajectories


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for every test here; its workers import this module (the student factories)."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.dirname(__file__), before) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()
    if before is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = before


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    recs = make_records(n_problems=N_PROBLEMS, per_problem=PER_PROBLEM, seed=11)
    recs[7] = {**recs[7], "teacher": None}  # a bad record: reported, not scored
    recs.insert(30, dict(recs[12]))  # a repeated (problem_id, candidate_id): the first one is kept
    return write_pool(tmp_path_factory.mktemp("pool") / "pool.jsonl", recs)


@pytest.fixture(scope="module")
def reference(model_dir, pool):
    model, tokenizer = load_student(str(model_dir), "cpu")
    return lark_fast.score(model, tokenizer, str(pool), progress=False, methods=["random"])


class DiesMidway:
    """A student factory whose first forward after some batch's result was stored (so: inside a batch,
    mid-job) kills its actor's process; the marker file makes it happen once."""

    def __init__(self, model_dir, marker, checkpoints):
        self.model_dir, self.marker, self.checkpoints = str(model_dir), str(marker), str(checkpoints)

    def __call__(self):
        model, tokenizer = load_student(self.model_dir, "cpu")

        def die_once_midway(module, args):
            if os.path.exists(self.marker) or not any(n.endswith(".parquet") for n in os.listdir(self.checkpoints)):
                return
            open(self.marker, "w").close()
            os._exit(1)

        model.model.register_forward_pre_hook(die_once_midway)
        return model, tokenizer


def test_two_actors_equal_one_process(local_ray, model_dir, pool, reference):
    table = score_dataset(read_pool(str(pool)), str(model_dir), concurrency=2, rows_per_batch=16,
                          methods=["random"], source=str(pool))
    assert len(table) == N_PROBLEMS * PER_PROBLEM - 1
    assert_same_table(table, reference)
    assert [(i.line, i.field) for i in table.issues] == [(8, "teacher"), (31, None)]
    assert "duplicate (problem_id, candidate_id)" in table.issues[1].reason


def test_killed_actor_is_retried_and_checkpoints_skip_done_batches(local_ray, model_dir, pool, reference, tmp_path):
    marker, checkpoints = tmp_path / "died", tmp_path / "batches"
    checkpoints.mkdir()
    table = score_dataset(read_pool(str(pool)), DiesMidway(model_dir, marker, checkpoints), concurrency=2,
                          rows_per_batch=16, methods=["random"], checkpoint_dir=checkpoints)
    assert marker.exists(), "an actor must have died"
    assert_same_table(table, reference)

    def stored():
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in checkpoints.glob("*.parquet")}

    before = stored()
    assert len(before) >= 2
    again = score_dataset(read_pool(str(pool)), str(model_dir), concurrency=2, rows_per_batch=16,
                          methods=["random"], checkpoint_dir=checkpoints)
    assert_same_table(again, reference)
    assert stored() == before, "a batch was scored again"


def test_cli_engine_ray(local_ray, model_dir, pool, reference, tmp_path):
    out = tmp_path / "scores.parquet"
    address = ray.get_runtime_context().gcs_address
    r = run_cli(["score", "--engine", "ray", "--ray-address", address, "--concurrency", "2", "--model", model_dir,
                 "--input", pool, "--output", out, "--methods", "random", "--quiet"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_table(ScoreTable.read(out), reference)
    assert not (tmp_path / "scores.parquet.parts").exists()
    r = run_cli(["score", "--engine", "ray", "--ray-address", address, "--model", model_dir, "--input", pool,
                 "--output", out, "--sketch-dim", "4"])
    assert r.returncode == 2 and "--engine ray" in r.stderr, r.stderr[-2000:]
