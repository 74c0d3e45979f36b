"""``make study``: every step of the study, resumable, with an ETA (scripts/run_study.py).

The steps, each skipped when its output exists (a training stopped half-way continues with
``--resume``, which continues the same training):

1. the generated detection set (``data/``), the two backbones pretrained on the generated
   classification task (``weights/r-18.pkl``, ``r-50.pkl``);
2. the teacher (``teacher/``), its evaluation, the merged teacher + student checkpoint;
3. per seed, the initial weights every arm of that seed starts from (``seed<s>/initial_*.pth``:
   the student's randomly initialised head and FPN drawn once, with the seed);
4. the loss-factor probe on seed 1's initial weights (the repository's default procedure);
5. per seed, then per arm (``seed<s>/<arm>/``): training, evaluation of the student on the val
   split, its matched cost to the teacher;
6. ``results.json`` and the plots (mgd_tools/study_report.py).

Every arm of a seed shares the seed, the initial weights, the data order (the MGD arms'
matching passes draw from a stream of their own) and the schedule; only the distillation
differs. Times of finished steps are kept in ``timings.json``; they give the ETA and the study's
wall time.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from mgd.checkpoint import atomic_write
from mgd.errors import UserError

from .study_protocol import ARMS, Protocol

__all__ = ["Step", "StudyRunner", "StudyInterrupted", "ARM_OPTS", "format_seconds"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO, "train_net.py")
CONFIGS = os.path.join(REPO, "configs")
TEACHER_CONFIG, STUDENT_CONFIG, MGD_CONFIG = (os.path.join(CONFIGS, f"study_{n}.yaml") for n in (
    "retinanet_R_50", "retinanet_R_18", "mgd_R50_R18"))
DATASET_NAMES = ("mgd_study_train", "mgd_study_val")
#: an arm's overrides of the MGD config, beyond the loss factors (``factors`` scales them)
ARM_OPTS = {"mgd": [], "control": ["MGD.LOSS_WEIGHT", "0.0"], "fixed_assignment": ["MGD.ASSIGNMENT", "random"],
            "factors_x0.25": [], "factors_x4": []}
FACTOR_SCALE = {"factors_x0.25": 0.25, "factors_x4": 4.0}


class StudyInterrupted(Exception):
    """A step was stopped by Ctrl-C (its training saved what it had done)."""


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass
class Step:
    """One step: ``run()`` makes ``output``; ``kind`` groups steps of like cost for the ETA."""

    name: str
    kind: str
    output: str
    run: Callable[[], None]
    estimate: float  # seconds, before any step of its kind was measured

    def done(self) -> bool:
        return os.path.exists(self.output)


class StudyRunner:
    """Runs a protocol into ``out`` (see the module doc)."""

    def __init__(self, protocol: Protocol, out: str, checkout: str, log: Callable[[str], None] = print):
        self.protocol, self.out, self.checkout, self.log = protocol, out, checkout, log
        self.timings_path = os.path.join(out, "timings.json")
        self.timings: Dict[str, float] = {}

    # -- paths ------------------------------------------------------------------------------
    def path(self, *parts) -> str:
        return os.path.join(self.out, *map(str, parts))

    def run_dir(self, seed: int, arm: str) -> str:
        return self.path(f"seed{seed}", arm)

    def dataset_args(self) -> List[str]:
        data = self.path("data")
        args = []
        for name, split in zip(DATASET_NAMES, ("train", "val")):
            args += ["--dataset", name, os.path.join(data, "annotations", f"instances_{split}.json"),
                     os.path.join(data, split)]
        return args

    # -- the plan ---------------------------------------------------------------------------
    def steps(self) -> List[Step]:
        p = self.protocol
        seeds = sorted({s for arm in p.arms for s in p.seeds(arm)})
        student_its = p.student.iterations
        plan = [
            Step("generated data", "data", self.path("data", "synthetic.json"), self.make_data, 10),
            Step("pretrain R18", "pretrain18", self.path("weights", "r-18.pkl"), lambda: self.pretrain(18), 120),
            Step("pretrain R50", "pretrain50", self.path("weights", "r-50.pkl"), lambda: self.pretrain(50), 400),
            Step("teacher R50", "teacher", self.path("teacher", "model_final.pth"), self.train_teacher,
                 0.7 * p.teacher.iterations),
            Step("evaluate teacher", "eval", self.path("teacher", "eval", "eval_results.json"),
                 lambda: self.evaluate(TEACHER_CONFIG, self.path("teacher", "model_final.pth"),
                                       self.path("teacher", "eval")), 15),
            Step("merge teacher + R18", "merge", self.path("weights", "T50-S18.pkl"), self.merge, 5),
        ]
        plan += [Step(f"initial weights, seed {s}", "init", self.path(f"seed{s}", "initial_plain.pth"),
                      lambda s=s: self.initial_weights(s), 10) for s in seeds]
        plan.append(Step("loss-factor probe", "probe", self.path("probe", "loss_factors.txt"), self.probe, 20))
        # seed by seed through the pre-registered arms, then the exploratory arms
        runs = [(arm, seed) for seed in seeds for arm in ARMS] + [(arm, seed) for arm in p.exploratory
                                                                   for seed in seeds]
        for arm, seed in runs:
            if seed not in p.seeds(arm):
                continue
            run = self.run_dir(seed, arm)
            per_iteration = 0.35 if arm == "plain" else 0.5
            plan += [
                Step(f"train {arm}, seed {seed}", f"train:{'plain' if arm == 'plain' else 'mgd'}",
                     os.path.join(run, "model_final.pth"), lambda a=arm, s=seed: self.train_arm(a, s),
                     per_iteration * student_its),
                Step(f"evaluate {arm}, seed {seed}", "eval", os.path.join(run, "eval", "eval_results.json"),
                     lambda a=arm, s=seed: self.evaluate_arm(a, s), 15),
                Step(f"matched cost {arm}, seed {seed}", "cost", os.path.join(run, "matched_cost.json"),
                     lambda a=arm, s=seed: self.matched_cost(a, s), 15),
            ]
        return plan

    # -- running ----------------------------------------------------------------------------
    def run(self, report: Callable[["StudyRunner"], None]) -> None:
        """Every step not done yet, then ``report(self)``; progress and ETA after each step."""
        os.makedirs(self.out, exist_ok=True)
        self._check_settings()
        self._load_timings()
        plan = self.steps()
        todo = [s for s in plan if not s.done()]
        self.log(f"[study] protocol {self.protocol.name} ({self.protocol.source}) into {self.out}: {len(plan)} steps, "
                 f"{len(plan) - len(todo)} already done; ETA {format_seconds(self._eta(todo))}")
        started = time.perf_counter()
        for k, step in enumerate(todo, 1):
            self.log(f"[study] {len(plan) - len(todo) + k}/{len(plan)}: {step.name}")
            begin = time.perf_counter()
            step.run()
            if not step.done():
                raise UserError(f"study step '{step.name}' ended without writing {step.output}")
            self.timings[step.name] = round(time.perf_counter() - begin, 1)
            self._save_timings()
            self.log(f"[study] {step.name}: {format_seconds(self.timings[step.name])}; this session "
                     f"{format_seconds(time.perf_counter() - started)}, ETA {format_seconds(self._eta(todo[k:]))}")
        report(self)

    def _check_settings(self) -> None:
        """A study folder holds the runs of one protocol: kept steps must have been made with the
        settings of this one (seeds may be added). Records them in ``protocol.json`` the first time."""
        settings = {k: v for k, v in self.protocol.as_dict().items() if k not in ("arms", "exploratory", "source")}
        settings = json.loads(json.dumps(settings))  # (tuples as lists, as read back)
        path = self.path("protocol.json")
        if os.path.exists(path):
            with open(path) as f:
                recorded = json.load(f)
            changed = sorted(k for k in set(settings) | set(recorded) if settings.get(k) != recorded.get(k))
            if changed:
                raise UserError(f"the study folder {self.out} holds runs of another protocol ({', '.join(changed)} "
                                f"differ from {self.protocol.source}); give another STUDY_DIR or delete that folder")
            return
        text = json.dumps(settings, indent=1)
        atomic_write(path, lambda f: f.write(text.encode()))

    def _kind_rate(self, kind: str, plan: List[Step]) -> Optional[float]:
        """Measured seconds / estimated seconds over the finished steps of ``kind``."""
        measured = [(self.timings[s.name], s.estimate) for s in plan if s.kind == kind and s.name in self.timings]
        if not measured:
            return None
        return sum(m for m, _ in measured) / max(1e-9, sum(e for _, e in measured))

    def _eta(self, todo: List[Step]) -> float:
        plan = self.steps()
        overall = [self._kind_rate(k, plan) for k in {s.kind for s in plan}]
        overall = [r for r in overall if r is not None]
        default = sum(overall) / len(overall) if overall else 1.0
        return sum(s.estimate * (self._kind_rate(s.kind, plan) or default) for s in todo)

    def _load_timings(self) -> None:
        try:
            with open(self.timings_path) as f:
                self.timings = json.load(f)
        except (OSError, ValueError):
            self.timings = {}

    def _save_timings(self) -> None:
        text = json.dumps(self.timings, indent=1)
        atomic_write(self.timings_path, lambda f: f.write(text.encode()))

    def _call(self, cmd: List[str], what: str) -> None:
        """Run a command of the study; Ctrl-C becomes StudyInterrupted, a failure a UserError.

        While the command runs, this process only notes a Ctrl-C (the terminal sends it to the
        command too): a training then saves where it stopped and exits 130 (train_net.py),
        rather than being killed by this process's KeyboardInterrupt."""
        noted = []
        previous = signal.signal(signal.SIGINT, lambda *_: noted.append(True))
        try:
            proc = subprocess.run([str(c) for c in cmd], cwd=REPO)
        finally:
            signal.signal(signal.SIGINT, previous)
        if noted or proc.returncode in (130, -signal.SIGINT):
            raise StudyInterrupted(what)
        if proc.returncode != 0:
            raise UserError(f"study step '{what}' failed (exit code {proc.returncode}); its output is above")

    # -- the steps ----------------------------------------------------------------------------
    def make_data(self) -> None:
        from .synthetic_coco import SynthConfig, write_dataset

        d = self.protocol.data
        summary = write_dataset(self.path("data"), SynthConfig(
            seed=int(d["seed"]), num_train=int(d["train"]), num_val=int(d["val"]), size=int(d["size"]),
            min_object=float(d["min_object"]), max_object=float(d["max_object"])))
        self.log(f"[study] generated {summary}")

    def pretrain(self, depth: int) -> None:
        p = self.protocol.pretrain
        self._call([sys.executable, os.path.join(REPO, "scripts", "pretrain_backbone.py"), "--depth", depth,
                    "--out", self.path("weights", f"r-{depth}.pkl"), "--steps", p["steps"], "--batch", p["batch"],
                    "--size", p["size"], "--lr", p["lr"], "--checkout", self.checkout], f"pretrain R{depth}")

    def _train(self, config: str, weights: str, out: str, opts: List[str], what: str) -> None:
        """train_net.py into ``out``: continued (--resume) when it holds a checkpoint, else from
        scratch (a folder without a checkpoint holds nothing to keep)."""
        resume = os.path.isfile(os.path.join(out, "last_checkpoint"))
        if not resume and os.path.isdir(out):
            shutil.rmtree(out)
        self._call([sys.executable, TRAIN_NET, *(["--resume"] if resume else []), *self.dataset_args(),
                    "--config-file", config, *self.protocol.input_opts(), *opts, "DATASETS.TEST", "()",
                    "MODEL.WEIGHTS", weights, "OUTPUT_DIR", out], what)

    def train_teacher(self) -> None:
        p = self.protocol
        self._train(TEACHER_CONFIG, self.path("weights", "r-50.pkl"), self.path("teacher"),
                    p.teacher.opts(p.batch) + ["SEED", "0"], "teacher R50")

    def evaluate(self, config: str, weights: str, out: str) -> None:
        self._call([sys.executable, TRAIN_NET, "--eval-only", "--replace-eval", *self.dataset_args(),
                    "--config-file", config, *self.protocol.input_opts(), *self.protocol.eval_opts(), "MODEL.WEIGHTS", weights,
                    "OUTPUT_DIR", out], f"evaluation of {weights}")

    def merge(self) -> None:
        self._call([sys.executable, "-m", "mgd_tools.merge_models",
                    self.path("teacher", "model_final.pth"), self.path("weights", "r-18.pkl"),
                    self.path("weights", "T50-S18.pkl")], "merge")

    def initial_weights(self, seed: int) -> None:
        """The MGD model built with ``seed`` and the merged checkpoint loaded: the student's head,
        FPN and the distiller's norms are drawn here, once; every arm of the seed starts from
        them (the plain arm from the student's part)."""
        self._call([sys.executable, os.path.join(REPO, "scripts", "study_initial_weights.py"),
                    "--config-file", MGD_CONFIG, "--merged", self.path("weights", "T50-S18.pkl"), "--seed", seed,
                    "--out", self.path(f"seed{seed}"), *self.protocol.input_opts()], f"initial weights, seed {seed}")

    def probe(self) -> None:
        p = self.protocol
        self._call([sys.executable, TRAIN_NET, "--probe-loss-factors", *self.dataset_args(),
                    "--probe-matching-batches", p.probe["matching_batches"],
                    "--probe-output", self.path("probe", "loss_factors.txt"), "--config-file", MGD_CONFIG,
                    *p.input_opts(), *p.student.opts(p.batch), *p.matching_opts(),
                    "MODEL.WEIGHTS", self.path("seed1", "initial_mgd.pth"), "OUTPUT_DIR", self.path("probe")],
                   "loss-factor probe")

    def loss_factors(self, arm: str) -> List[float]:
        """The probe's factors, scaled for the factor arms (ignored positions keep theirs)."""
        with open(self.path("probe", "loss_factors.txt")) as f:
            words = f.read().split()
        factors = json.loads(words[words.index("MGD.LOSS_FACTORS") + 1])
        scale = FACTOR_SCALE.get(arm, 1.0)
        return [f * scale if f > 0 else f for f in factors]

    def train_arm(self, arm: str, seed: int) -> None:
        p = self.protocol
        opts = p.student.opts(p.batch) + ["SEED", str(seed)]
        if arm == "plain":
            self._train(STUDENT_CONFIG, self.path(f"seed{seed}", "initial_plain.pth"), self.run_dir(seed, arm), opts,
                        f"{arm}, seed {seed}")
            return
        extra = ARM_OPTS[arm] if arm in ARM_OPTS else [str(o) for o in p.exploratory[arm].get("opts", [])]
        opts += p.matching_opts() + ["MGD.LOSS_FACTORS", json.dumps(self.loss_factors(arm))] + extra
        self._train(MGD_CONFIG, self.path(f"seed{seed}", "initial_mgd.pth"), self.run_dir(seed, arm), opts,
                    f"{arm}, seed {seed}")

    def evaluate_arm(self, arm: str, seed: int) -> None:
        run = self.run_dir(seed, arm)
        config = STUDENT_CONFIG if arm == "plain" else MGD_CONFIG
        self.evaluate(config, os.path.join(run, "model_final.pth"), os.path.join(run, "eval"))

    def matched_cost(self, arm: str, seed: int) -> None:
        run = self.run_dir(seed, arm)
        self._call([sys.executable, os.path.join(REPO, "scripts", "measure_matched_cost.py"), *self.dataset_args(),
                    "--config-file", MGD_CONFIG, "--teacher", self.path("teacher", "model_final.pth"),
                    "--student", os.path.join(run, "model_final.pth"), "--out", os.path.join(run, "matched_cost.json"),
                    *self.protocol.input_opts()], f"matched cost {arm}, seed {seed}")
