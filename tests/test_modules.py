"""Each pure function of hf_ovseg.modules against a naive loop implementation of its formula."""

from __future__ import annotations

import pytest
import torch

from hf_ovseg import modules
from hf_ovseg.configuration_ovseg import OVSegConfig

import reference as ref

GRID = (3, 4)
N = GRID[0] * GRID[1]


def qkv(seed: int = 0, batch: int = 2, heads: int = 3, dim: int = 5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, 1 + N, dim, generator=g) for _ in range(3)]


def test_outlier_scores_matches_loop():
    q, k, _ = qkv()
    probs = modules.vanilla_attention(q, k, 0.5)
    torch.testing.assert_close(modules.outlier_scores(probs).double(), ref.outlier_scores(probs), rtol=1e-5, atol=1e-7)


def test_outlier_scores_flags_token_cls_attends_more_than_itself():
    probs = torch.full((1, 1, 4, 4), 0.25)
    probs[0, 0, 0] = torch.tensor([0.1, 0.8, 0.05, 0.05])  # CLS attends to patch 1
    probs[0, 0, 1] = torch.tensor([0.3, 0.1, 0.3, 0.3])  # patch 1 barely attends to itself
    scores = modules.outlier_scores(probs)
    assert scores.argmax().item() == 0
    assert scores[0, 0].item() == pytest.approx(0.8 / (0.1 + 1e-6))


@pytest.mark.parametrize("clamp", [False, True])
@pytest.mark.parametrize("grid", [(3, 4), (1, 5), (4, 1), (2, 2)])
@pytest.mark.parametrize("top_k", [1, 3, 7])
def test_suppress_outliers_matches_loop(grid, top_k, clamp):
    g = torch.Generator().manual_seed(top_k)
    n = grid[0] * grid[1]
    patches = torch.randn(2, n, 6, generator=g)
    scores = torch.rand(2, n, generator=g)
    got = modules.suppress_outliers(patches, scores, grid, top_k, tau=0.3, clamp=clamp)
    torch.testing.assert_close(
        got.double(), ref.suppress_outliers(patches, scores, grid, top_k, 0.3, clamp), rtol=1e-5, atol=1e-6
    )


def test_suppress_outliers_replaces_with_neighbour_average_and_decontaminates():
    # 1x3 grid, middle token the only outlier: it becomes a softmax(1 - cos)-weighted mix of its two
    # neighbours, and each neighbour loses tau * cos * x_outlier.
    patches = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]])
    scores = torch.tensor([[0.0, 5.0, 1.0]])
    got = modules.suppress_outliers(patches, scores, (1, 3), top_k=1, tau=0.5)
    c = 2**-0.5  # cos between [1,1] and either neighbour
    expected_mid = 0.5 * patches[0, 0] + 0.5 * patches[0, 2]  # equal cosines -> equal weights
    torch.testing.assert_close(got[0, 1], expected_mid)
    torch.testing.assert_close(got[0, 0], patches[0, 0] - 0.5 * c * patches[0, 1])
    torch.testing.assert_close(got[0, 2], patches[0, 2] - 0.5 * c * patches[0, 1])


def test_decontamination_follows_the_seed_text_and_clamps_only_as_the_ablation():
    """The seed text's x_j - tau cos(x_i, x_j) x_i also acts for an anti-aligned outlier (cos = -1: x_j gains
    tau x_i's opposite); the code base's clamp(tau cos, 0, 1) (decontamination_clamp=True) leaves x_j alone."""
    patches = torch.tensor([[[-1.0, 0.0], [1.0, 0.0]]])
    scores = torch.tensor([[0.0, 1.0]])
    text = modules.suppress_outliers(patches, scores, (1, 2), top_k=1, tau=0.5)
    torch.testing.assert_close(text[0, 0], patches[0, 0] + 0.5 * patches[0, 1])  # -(0.5 * -1) * x_i
    clamped = modules.suppress_outliers(patches, scores, (1, 2), top_k=1, tau=0.5, clamp=True)
    torch.testing.assert_close(clamped[0, 0], patches[0, 0])  # cos = -1: clamped to 0
    torch.testing.assert_close(clamped[0, 1], patches[0, 0])  # single neighbour gets weight 1
    assert OVSegConfig(method="seed").decontamination_clamp is False


