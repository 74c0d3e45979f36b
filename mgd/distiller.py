"""MGDDistiller: the framework-free MGD training component.

It owns, per distilled position: a trainable student norm, the teacher margins, the
accumulated matching cost and the current assignment. A detection framework supplies the
feature taps (one list entry per position, pre-ReLU by default) and the teacher's norm
affines; it calls, in order:

    update_margins(affines)                  # at start and on resume
    reset_matching(); accumulate_matching(s, t) per batch; finish_matching(ranks)
    losses = distiller(s, t)                 # every step; {position: loss}

Under torch.distributed, ``finish_matching`` solves from the costs of every rank summed
(``ranks="all"``) or of rank 0 alone (``ranks="rank0"``, the original's rule), and every rank
ends with the same assignment; ``last_statistic`` (:class:`mgd.ranks.MatchingStatistic`) says how
many images, from which ranks.

Per distilled position, the recomputed state (margin, accumulated cost, assignment) lives in
a :class:`PositionState` under ``positions[<position>]``: non-persistent buffers, so
``.to(device)`` moves them but the state dict never holds them. Read them through
:meth:`MGDDistiller.margins` and :meth:`MGDDistiller.assignments`; a training checkpoint
carries the assignments beside the weights (:meth:`MGDDistiller.load_assignments` restores
them). The student norms are ordinary (persistent) parameters; the state dict holds exactly
``student_norms.<position>.*``.
"""
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .defaults import (
    DEFAULT_IGNORE_INDS,
    DEFAULT_LOSS_FACTORS,
    DEFAULT_POSITION_NAMES,
    DEFAULT_REDUCER,
    GN_GROUPS,
)
from .loss import distillation_loss
from .margins import margins_from_affine
from .matching import MATCHING_RANKS, assignment_length, copies_per_student, matching_cost, solve_matching
from .ranks import MatchingStatistic, broadcast_from_rank0, combine_ranks
from .reducers import REDUCERS, reduce_teacher

__all__ = [
    "MGDDistiller",
    "PositionState",
    "MatchingStatistic",
    "MATCHING_RANKS",
    "build_student_norm",
    # re-exported from mgd.defaults, where they are defined
    "DEFAULT_POSITION_NAMES",
    "DEFAULT_IGNORE_INDS",
    "DEFAULT_LOSS_FACTORS",
    "GN_GROUPS",
]

Affine = Optional[Tuple[Tensor, Tensor]]
#: a student norm: "GN", or a callable channels -> module (e.g. Detectron2's NaiveSyncBatchNorm)
Norm = Union[str, Callable[[int], nn.Module]]


class PositionState(nn.Module):
    """What one distilled position recomputes during training (not in the state dict).

    Attributes (non-persistent buffers; None until first set):
        margin: [tc] float, the teacher margins (``update_margins``).
        cost: [sc, tc] float64, the matching cost summed over the images accumulated since
            the last reset (``accumulate_matching``).
        assignment: [L] long, teacher channel per tiled student row (``finish_matching``;
            L = k * sc with k = tc // sc, or sc for the "sm" reducer).
    """

    margin: Optional[Tensor]
    cost: Optional[Tensor]
    assignment: Optional[Tensor]

    def __init__(self):
        super().__init__()
        for kind in ("margin", "cost", "assignment"):
            self.register_buffer(kind, None, persistent=False)


def build_student_norm(norm: Norm, channels: int) -> nn.Module:
    """"GN" -> GroupNorm(32, C) (C % 32 == 0 required); a callable -> ``norm(C)``.

    The framework supplies any other norm as a callable, e.g. Detectron2's
    ``NaiveSyncBatchNorm`` for ``MGD.SYNC_BN`` (the original's synchronised BN).
    """
    if callable(norm):
        return norm(channels)
    if norm == "GN":
        if channels % GN_GROUPS != 0:
            raise ValueError(f"GN student norm needs channels divisible by {GN_GROUPS}, got {channels}")
        return nn.GroupNorm(GN_GROUPS, channels)
    raise ValueError(f"unknown student norm {norm!r}; expected 'GN' or a callable channels -> norm module")


