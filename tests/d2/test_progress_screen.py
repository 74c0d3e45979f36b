"""Progress at least every ~30 s whatever the iteration speed, long listings off the screen, and
Ctrl-C held inside a parameter update. Unit tests with a fake clock:
the expected lines and ETAs are worked out by hand below."""
import io
import logging
import os
import signal
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2.modeling", reason="pinned Detectron2 not importable (run `make detectron2`)")

import torch  # noqa: E402

from d2_support import import_overlay  # noqa: E402

import_overlay()

from detectron2.engine import mgd_progress  # noqa: E402
from detectron2.engine.mgd_console import ConsoleSummary  # noqa: E402
from detectron2.engine.mgd_hooks import MGDMatchingHook  # noqa: E402
from detectron2.engine.mgd_interrupt import InterruptGuard  # noqa: E402
from detectron2.engine.mgd_progress import ProgressClock, ProgressHook  # noqa: E402


class FakeTime:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def mgd_lines():
    """The messages of the detectron2.mgd logger during the test."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger, root = logging.getLogger("detectron2.mgd"), logging.getLogger("detectron2")
    old_levels = logger.level, root.level
    logger.setLevel(logging.INFO)
    root.setLevel(logging.INFO)  # as setup_logger leaves it in a run
    logger.addHandler(handler)
    yield lambda: [line for line in stream.getvalue().splitlines() if line]
    logger.removeHandler(handler)
    logger.setLevel(old_levels[0])
    root.setLevel(old_levels[1])


def _hook(fake, max_iter=100):
    hook = ProgressHook(ProgressClock(period=30, clock=fake), heartbeat=False)
    hook.trainer = SimpleNamespace(iter=0, start_iter=0, max_iter=max_iter)
    return hook


def _step(hook, fake, seconds):
    fake.now += seconds
    hook.after_step()
    hook.trainer.iter += 1


def test_fast_iterations_print_a_line_each_30_s_of_silence(mgd_lines, monkeypatch):
    monkeypatch.delenv("MGD_PROGRESS_SECONDS", raising=False)
    fake = FakeTime()
    hook = _hook(fake)
    hook.before_train()
    try:
        for _ in range(10):  # 7 s per iteration: silent for 35 s after the 5th, again after the 10th
            _step(hook, fake, 7)
    finally:
        hook.after_train()
    # 5 iterations in 35 s: 7 s/iter, 95 left -> 665 s = 0:11:05
    assert mgd_lines() == ["progress: iteration 5/100, 0:00:35 elapsed, 7.00 s/iter, ETA 0:11:05",
                           "progress: iteration 10/100, 0:01:10 elapsed, 7.00 s/iter, ETA 0:10:30"]


def test_any_detectron2_line_resets_the_silence(mgd_lines, monkeypatch):
    monkeypatch.delenv("MGD_PROGRESS_SECONDS", raising=False)
    fake = FakeTime()
    hook = _hook(fake)
    hook.before_train()
    try:
        _step(hook, fake, 20)
        logging.getLogger("detectron2.utils.events").info("a metrics line")  # at 20 s
        _step(hook, fake, 15)  # 35 s, but only 15 s of silence
        assert mgd_lines() == []
        _step(hook, fake, 16)  # 31 s of silence
        assert mgd_lines() == ["progress: iteration 3/100, 0:00:51 elapsed, 17.00 s/iter, ETA 0:27:29"]
    finally:
        hook.after_train()
    assert not any(isinstance(h, mgd_progress._MarkOnRecord) for h in logging.getLogger("detectron2").handlers)


def test_a_slow_iteration_gets_heartbeat_lines(mgd_lines, monkeypatch):
    monkeypatch.delenv("MGD_PROGRESS_SECONDS", raising=False)
    fake = FakeTime()
    hook = _hook(fake)
    hook.before_train()
    try:
        for now, in ((29,), (31,), (45,), (62,)):
            fake.now = 1000 + now
            hook.beat()
        assert mgd_lines() == [
            "progress: iteration 1/100 running for 0:00:31, 0:00:31 elapsed, ETA after the first iteration",
            "progress: iteration 1/100 running for 0:01:02, 0:01:02 elapsed, ETA after the first iteration"]
        fake.now = 1100
        hook.after_step()  # the first iteration took 100 s; 99 left -> 9900 s
        assert mgd_lines()[-1] == "progress: iteration 1/100, 0:01:40 elapsed, 100.00 s/iter, ETA 2:45:00"
    finally:
        hook.after_train()


def test_no_heartbeat_line_while_a_short_step_runs(mgd_lines, monkeypatch):
    """The log has been silent for 35 s, but the step now running began 2 s ago: the heartbeat
    waits, and the step's end prints the line with the s/iter."""
    monkeypatch.delenv("MGD_PROGRESS_SECONDS", raising=False)
    fake = FakeTime()
    hook = _hook(fake)
    hook.before_train()
    try:
        for _ in range(4):
            _step(hook, fake, 7)  # 28 s of silence: no line yet
        fake.now += 2
        hook.beat()  # 30 s of silence, the 5th step running for 2 s
        assert mgd_lines() == []
        _step(hook, fake, 5)  # the 5th step ends at 35 s: 7 s/iter, 95 left -> 665 s
        assert mgd_lines() == ["progress: iteration 5/100, 0:00:35 elapsed, 7.00 s/iter, ETA 0:11:05"]
    finally:
        hook.after_train()


