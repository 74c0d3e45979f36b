"""Each reducer vs a naive per-channel, per-location loop."""
import pytest
import torch

import mgd

# (N, sc, tc, H, W): sc = tc, tc = 4 sc, shave (tc % sc != 0), batch 1, 1x1 maps
SHAPES = [(2, 3, 3, 2, 3), (2, 3, 12, 2, 2), (2, 3, 11, 3, 2), (1, 2, 8, 2, 3), (3, 4, 9, 1, 1)]


def make_case(n, sc, tc, h, w, seed=0):
    g = torch.Generator().manual_seed(seed + n + 10 * sc + 100 * tc)
    teacher = torch.randn(n, tc, h, w, generator=g, dtype=torch.float64)
    margin = -torch.rand(tc, generator=g, dtype=torch.float64)
    k = tc // sc
    guided = torch.randperm(tc, generator=g)[: k * sc]  # any valid tiled assignment
    return teacher, margin, guided, k


def matched_values(teacher, guided, sc, k, a, j, y, x):
    return [teacher[a, guided[i * sc + j], y, x].item() for i in range(k)]


def naive_reduce(teacher, margin, guided, sc, k, pick, pick_margin):
    n, _, h, w = teacher.shape
    out = torch.zeros(n, sc, h, w, dtype=teacher.dtype)
    for a in range(n):
        for j in range(sc):
            for y in range(h):
                for x in range(w):
                    out[a, j, y, x] = pick(matched_values(teacher, guided, sc, k, a, j, y, x))
    m = torch.tensor(
        [pick_margin([margin[guided[i * sc + j]].item() for i in range(k)]) for j in range(sc)], dtype=teacher.dtype
    )
    return out, m.view(1, sc, 1, 1)


def largest_magnitude(values):
    """The value of largest |v|; on an exact tie between +a and -a, +a."""
    best = values[0]
    for v in values[1:]:
        if abs(v) > abs(best) or (abs(v) == abs(best) and v > best):
            best = v
    return best


@pytest.mark.parametrize("shape", SHAPES)
def test_amp_matches_naive_loop(shape):
    teacher, margin, guided, k = make_case(*shape)
    sc = shape[1]
    t, m = mgd.reduce_teacher(teacher, margin, guided, sc, "amp")
    et, em = naive_reduce(teacher, margin, guided, sc, k, largest_magnitude, lambda v: sum(v) / len(v))
    torch.testing.assert_close(t, et, rtol=0, atol=0)
    torch.testing.assert_close(m, em)


@pytest.mark.parametrize("shape", SHAPES)
def test_sp_matches_naive_loop(shape):
    teacher, margin, guided, k = make_case(*shape)
    sc = shape[1]
    t, m = mgd.reduce_teacher(teacher, margin, guided, sc, "sp")
    et, em = naive_reduce(teacher, margin, guided, sc, k, max, max)
    torch.testing.assert_close(t, et, rtol=0, atol=0)
    torch.testing.assert_close(m, em, rtol=0, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_sm_matches_naive_loop(shape):
    n, sc, tc, h, w = shape
    teacher, margin, _, _ = make_case(*shape)
    guided = torch.randperm(tc, generator=torch.Generator().manual_seed(tc))[:sc]
    t, m = mgd.reduce_teacher(teacher, margin.view(1, tc, 1, 1), guided, sc, "sm")
    et, em = naive_reduce(teacher, margin, guided, sc, 1, lambda v: v[0], lambda v: v[0])
    torch.testing.assert_close(t, et, rtol=0, atol=0)
    torch.testing.assert_close(m, em, rtol=0, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_rd_only_picks_matched_values(shape):
    teacher, margin, guided, k = make_case(*shape)
    n, sc, tc, h, w = shape
    t, m = mgd.reduce_teacher(teacher, margin, guided, sc, "rd", generator=torch.Generator().manual_seed(1))
    assert t.shape == (n, sc, h, w) and m.shape == (1, sc, 1, 1)
    for a in range(n):
        for j in range(sc):
            for y in range(h):
                for x in range(w):
                    assert t[a, j, y, x].item() in matched_values(teacher, guided, sc, k, a, j, y, x)
    for j in range(sc):
        assert m[0, j, 0, 0].item() in [margin[guided[i * sc + j]].item() for i in range(k)]


def test_rd_varies_its_picks_and_is_reproducible_with_a_generator():
    n, sc, tc, h, w = 2, 4, 16, 8, 8
    teacher, margin, guided, k = make_case(n, sc, tc, h, w)
    t1, _ = mgd.reduce_teacher(teacher, margin, guided, sc, "rd", generator=torch.Generator().manual_seed(5))
    t2, _ = mgd.reduce_teacher(teacher, margin, guided, sc, "rd", generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(t1, t2, rtol=0, atol=0)
    copies = teacher[:, guided].view(n, k, sc, h, w)
    picked_copy = (copies == t1[:, None]).double().argmax(1)  # which copy each location took
    counts = torch.bincount(picked_copy.flatten(), minlength=k)
    assert (counts > 0).all()  # every copy gets picked somewhere
    margins_seen = set()
    for seed in range(20):
        _, m = mgd.reduce_teacher(teacher, margin, guided, sc, "rd", generator=torch.Generator().manual_seed(seed))
        margins_seen.add(tuple(m.flatten().tolist()))
    assert len(margins_seen) > 1


def test_amp_keeps_the_sign_of_the_largest_magnitude():
    teacher = torch.tensor([1.0, -3.0, 2.0, 0.5]).view(1, 4, 1, 1)
    t, m = mgd.reduce_teacher(teacher, torch.tensor([-1.0, -2.0, -3.0, -4.0]), torch.tensor([0, 1, 2, 3]), 1, "amp")
    assert t.item() == -3.0 and m.item() == pytest.approx(-2.5)
    t, m = mgd.reduce_teacher(teacher, torch.tensor([-1.0, -2.0, -3.0, -4.0]), torch.tensor([0, 1, 2, 3]), 1, "sp")
    assert t.item() == 2.0 and m.item() == -1.0


def test_amp_tie_between_opposite_signs_takes_the_positive_value():
    teacher = torch.tensor([-2.0, 2.0, 0.0, 0.0]).view(1, 4, 1, 1)
    t, _ = mgd.reduce_teacher(teacher, torch.zeros(4), torch.tensor([0, 2, 1, 3]), 2, "amp")
    assert t.flatten().tolist() == [2.0, 0.0]


def test_refusals():
    teacher, margin, guided, _ = make_case(1, 2, 8, 2, 2)
    with pytest.raises(ValueError, match="unknown reducer"):
        mgd.reduce_teacher(teacher, margin, guided, 2, "avg")
    with pytest.raises(ValueError, match="'sm'"):
        mgd.reduce_teacher(teacher, margin, guided, 2, "sm")
    with pytest.raises(ValueError, match="does not fit"):
        mgd.reduce_teacher(teacher, margin, guided[:7], 2, "amp")
    with pytest.raises(ValueError, match="margin"):
        mgd.reduce_teacher(teacher, margin[:5], guided, 2, "amp")


@pytest.mark.parametrize("method", ["amp", "sp", "sm"])
def test_non_contiguous_teacher_gives_the_same_result(method):
    teacher, margin, guided, _ = make_case(2, 3, 12, 4, 5)
    if method == "sm":
        guided = guided[:3]
    channels_last = teacher.to(memory_format=torch.channels_last)
    assert not channels_last.is_contiguous()
    expected = mgd.reduce_teacher(teacher, margin, guided, 3, method)
    got = mgd.reduce_teacher(channels_last, margin, guided, 3, method)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