def test_suppress_outliers_top_k_zero_and_clamped():
    patches = torch.randn(1, 4, 3)
    scores = torch.rand(1, 4)
    assert torch.equal(modules.suppress_outliers(patches, scores, (2, 2), 0, 0.1), patches)
    torch.testing.assert_close(
        modules.suppress_outliers(patches, scores, (2, 2), 100, 0.1),
        modules.suppress_outliers(patches, scores, (2, 2), 4, 0.1),
    )


def test_suppress_outliers_single_patch_grid_is_kept():
    patches = torch.randn(1, 1, 3)
    assert torch.equal(modules.suppress_outliers(patches, torch.ones(1, 1), (1, 1), 1, 0.1), patches)


def test_suppress_outliers_rejects_wrong_grid():
    with pytest.raises(ValueError, match="does not hold 5 patches"):
        modules.suppress_outliers(torch.randn(1, 5, 3), torch.rand(1, 5), (2, 2), 1, 0.1)


def test_similarity_map_matches_loop():
    mid = torch.randn(2, N, 7)
    torch.testing.assert_close(
        modules.similarity_map(mid, 0.5).double(), ref.similarity_map(mid, 0.5), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("with_similarity", [False, True])
def test_gated_attention_matches_loop(with_similarity):
    q, k, _ = qkv(1)
    sim = modules.similarity_map(torch.randn(2, N, 7), 0.7) if with_similarity else None
    got = modules.gated_attention(q, k, 0.4, sim, similarity_weight=1.5)
    torch.testing.assert_close(got.double(), ref.gated(q, k, 0.4, sim, 1.5), rtol=1e-5, atol=1e-6)


def test_gated_similarity_only_touches_patch_block():
    q, k, _ = qkv(2)
    sim = torch.randn(2, N, N)
    plain_logits = torch.sigmoid(0.4 * q @ q.transpose(-1, -2)) * (0.4 * k @ k.transpose(-1, -2))
    got = modules.gated_attention(q, k, 0.4, sim, 1.0)
    # CLS row unchanged by S: same softmax as without similarity
    torch.testing.assert_close(got[:, :, 0], plain_logits.softmax(-1)[:, :, 0])


@pytest.mark.parametrize("mode", ["vanilla", "maskclip", "sclip", "clearclip", "naclip", "segearth", "gated"])
def test_attention_modes_match_loop(mode):
    q, k, v = qkv(3)
    sim = modules.similarity_map(torch.randn(2, N, 7)) if mode == "gated" else None
    got = modules.attention_probs(mode, q, k, v, 0.45, GRID, sim, gaussian_std=1.7)
    expected = ref.attention_mode(mode, q, k, v, 0.45, GRID, sim, std=1.7)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls_scale", [1.0, 1.5])
def test_sfp_outliers_match_loop(cls_scale):
    q, k, _ = qkv(5, heads=2)
    probs = modules.vanilla_attention(q * 3, k * 3, 0.45)  # sharp attention: some CLS > self candidates
    indices, valid = modules.sfp_outliers(probs, top_k=4, cls_scale=cls_scale)
    expected = ref.sfp_outliers(probs, 4, cls_scale)
    for b in range(2):
        assert indices[b][valid[b]].tolist() == expected[b]
    assert any(len(e) for e in expected)


def test_sfp_cls_scale_adds_candidates():
    # patch 1: CLS attends 0.3, itself 0.4: an outlier only once the CLS row is scaled by 1.5 (SFP's 5 * 0.3)
    probs = torch.tensor([[[[0.2, 0.3, 0.5], [0.3, 0.4, 0.3], [0.1, 0.1, 0.8]]]])
    assert not modules.sfp_outliers(probs, top_k=2, cls_scale=1.0)[1].any()
    indices, valid = modules.sfp_outliers(probs, top_k=2, cls_scale=1.5)
    assert indices[valid].tolist() == [0]  # patch index 0 = token 1


def test_sfp_grid_positions_reproduce_the_row_count_split():
    """SFP splits a flat index i into (i // rows, i % rows): the identity on a square grid, elsewhere a
    different position, or none when it falls outside the grid (SFP's code raises there)."""
    indices, valid = torch.tensor([[0, 5, 7, 11]]), torch.ones(1, 4, dtype=torch.bool)
    positions, ok = modules.sfp_grid_positions(indices, valid, (4, 4))
    assert positions.tolist() == [[0, 5, 7, 11]] and ok.all()
    positions, ok = modules.sfp_grid_positions(indices, valid, (3, 4))  # 3 rows, 4 columns
    # 5 -> (1, 2) -> 6; 7 -> (2, 1) -> 9; 11 -> (3, 2): row 3 is outside the grid
    assert positions.tolist() == [[0, 6, 9, 0]] and ok.tolist() == [[True, True, True, False]]


def test_neighbour_mean_matches_loop_and_masks_other_outliers():
    g = torch.Generator().manual_seed(0)
    patches = torch.randn(2, N, 5, generator=g)
    indices = torch.tensor([[0, 1, 5], [11, 3, 3]])
    valid = torch.tensor([[True, True, True], [True, True, False]])  # an invalid slot changes nothing
    got = modules.replace_with_neighbour_mean(patches, indices, valid, GRID)
    expected = ref.neighbour_mean(patches, [[0, 1, 5], [11, 3]], GRID)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    # patch 0's neighbours are 1, 4, 5; 1 and 5 are outliers, so it takes patch 4's value exactly
    torch.testing.assert_close(got[0, 0], patches[0, 4])


def test_sfp_attention_matches_loop():
    q, k, _ = qkv(6)
    feats = torch.randn(2, N, 7)
    sim = modules.thresholded_similarity(feats, 0.4)
    expected_sim = torch.nn.functional.cosine_similarity(feats[:, :, None], feats[:, None], dim=-1)
    torch.testing.assert_close(sim, expected_sim.masked_fill(expected_sim < 0.4, 0.0), rtol=1e-5, atol=1e-6)
    probs = modules.sfp_attention(q[:, :, 1:], k[:, :, 1:], sim, 0.45)
    expected = ref.sfp_attention(q[:, :, 1:], k[:, :, 1:], sim, 0.45)
    torch.testing.assert_close(probs.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3, N))