def test_the_period_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("MGD_PROGRESS_SECONDS", "2.5")
    assert mgd_progress.progress_period() == 2.5
    monkeypatch.setenv("MGD_PROGRESS_SECONDS", "soon")
    assert mgd_progress.progress_period() == 30.0


class _FakeMatchingModel(torch.nn.Module):
    """accumulate_matching takes 12 s of the fake clock per batch."""

    def __init__(self, fake):
        super().__init__()
        self.fake = fake
        self.distiller = SimpleNamespace(
            images_seen=0, assignments=lambda: {"c2": torch.arange(3)},
            last_statistic=SimpleNamespace(images=10, images_per_rank=[10], ranks="rank0",
                                           describe=lambda: "10 images from rank 0 of 1"))

    def reset_matching(self):
        pass

    def accumulate_matching(self, batch):
        self.fake.now += 12
        self.distiller.images_seen += 1

    def finish_matching(self):
        return {"c2": 0.5}


def test_the_matching_pass_reports_on_the_same_30_s_schedule(mgd_lines, monkeypatch, tmp_path):
    fake = FakeTime()
    monkeypatch.setattr(mgd_progress.PROGRESS, "clock", fake)
    monkeypatch.setattr(mgd_progress.PROGRESS, "period", 30.0)
    mgd_progress.PROGRESS.mark()
    # the original's rule: UPDATE_ITER + 1 = 10 batches of IMS_PER_BATCH 2 / 2 reference ranks = 1 image
    cfg = SimpleNamespace(MGD=SimpleNamespace(UPDATE_FREQ=[10], UPDATE_SLOW_STEP=[], UPDATE_ITER=9,
                                              REFERENCE_WORLD_SIZE=2, MATCHING_RANKS="rank0", REMATCH_ON_RESUME=False,
                                              ASSIGNMENT="matching"),
                          SOLVER=SimpleNamespace(IMS_PER_BATCH=2), OUTPUT_DIR=str(tmp_path))
    hook = MGDMatchingHook(cfg)
    batches = iter([[i, i] for i in range(100)])
    model = _FakeMatchingModel(fake)
    hook.trainer = SimpleNamespace(model=model, iter=0, _data_loader_iter=batches)
    hook.update_matching()
    # batches end at 12, 24, 36 (36 s silent: a line), 48, 60, 72 (36 s), 84, 96, 108 (36 s), 120 (the end)
    progress = [line.split(": ", 1)[1].split(",")[0] for line in mgd_lines() if "ETA" in line]
    assert progress == ["3/10 batches", "6/10 batches", "9/10 batches"]
    assert "MGD matching at iteration 0 done" in mgd_lines()[-1]
    assert model.distiller.images_seen == 10 and model.training  # every batch; train mode restored


# ------------------------------------------------------------------ the screen

def _screen():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    handler.addFilter(ConsoleSummary(handler, "out/log.txt"))
    return handler, stream


def _record(name, message, level=logging.INFO):
    return logging.makeLogRecord({"name": name, "msg": message, "levelno": level, "levelname": "INFO"})


def test_the_per_tensor_listing_becomes_one_line():
    handler, stream = _screen()
    for i in range(5):
        handler.handle(_record("detectron2.checkpoint.c2_model_loading",
                               f"backbone.res{i}.weight loaded from res{i}.weight of shape (3,)"))
    handler.handle(_record("detectron2.engine.train_loop", "Starting training from iteration 0"))
    assert stream.getvalue().splitlines() == [
        "detectron2.checkpoint.c2_model_loading: Loaded 5 tensors of the checkpoint by name "
        "[per-tensor listing in out/log.txt]",
        "detectron2.engine.train_loop: Starting training from iteration 0"]


