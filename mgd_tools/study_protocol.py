"""The study's protocol: what ``make study`` runs, read from a YAML file (configs/study/*.yaml).

A protocol fixes, before any MGD run: the generated data, the backbones' pretraining, the input
size, the teacher's and the students' schedules, the matching schedule and the seeds of every
arm. docs/study.md says how the CPU protocol was chosen. Keys (all required)::

    name: cpu
    data: {seed, train, val, size, min_object, max_object}      # mgd_tools.synthetic_coco
    pretrain: {steps, batch, size, lr}                           # mgd_tools.pretrain
    input_size: 96                                               # shorter side, train and test
    batch: 4                                                     # images per step (all processes)
    teacher: {iterations, lr, warmup, steps}                     # steps: the lr drops (x 0.1)
    student: {iterations, lr, warmup, steps}                     # every arm's schedule
    matching: {update_freq, update_slow_step, update_iter}       # MGD.UPDATE_*
    probe: {matching_batches}                                    # the loss-factor probe
    arms: {plain: 5, mgd: 5, ...}                                # seeds 1..n of each arm

and, optional, ``exploratory``: arms run after the pre-registered ones and reported apart, not
part of the study's decision (what an investigation adds once the answer is in)::

    exploratory: {distill_first_half: {seeds: 3, opts: [MGD.DISTILL_UNTIL, 150], what: "..."}}

each the ``mgd`` arm with ``opts`` added; and ``score_threshold`` (MODEL.RETINANET.SCORE_THRESH_TEST of every evaluation;
default 0.05, Detectron2's): a model trained a few iterations (the tests' tiny protocol) scores
no box above 0.05, and its AP would be undefined.
"""
from dataclasses import dataclass, field
from typing import Dict, List

import yaml

from mgd.errors import UserError

__all__ = ["ARMS", "Schedule", "Protocol", "load_protocol", "ProtocolError"]

#: every arm of the study, in report order; what each changes relative to ``mgd``
ARMS = {
    "plain": "the plain student: no teacher, no distillation",
    "mgd": "MGD-AMP with the repository's defaults (loss factors from the probe)",
    "control": "the MGD model with its distillation loss weighted 0 (MGD.LOSS_WEIGHT 0): all else runs",
    "fixed_assignment": "a random channel assignment drawn once, never re-solved (MGD.ASSIGNMENT random)",
    "factors_x0.25": "the loss factors x 0.25 (distillation 4x stronger)",
    "factors_x4": "the loss factors x 4 (distillation 4x weaker)",
}


class ProtocolError(UserError):
    """A protocol file that cannot be run (one line)."""


@dataclass(frozen=True)
class Schedule:
    iterations: int
    lr: float
    warmup: int
    steps: List[int]

    def opts(self, batch: int) -> List[str]:
        """The config overrides of this schedule."""
        return ["SOLVER.MAX_ITER", str(self.iterations), "SOLVER.BASE_LR", repr(float(self.lr)),
                "SOLVER.WARMUP_ITERS", str(self.warmup), "SOLVER.STEPS", str(tuple(self.steps)),
                "SOLVER.IMS_PER_BATCH", str(batch)]


