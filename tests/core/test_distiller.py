"""MGDDistiller end to end on tiny random features, and every refusal."""
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

import mgd
from mgd.distiller import DEFAULT_LOSS_FACTORS

# c2..c5 tiny: k = 2, k = 4, k = 1 (sc = tc) and a shave (160 % 64 = 32); FPN positions ignored
STUDENT = (32, 32, 64, 64, 32, 32, 32, 32, 32)
TEACHER = (64, 128, 64, 160, 32, 32, 32, 32, 32)
SIZES = ((8, 8), (4, 4), (2, 2), (1, 1), (4, 4), (2, 2), (1, 1), (1, 1), (1, 1))


def features(channels, n=2, seed=0, ignored=(4, 5, 6, 7, 8), requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, (c, (h, w)) in enumerate(zip(channels, SIZES)):
        if i in ignored:
            out.append(None)
        else:
            out.append(torch.randn(n, c, h, w, generator=g).requires_grad_(requires_grad))
    return out


def ready_distiller(reducer="amp", n=2, **kwargs):
    d = mgd.MGDDistiller(STUDENT, TEACHER, reducer=reducer, **kwargs)
    d.update_margins([None] * 9)
    d.reset_matching()
    d.accumulate_matching(features(STUDENT, n, seed=1), features(TEACHER, n, seed=2))
    d.finish_matching()
    return d


def test_defaults_match_the_original():
    assert mgd.DEFAULT_POSITION_NAMES == ("c2", "c3", "c4", "c5", "p3", "p4", "p5", "p6", "p7")
    assert mgd.DEFAULT_IGNORE_INDS == (4, 5, 6, 7, 8) and mgd.DEFAULT_REDUCER == "amp"
    assert DEFAULT_LOSS_FACTORS == pytest.approx([5e7, 5e7, 5e6, 5e6, 5e7, 5e7, 5e5, 0, 0])
    d = mgd.MGDDistiller(STUDENT, TEACHER)
    assert d.distilled_positions == [0, 1, 2, 3]
    assert isinstance(d.student_norms["c2"], nn.GroupNorm) and d.student_norms["c2"].num_groups == 32


@pytest.mark.parametrize("reducer", ["amp", "rd", "sp", "sm"])
def test_end_to_end_losses_finite_and_gradients_reach_only_the_student(reducer):
    d = ready_distiller(reducer)
    student = features(STUDENT, seed=3, requires_grad=True)
    teacher = features(TEACHER, seed=4, requires_grad=True)
    losses = d(student, teacher)
    assert list(losses) == ["c2", "c3", "c4", "c5"]
    assert all(torch.isfinite(v) and v.dim() == 0 and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    for i in d.distilled_positions:
        assert student[i].grad is not None and student[i].grad.abs().sum() > 0
        assert teacher[i].grad is None
    for p in d.student_norms.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_forward_loss_matches_manual_composition():
    d = ready_distiller("amp")
    student = features(STUDENT, seed=3)
    teacher = features(TEACHER, seed=4)
    losses = d(student, teacher)
    i = 3  # c5: shaved, k = 2
    sc, tc = STUDENT[i], TEACHER[i]
    k = tc // sc
    guided = d.assignments()["c5"]
    normed = nn.functional.group_norm(student[i], 32)  # fresh GN: weight 1, bias 0
    matched = teacher[i][:, guided].view(2, k, sc, 1, 1)
    pick = matched.abs().argmax(1, keepdim=True)
    target_t = matched.gather(1, pick).squeeze(1)
    margin = torch.full((1, sc, 1, 1), -math.sqrt(2 / math.pi))  # every margin equal for a fresh norm
    target = torch.maximum(target_t, margin)
    mask = (normed > target) | (target > 0)
    expected = ((normed - target) ** 2 * mask).sum() / DEFAULT_LOSS_FACTORS[i]
    torch.testing.assert_close(losses["c5"], expected)


def test_assignment_solves_the_mean_cost_over_all_accumulated_images():
    d = mgd.MGDDistiller(STUDENT, TEACHER)
    d.update_margins([None] * 9)
    batches = [(features(STUDENT, n, seed=10 + n), features(TEACHER, n, seed=20 + n)) for n in (1, 3)]
    for s, t in batches:
        d.accumulate_matching(s, t)
    summary = d.finish_matching()
    assert d.images_seen == 0  # finish_matching resets the accumulators
    assert (d.last_statistic.images, d.last_statistic.images_per_rank) == (4, (4,))
    for i in d.distilled_positions:
        name = d.position_names[i]
        s_all = torch.cat([b[0][i] for b in batches])
        t_all = torch.cat([b[1][i] for b in batches])
        ns = nn.functional.normalize(s_all.flatten(2).double(), dim=2)
        nt = nn.functional.normalize(t_all.flatten(2).double(), dim=2)
        mean_cost = (2 - 2 * torch.einsum("nap,nbp->nab", ns, nt)).mean(0).numpy()
        sc, tc = mean_cost.shape
        k = tc // sc
        tiled = np.tile(mean_cost[:, : k * sc], (k, 1))
        rows, cols = linear_sum_assignment(tiled)
        guided = d.assignments()[name].numpy()
        got = mean_cost[np.arange(k * sc) % sc, guided]
        assert got.sum() == pytest.approx(tiled[rows, cols].sum(), rel=1e-5)
        assert summary[name] == pytest.approx(got.mean(), rel=1e-5)


def test_sm_reducer_uses_one_teacher_channel_per_student_channel():
    d = ready_distiller("sm")
    shapes = {name: tuple(a.shape) for name, a in d.assignments().items()}
    assert shapes == {"c2": (32,), "c3": (32,), "c4": (64,), "c5": (64,)}  # one teacher channel per student's


def test_margins_from_teacher_affines_and_fresh_norms():
    d = mgd.MGDDistiller(STUDENT, TEACHER)
    gamma, beta = torch.full((64,), 2.0), torch.full((64,), 7.0)  # Phi(-3.5) < 0.001 -> -3 * 2
    affines = [None, None, (gamma, beta), None] + [None] * 5
    d.update_margins(affines)
    margins = d.margins()
    assert list(margins) == ["c2", "c3", "c4", "c5"]
    torch.testing.assert_close(margins["c4"], torch.full((64,), -6.0))
    torch.testing.assert_close(margins["c2"], torch.full((64,), -math.sqrt(2 / math.pi)))


def test_checkpoint_holds_only_the_student_norms():
    d = ready_distiller()
    d.accumulate_matching(features(STUDENT, seed=5), features(TEACHER, seed=6))  # costs set too
    assert d.margins() and d.assignments() and d.accumulated_costs()
    keys = list(d.state_dict())
    assert keys == [f"student_norms.{p}.{w}" for p in ("c2", "c3", "c4", "c5") for w in ("weight", "bias")]
    fresh = mgd.MGDDistiller(STUDENT, TEACHER)
    fresh.load_state_dict(d.state_dict())  # strict: nothing else is expected
    assert fresh.margins() == {} and fresh.assignments() == {}  # recomputed, never loaded


def test_recomputed_state_follows_the_module_and_views_are_copies_of_the_mapping():
    d = ready_distiller()
    d.double()  # what .to(device) does to buffers: margins are floating, assignments long
    assert all(m.dtype == torch.float64 for m in d.margins().values())
    assert all(a.dtype == torch.long for a in d.assignments().values())
    d.assignments().clear()
    assert list(d.assignments()) == ["c2", "c3", "c4", "c5"]
    d.reset_matching()
    assert d.accumulated_costs() == {} and list(d.assignments()) == ["c2", "c3", "c4", "c5"]


def test_norm_factory_builds_each_distilled_positions_norm():
    """Another norm (MGD.SYNC_BN: Detectron2's NaiveSyncBatchNorm) comes from the framework as a
    callable channels -> module; the core only calls it, once per distilled position."""
    asked = []

    def factory(channels):
        asked.append(channels)
        return nn.BatchNorm2d(channels)

    d = ready_distiller(norm=factory)
    assert asked == [32, 32, 64, 64]  # c2..c5's student channels, in order
    assert all(isinstance(d.student_norms[p], nn.BatchNorm2d) for p in ("c2", "c3", "c4", "c5"))
    student, teacher = features(STUDENT, seed=3), features(TEACHER, seed=4)
    losses = d(student, teacher)
    # c5 through the factory's BatchNorm (batch statistics in training mode), not a GroupNorm
    i = 3
    normed = nn.functional.batch_norm(student[i], None, None, training=True)
    guided = d.assignments()["c5"]
    target, margin = mgd.reduce_teacher(teacher[i], d.margins()["c5"], guided, STUDENT[i], "amp")
    expected = mgd.distillation_loss(normed, target, margin) / DEFAULT_LOSS_FACTORS[i]
    torch.testing.assert_close(losses["c5"], expected)
    with pytest.raises(ValueError, match="callable"):
        mgd.MGDDistiller(STUDENT, TEACHER, norm="SyncBN")


def test_batch_of_one():
    d = ready_distiller(n=1)
    losses = d(features(STUDENT, n=1, seed=3), features(TEACHER, n=1, seed=4))
    assert all(torch.isfinite(v) for v in losses.values())


# -- refusals -------------------------------------------------------------------------------

@pytest.mark.parametrize("ignore", [(4, 5, 6, 7, 9), (-1,), (4, 5, 6, 7, 8, 100)])
def test_refuses_out_of_range_ignore_inds(ignore):
    with pytest.raises(ValueError, match="out of range"):
        mgd.MGDDistiller(STUDENT, TEACHER, ignore_inds=ignore)


def test_refuses_zero_loss_factor_at_a_distilled_position():
    with pytest.raises(ValueError, match="p6"):
        mgd.MGDDistiller(STUDENT, TEACHER, ignore_inds=(4, 5, 6, 8))  # p6's default factor is 0


def test_refuses_teacher_narrower_than_student():
    with pytest.raises(ValueError, match="teacher channels"):
        mgd.MGDDistiller((64,) + STUDENT[1:], (32,) + TEACHER[1:])


def test_refuses_unknown_reducer_and_norm():
    with pytest.raises(ValueError, match="reducer"):
        mgd.MGDDistiller(STUDENT, TEACHER, reducer="mean")
    with pytest.raises(ValueError, match="norm"):
        mgd.MGDDistiller(STUDENT, TEACHER, norm="BN")


def test_refuses_gn_channels_not_divisible_by_32():
    with pytest.raises(ValueError, match="divisible by 32"):
        mgd.MGDDistiller((48,) + STUDENT[1:], (96,) + TEACHER[1:])


def test_refuses_mismatched_declaration_lengths():
    with pytest.raises(ValueError, match="positions"):
        mgd.MGDDistiller(STUDENT[:4], TEACHER)
    with pytest.raises(ValueError, match="positions"):
        mgd.MGDDistiller(STUDENT, TEACHER, loss_factors=(1.0,) * 4)


def test_refuses_loss_before_matching_or_margins():
    d = mgd.MGDDistiller(STUDENT, TEACHER)
    s, t = features(STUDENT), features(TEACHER)
    with pytest.raises(ValueError, match="update_margins"):
        d(s, t)
    d.update_margins([None] * 9)
    with pytest.raises(ValueError, match="finish_matching"):
        d(s, t)
    with pytest.raises(ValueError, match="accumulate_matching"):
        d.finish_matching()


def test_refuses_mismatched_feature_channels_and_lists():
    d = ready_distiller()
    s, t = features(STUDENT), features(TEACHER)
    wrong = list(s)
    wrong[1] = torch.randn(2, 64, 4, 4)
    with pytest.raises(ValueError, match="c3"):
        d(wrong, t)
    with pytest.raises(ValueError, match="c3"):
        d.accumulate_matching(wrong, t)
    with pytest.raises(ValueError, match="entries"):
        d(s[:4], t)
    with pytest.raises(ValueError, match="entries"):
        d.update_margins([None] * 4)
    missing = list(t)
    missing[0] = None
    with pytest.raises(ValueError, match="None"):
        d(s, missing)
    with pytest.raises(ValueError, match="channels"):
        d.update_margins([(torch.ones(3), torch.zeros(3))] + [None] * 8)


@pytest.mark.parametrize("reducer", ["amp", "sm"])
def test_assignments_restored_into_a_fresh_distiller_give_the_same_losses(reducer):
    """What a training checkpoint carries (``assignments()``) makes a new distiller compute what
    the matched one computes, without a matching of its own."""
    matched = ready_distiller(reducer)
    restored = mgd.MGDDistiller(STUDENT, TEACHER, reducer=reducer)
    restored.load_state_dict(matched.state_dict())
    restored.update_margins([None] * 9)
    restored.load_assignments({k: v.clone() for k, v in matched.assignments().items()})
    student, teacher = features(STUDENT, seed=3), features(TEACHER, seed=4)
    expected, got = matched(student, teacher), restored(student, teacher)
    assert list(got) == list(expected) and all(torch.equal(got[k], expected[k]) for k in expected)


def test_assignments_that_do_not_fit_are_refused_and_change_nothing():
    d = ready_distiller()
    before = {k: v.clone() for k, v in d.assignments().items()}
    good = {k: v.clone() for k, v in before.items()}
    cases = [
        ({k: v for k, v in good.items() if k != "c5"}, "this distiller distils"),
        ({**good, "c2": good["c2"][:-1]}, "position c2: assignment"),
        ({**good, "c3": good["c3"].float()}, "position c3: assignment"),
        ({**good, "c4": torch.full_like(good["c4"], 64)}, r"outside \[0, 64\)"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            d.load_assignments(bad)
        assert all(torch.equal(d.assignments()[k], before[k]) for k in before)