def test_long_messages_and_setup_listings_are_summarised_ours_and_short_ones_kept():
    handler, stream = _screen()
    long_message = "Model:\n" + "\n".join(f"  layer {i}" for i in range(30))
    handler.handle(_record("detectron2.engine.defaults", long_message))
    handler.handle(_record("detectron2", "Running with full config:\nA: 1\nB: 2"))
    per_class = "Per-category bbox AP:\n" + "\n".join(f"| class{i} | 1.0 |" for i in range(12))
    handler.handle(_record("detectron2.evaluation.coco_evaluation", per_class))
    table = "Distribution of instances:\n| a | b |\n| 1 | 2 |"
    handler.handle(_record("detectron2.data.build", table))
    ours = "MGD loss-factor probe:\n" + "\n".join(f"c{i} 1.0" for i in range(12))
    handler.handle(_record("detectron2.mgd", ours))
    assert stream.getvalue().splitlines() == [
        "detectron2.engine.defaults: Model [30 more lines in out/log.txt]",
        "detectron2: Running with full config [2 more lines in out/log.txt]",
        "detectron2.evaluation.coco_evaluation: Per-category bbox AP [12 more lines in out/log.txt]",
        *f"detectron2.data.build: {table}".splitlines(),
        *f"detectron2.mgd: {ours}".splitlines()]


# ------------------------------------------------------------------ Ctrl-C

class _FakeOptimizer:
    def register_step_pre_hook(self, hook):
        self.hook = hook
        return SimpleNamespace(remove=lambda: None)


def _guard():
    guard = InterruptGuard()
    guard.trainer = SimpleNamespace(iter=5, start_iter=5, max_iter=100, optimizer=_FakeOptimizer())
    return guard


def test_ctrl_c_inside_an_update_is_held_until_the_update_ends():
    guard = _guard()
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job
    guard.before_train()
    try:
        guard.trainer.optimizer.hook(None, (), {})  # the optimizer's step begins
        os.kill(os.getpid(), signal.SIGINT)  # held: no KeyboardInterrupt here
        with pytest.raises(KeyboardInterrupt):
            guard.after_step()  # LRScheduler has stepped: iteration 5 is complete
        assert guard.completed == 5
    finally:
        guard.after_train()
    assert signal.getsignal(signal.SIGINT) is before  # the previous handler is back


def test_ctrl_c_outside_an_update_stops_at_once_with_the_last_finished_iteration():
    guard = _guard()
    guard.before_train()
    try:
        assert guard.completed == 4  # nothing finished in this process yet
        guard.trainer.optimizer.hook(None, (), {})
        guard.after_step()  # iteration 5 finished
        guard.trainer.iter = 6  # iteration 6: loading data, forward, backward ...
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
        assert guard.completed == 5
    finally:
        guard.after_train()


def test_a_second_ctrl_c_while_one_is_held_stops_at_once():
    guard = _guard()
    guard.before_train()
    try:
        guard.trainer.optimizer.hook(None, (), {})
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
    finally:
        guard.after_train()


def test_save_names_the_last_finished_iteration(tmp_path):
    saved = []
    guard = _guard()
    guard.completed = 4  # nothing finished since start_iter 5
    assert guard.save(SimpleNamespace(save=lambda name, **kw: saved.append((name, kw)))) is None
    guard.completed = 7
    assert guard.save(SimpleNamespace(save=lambda name, **kw: saved.append((name, kw)))) == "model_0000007.pth"
    assert saved == [("model_0000007", {"iteration": 7})]


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    from detectron2.engine import mgd_checkpointer

    model = torch.nn.Linear(2, 2)
    checkpointer = mgd_checkpointer.MGDCheckpointer(model, str(tmp_path))
    checkpointer.save("model_a", iteration=1)
    first = (tmp_path / "model_a.pth").read_bytes()
    assert (tmp_path / "last_checkpoint").read_text() == "model_a.pth"

    def interrupted_save(data, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(mgd_checkpointer.torch, "save", interrupted_save)
    with torch.no_grad():
        model.weight.add_(1)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_a", iteration=2)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_b", iteration=2)
    assert (tmp_path / "model_a.pth").read_bytes() == first
    assert not (tmp_path / "model_b.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_a.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_a.pth"]  # no temp file left