@dataclass(frozen=True)
class Protocol:
    name: str
    data: Dict[str, float]
    pretrain: Dict[str, float]
    input_size: int
    batch: int
    teacher: Schedule
    student: Schedule
    matching: Dict[str, object]
    probe: Dict[str, int]
    arms: Dict[str, int]
    score_threshold: float = 0.05
    exploratory: Dict[str, dict] = field(default_factory=dict)
    source: str = field(default="", compare=False)

    def seeds(self, arm: str) -> List[int]:
        """Seeds 1..n of a pre-registered or an exploratory arm."""
        n = self.arms[arm] if arm in self.arms else int(self.exploratory.get(arm, {}).get("seeds", 0))
        return list(range(1, n + 1))

    def input_opts(self) -> List[str]:
        size = str(self.input_size)
        return ["INPUT.MIN_SIZE_TRAIN", f"({size},)", "INPUT.MAX_SIZE_TRAIN", size,
                "INPUT.MIN_SIZE_TEST", size, "INPUT.MAX_SIZE_TEST", size]

    def eval_opts(self) -> List[str]:
        return ["MODEL.RETINANET.SCORE_THRESH_TEST", repr(float(self.score_threshold))]

    def matching_opts(self) -> List[str]:
        m = self.matching
        return ["MGD.UPDATE_FREQ", str(list(m["update_freq"])), "MGD.UPDATE_SLOW_STEP", str(list(m["update_slow_step"])),
                "MGD.UPDATE_ITER", str(m["update_iter"])]

    def as_dict(self) -> dict:
        return {"name": self.name, "data": dict(self.data), "pretrain": dict(self.pretrain),
                "input_size": self.input_size, "batch": self.batch,
                "teacher": vars(self.teacher), "student": vars(self.student), "matching": dict(self.matching),
                "probe": dict(self.probe), "arms": dict(self.arms), "score_threshold": self.score_threshold,
                "exploratory": {k: dict(v) for k, v in self.exploratory.items()}, "source": self.source}


def _schedule(raw: dict, where: str) -> Schedule:
    try:
        schedule = Schedule(int(raw["iterations"]), float(raw["lr"]), int(raw["warmup"]), [int(s) for s in raw["steps"]])
    except (KeyError, TypeError, ValueError) as error:
        raise ProtocolError(f"{where} needs iterations, lr, warmup and steps: {error}") from None
    if schedule.iterations < 1 or not all(0 < s < schedule.iterations for s in schedule.steps):
        raise ProtocolError(f"{where}: iterations must be >= 1 and every step inside (0, iterations)")
    return schedule


def load_protocol(path: str) -> Protocol:
    """Read and check a protocol file (module doc); raises ProtocolError."""
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as error:
        raise ProtocolError(f"cannot read the study protocol {path}: {error}") from None
    required = ("name", "data", "pretrain", "input_size", "batch", "teacher", "student", "matching", "probe", "arms")
    missing = [k for k in required if not isinstance(raw, dict) or k not in raw]
    if missing:
        raise ProtocolError(f"the study protocol {path} lacks {', '.join(missing)}")
    arms = {str(k): int(v) for k, v in raw["arms"].items()}
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise ProtocolError(f"{path}: unknown arm(s) {unknown}; the arms are {', '.join(ARMS)}")
    if arms.get("plain", 0) < max(arms.values()):
        raise ProtocolError(f"{path}: every arm is compared with the plain student seed by seed: plain needs as many "
                            f"seeds as the arm with the most ({max(arms.values())})")
    exploratory = {str(k): dict(v) for k, v in (raw.get("exploratory") or {}).items()}
    for name, entry in exploratory.items():
        opts = entry.get("opts", [])
        if name in ARMS or not isinstance(entry.get("seeds"), int) or not isinstance(opts, list) or len(opts) % 2:
            raise ProtocolError(f"{path}: exploratory arm {name!r} needs a name of its own, seeds (a whole number) "
                                "and opts (KEY VALUE pairs)")
        if entry["seeds"] > arms.get("plain", 0):
            raise ProtocolError(f"{path}: exploratory arm {name!r} has more seeds than plain ({arms.get('plain', 0)})")
    return Protocol(name=str(raw["name"]), data=dict(raw["data"]), pretrain=dict(raw["pretrain"]),
                    input_size=int(raw["input_size"]), batch=int(raw["batch"]),
                    teacher=_schedule(raw["teacher"], "teacher"), student=_schedule(raw["student"], "student"),
                    matching=dict(raw["matching"]), probe=dict(raw["probe"]), arms=arms,
                    score_threshold=float(raw.get("score_threshold", 0.05)), exploratory=exploratory,
                    source=str(path))