def test_similarity_aggregate_is_row_normalised_mix():
    feats, sim = torch.randn(2, N, 5), torch.rand(2, N, N)
    got = modules.similarity_aggregate(feats, sim)
    weights = sim / (sim.sum(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(got[1, 3], (weights[1, 3, :, None] * feats[1]).sum(0))


def test_gaussian_prior_matches_loop():
    torch.testing.assert_close(modules.gaussian_prior(GRID).double(), ref.gaussian(GRID)[0])


def test_attention_probs_errors():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="unknown attention mode 'bogus'; valid modes: gated, vanilla"):
        modules.attention_probs("bogus", q, k, v, 0.5, GRID)
    with pytest.raises(ValueError, match="only used by attention_mode 'gated'"):
        modules.attention_probs("clearclip", q, k, v, 0.5, GRID, similarity=torch.zeros(2, N, N))


@pytest.mark.parametrize("normalize_cls", [False, True])
@pytest.mark.parametrize("mode", ["similarity", "uniform"])
def test_global_debias_matches_loop(mode, normalize_cls):
    patches, cls = torch.randn(2, N, 8), torch.randn(2, 8) * 3
    got = modules.global_debias(patches, cls, 0.2, mode, normalize_cls)
    expected = ref.global_debias(patches, cls, 0.2, mode, normalize_cls)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def test_global_debias_off_and_errors():
    patches, cls = torch.randn(1, 3, 4), torch.randn(1, 4)
    assert torch.equal(modules.global_debias(patches, cls, 0.0), patches)
    with pytest.raises(ValueError, match="unknown global_debias_mode 'mean'; valid modes: similarity, uniform"):
        modules.global_debias(patches, cls, 0.2, "mean")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_modules_run_in_half_precision(dtype):
    q, k, v = (t.to(dtype) for t in qkv(4))
    probs = modules.gated_attention(q, k, 0.4, modules.similarity_map(torch.randn(2, N, 7, dtype=dtype)))
    assert probs.dtype == dtype
    torch.testing.assert_close(probs.float().sum(-1), torch.ones(2, 3, 1 + N), atol=2e-2, rtol=0)
    patches = torch.randn(2, N, 6, dtype=dtype)
    out = modules.suppress_outliers(patches, modules.outlier_scores(probs), GRID, 3, 0.1)
    assert out.dtype == dtype and torch.isfinite(out.float()).all()