class MGDDistiller(nn.Module):
    """Matching Guided Distillation over a list of feature positions.

    Args:
        student_channels, teacher_channels: channels per position (all positions).
        reducer: "amp" | "rd" | "sp" | "sm".
        ignore_inds: positions not distilled (their features may be None).
        loss_factors: per position; each loss is divided by its factor (must be > 0 where
            distilled).
        norm: student norm per distilled position: "GN", or a callable channels -> module.
        position_names: names of the positions (keys of the returned losses).
    """

    def __init__(
        self,
        student_channels: Sequence[int],
        teacher_channels: Sequence[int],
        *,
        reducer: str = DEFAULT_REDUCER,
        ignore_inds: Sequence[int] = DEFAULT_IGNORE_INDS,
        loss_factors: Sequence[float] = DEFAULT_LOSS_FACTORS,
        norm: Norm = "GN",
        position_names: Sequence[str] = DEFAULT_POSITION_NAMES,
    ):
        super().__init__()
        num = len(position_names)
        for what, seq in (("student_channels", student_channels), ("teacher_channels", teacher_channels),
                          ("loss_factors", loss_factors)):
            if len(seq) != num:
                raise ValueError(f"{what} has {len(seq)} entries for {num} positions {tuple(position_names)}")
        if len(set(position_names)) != num:
            raise ValueError(f"position names must be unique, got {tuple(position_names)}")
        bad = [i for i in ignore_inds if not 0 <= i < num]
        if bad:
            raise ValueError(f"ignore_inds {bad} out of range for {num} positions")
        if reducer not in REDUCERS:
            raise ValueError(f"unknown reducer {reducer!r}; expected one of {REDUCERS}")
        self.position_names: Tuple[str, ...] = tuple(position_names)
        self.student_channels: Tuple[int, ...] = tuple(int(c) for c in student_channels)
        self.teacher_channels: Tuple[int, ...] = tuple(int(c) for c in teacher_channels)
        self.loss_factors: Tuple[float, ...] = tuple(float(f) for f in loss_factors)
        self.reducer = reducer
        self.distilled_positions: List[int] = sorted(set(range(num)) - set(ignore_inds))
        if not self.distilled_positions:
            raise ValueError("every position is in ignore_inds: nothing to distil")
        for i in self.distilled_positions:
            name, sc, tc = self._name(i), self.student_channels[i], self.teacher_channels[i]
            factor = self.loss_factors[i]
            if not factor > 0 or factor == float("inf"):
                raise ValueError(f"loss factor of distilled position {name} must be finite and > 0, got {factor}")
            if tc < sc:
                raise ValueError(f"position {name}: teacher channels ({tc}) < student channels ({sc})")
            copies_per_student(sc, tc)
        self.student_norms = nn.ModuleDict(
            {self._name(i): build_student_norm(norm, self.student_channels[i]) for i in self.distilled_positions}
        )
        #: {position: PositionState} over the distilled positions
        self.positions = nn.ModuleDict({self._name(i): PositionState() for i in self.distilled_positions})
        self.images_seen = 0  # images accumulated since the last reset (a host int: no sync)
        #: what the last finish_matching solved from (None before the first)
        self.last_statistic: Optional[MatchingStatistic] = None

    # -- naming -------------------------------------------------------------------------
    def _name(self, i: int) -> str:
        return self.position_names[i]

    def _state(self, i: int) -> PositionState:
        return self.positions[self.position_names[i]]

    def _default_device(self) -> torch.device:
        return next(self.student_norms.parameters()).device

    # -- margins ------------------------------------------------------------------------
    def update_margins(self, teacher_affines: Sequence[Affine]) -> None:
        """Set the teacher margins from its norm affines, one entry per position.

        Each entry is (gamma [tc], beta [tc]) of the teacher norm before that ReLU, or None
        for a fresh norm (gamma = 1, beta = 0), e.g. FPN outputs. Ignored positions are
        skipped. Margins live on the affine's device (or the student norms' for None).
        """
        self._check_length("teacher_affines", teacher_affines)
        for i in self.distilled_positions:
            tc = self.teacher_channels[i]
            affine = teacher_affines[i]
            if affine is None:
                device = self._default_device()
                gamma, beta = torch.ones(tc, device=device), torch.zeros(tc, device=device)
            else:
                gamma, beta = affine
            if gamma.numel() != tc or beta.numel() != tc:
                raise ValueError(
                    f"position {self._name(i)}: affine has {gamma.numel()}/{beta.numel()} channels, expected {tc}"
                )
            self._state(i).margin = margins_from_affine(gamma.reshape(-1), beta.reshape(-1)).float()

    # -- matching -----------------------------------------------------------------------
    def reset_matching(self) -> None:
        """Forget the accumulated costs and the image count (the assignment is kept)."""
        for state in self.positions.values():
            state.cost = None
        self.images_seen = 0

    @torch.no_grad()
    def accumulate_matching(
        self, student_feats: Sequence[Optional[Tensor]], teacher_feats: Sequence[Optional[Tensor]]
    ) -> None:
        """Add one batch's matching costs (raw student taps vs teacher taps, [N, C, H, W]).

        The costs are summed in float64, so that the sum hardly depends on how the images are
        split into batches and over ranks.
        """
        pairs = self._checked_pairs(student_feats, teacher_feats)
        for i, (s, t) in pairs.items():
            cost, state = matching_cost(s, t).double(), self._state(i)
            state.cost = cost if state.cost is None else state.cost.add_(cost)
        self.images_seen += next(iter(pairs.values()))[0].shape[0]

    def finish_matching(self, ranks: str = "all") -> Dict[str, float]:
        """Solve the assignment per distilled position from the mean cost per image.

        Args:
            ranks: under torch.distributed, "all": every rank's summed costs and image counts
                are added up (all-reduce), so the assignment is solved from all the images of
                the pass, whatever the process count; "rank0": rank 0's costs alone are used
                (broadcast; the original's rule: the other ranks' images are ignored). A rank
                may have accumulated nothing. Without torch.distributed both are the same.

        Rank 0 solves and broadcasts: every rank ends with the same assignment and the same
        :attr:`last_statistic`. Resets the accumulators. Returns {position: mean cost of the
        matched pairs} (in [0, 4]) for logging, equal on every rank.
        """
        if ranks not in MATCHING_RANKS:
            raise ValueError(f"ranks must be one of {MATCHING_RANKS}, got {ranks!r}")
        distributed = dist.is_available() and dist.is_initialized()
        if not distributed and self.images_seen == 0:
            raise ValueError("finish_matching() called before accumulate_matching()")
        summed = {i: self._summed_cost(i) for i in self.distilled_positions}
        images_per_rank = [self.images_seen]
        if distributed:
            summed, images_per_rank = combine_ranks(summed, self.images_seen, ranks)
        statistic = MatchingStatistic(ranks, tuple(images_per_rank),
                                      sum(images_per_rank) if ranks == "all" else images_per_rank[0])
        if statistic.images == 0:
            raise ValueError(f"finish_matching(): no image accumulated ({statistic.describe()})")
        costs = {i: (c / statistic.images).float() for i, c in summed.items()}
        sparse = self.reducer == "sm"
        if not distributed or dist.get_rank() == 0:
            assignments = {i: solve_matching(c, sparse=sparse) for i, c in costs.items()}
        else:
            assignments = {
                i: torch.empty(assignment_length(*c.shape, sparse=sparse), dtype=torch.long, device=c.device)
                for i, c in costs.items()
            }
        if distributed:
            assignments = broadcast_from_rank0(assignments)
        matched_costs = []
        for i, guided in assignments.items():
            self._state(i).assignment = guided
            students = torch.arange(guided.numel(), device=guided.device) % self.student_channels[i]
            matched_costs.append(costs[i][students, guided].mean())
        self.reset_matching()
        self.last_statistic = statistic
        names = [self._name(i) for i in assignments]
        return dict(zip(names, torch.stack(matched_costs).tolist()))

    def _summed_cost(self, i: int) -> Tensor:
        """Position ``i``'s accumulated cost [sc, tc] (float64), zeros if nothing was accumulated."""
        cost = self._state(i).cost
        if cost is None:
            shape = (self.student_channels[i], self.teacher_channels[i])
            cost = torch.zeros(shape, dtype=torch.float64, device=self._default_device())
        return cost

    # -- loss ---------------------------------------------------------------------------
    def forward(
        self, student_feats: Sequence[Optional[Tensor]], teacher_feats: Sequence[Optional[Tensor]]
    ) -> Dict[str, Tensor]:
        """{position: loss / loss factor} over the distilled positions.

        Student taps pass through their trainable norm; the teacher taps are detached and
        reduced along the current assignment. The caller sums and divides by the batch size.
        """
        pairs = self._checked_pairs(student_feats, teacher_feats)
        losses = {}
        for i, (s, t) in pairs.items():
            margin, guided = self._state(i).margin, self._state(i).assignment
            if margin is None:
                raise ValueError("MGD loss asked for before update_margins()")
            if guided is None:
                raise ValueError("MGD loss asked for before any finish_matching()")
            target, target_margin = reduce_teacher(t.detach(), margin, guided, self.student_channels[i], self.reducer)
            student = self.student_norms[self._name(i)](s)
            losses[self._name(i)] = distillation_loss(student, target, target_margin) / self.loss_factors[i]
        return losses

    # -- read-only views ---------------------------------------------------------------------
    def margins(self) -> Dict[str, Tensor]:
        """{position: margins [tc] (float)} for the distilled positions whose margins are set."""
        return {name: st.margin for name, st in self.positions.items() if st.margin is not None}

    def assignments(self) -> Dict[str, Tensor]:
        """{position: assignment [L] (long)} for the distilled positions already matched.

        Entry ``r`` is the teacher channel guiding student channel ``r % sc``; L = k * sc
        (k = tc // sc teacher channels per student channel), or sc for the "sm" reducer.
        """
        return {name: st.assignment for name, st in self.positions.items() if st.assignment is not None}

    def load_assignments(self, assignments: Dict[str, Tensor]) -> None:
        """Set the assignments of every distilled position (e.g. a checkpoint's
        :meth:`assignments`), on the student norms' device.

        Raises ValueError, changing nothing, unless ``assignments`` names exactly the distilled
        positions, each a whole-number tensor of this reducer's length
        (:func:`mgd.matching.assignment_length`) with teacher channels in [0, tc).
        """
        names = [self._name(i) for i in self.distilled_positions]
        if sorted(assignments) != sorted(names):
            raise ValueError(f"assignments for positions {sorted(assignments)}, this distiller distils {names}")
        checked = {}
        for i in self.distilled_positions:
            name, sc, tc = self._name(i), self.student_channels[i], self.teacher_channels[i]
            guided = torch.as_tensor(assignments[name])
            length = assignment_length(sc, tc, sparse=self.reducer == "sm")
            if guided.dtype.is_floating_point or guided.dim() != 1 or guided.numel() != length:
                raise ValueError(f"position {name}: assignment {tuple(guided.shape)} {guided.dtype}, expected "
                                 f"{length} teacher channels (reducer {self.reducer!r}, {sc} -> {tc} channels)")
            if guided.numel() and not (0 <= int(guided.min()) and int(guided.max()) < tc):
                raise ValueError(f"position {name}: assignment names teacher channels outside [0, {tc})")
            checked[name] = guided.to(device=self._default_device(), dtype=torch.long)
        for name, guided in checked.items():
            self.positions[name].assignment = guided

    def accumulated_costs(self) -> Dict[str, Tensor]:
        """{position: cost [sc, tc] summed over the images seen since the last reset}."""
        return {name: st.cost for name, st in self.positions.items() if st.cost is not None}

    # -- validation ---------------------------------------------------------------------
    def _check_length(self, what: str, seq: Sequence) -> None:
        if len(seq) != len(self.position_names):
            raise ValueError(f"{what} has {len(seq)} entries for {len(self.position_names)} positions")

    def _checked_pairs(
        self, student_feats: Sequence[Optional[Tensor]], teacher_feats: Sequence[Optional[Tensor]]
    ) -> Dict[int, Tuple[Tensor, Tensor]]:
        """{position index: (student, teacher)} for distilled positions, checking channels."""
        self._check_length("student_feats", student_feats)
        self._check_length("teacher_feats", teacher_feats)
        pairs = {}
        for i in self.distilled_positions:
            s, t = student_feats[i], teacher_feats[i]
            name = self._name(i)
            if s is None or t is None:
                raise ValueError(f"position {name} is distilled but a feature is None")
            for who, feat, channels in (("student", s, self.student_channels[i]),
                                        ("teacher", t, self.teacher_channels[i])):
                if feat.dim() != 4 or feat.shape[1] != channels:
                    raise ValueError(
                        f"position {name}: {who} feature {tuple(feat.shape)}, expected [N, {channels}, H, W]")
            if s.shape[0] != t.shape[0] or s.shape[2:] != t.shape[2:]:
                raise ValueError(
                    f"position {name}: student {tuple(s.shape)} and teacher {tuple(t.shape)} differ in N, H or W")
            pairs[i] = (s, t)
        return pairs

    def extra_repr(self) -> str:
        names = [self._name(i) for i in self.distilled_positions]
        return f"reducer={self.reducer!r}, distilled={names}"
