"""Sliding-window stitching, bilinear resize matrices and the chunked label prediction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_ovseg.inference import predict_labels, resize_bilinear, slide_logits, window_boxes

from conftest import tiny_model


def test_window_boxes_cover_image_mmseg_rule():
    boxes = window_boxes(448, 672, 224, 112)
    assert len(boxes) == 3 * 5 and boxes[0] == (0, 224, 0, 224) and boxes[-1] == (224, 448, 448, 672)
    covered = torch.zeros(448, 672)
    for t, b, l, r in boxes:
        assert b - t == 224 and r - l == 224
        covered[t:b, l:r] += 1
    assert covered.min() >= 1
    assert window_boxes(300, 230, 224, 112)[-1] == (76, 300, 6, 230)  # last window shifted back to the border
    assert window_boxes(100, 100, 224, 112) == [(0, 100, 0, 100)]
    with pytest.raises(ValueError, match="must be positive"):
        window_boxes(10, 10, 0, 5)


def test_crop_sized_image_equals_single_forward():
    model = tiny_model()
    image = torch.randn(1, 3, 32, 32)
    text = torch.randn(3, 16)

    def forward(x):
        return model(x, text_embeds=text).logits

    with torch.no_grad():
        stitched = slide_logits(forward, image, 8, crop_size=32, stride=16)
        single = F.interpolate(forward(image), size=(32, 32), mode="bilinear", align_corners=False)[0]
        whole = slide_logits(forward, image, 8, crop_size=None)
    torch.testing.assert_close(stitched, single)
    torch.testing.assert_close(whole, single)


def test_overlaps_average_exactly():
    # Each crop predicts a constant equal to its top-left corner code, so every pixel must hold the mean
    # of the codes of the windows that cover it.
    image = torch.zeros(1, 3, 24, 40)
    seen = []

    def forward(crops):
        codes = torch.tensor([float(len(seen) + i) for i in range(crops.shape[0])])
        seen.extend(codes.tolist())
        return codes.view(-1, 1, 1, 1).expand(-1, 2, 2, 2)

    got = slide_logits(forward, image, 8, crop_size=16, stride=8, batch_size=4)
    boxes = window_boxes(24, 40, 16, 8)
    total, count = torch.zeros(24, 40), torch.zeros(24, 40)
    for code, (t, b, l, r) in zip(seen, boxes, strict=True):
        total[t:b, l:r] += code
        count[t:b, l:r] += 1
    assert len(seen) == len(boxes) == 2 * 4
    torch.testing.assert_close(got[0], total / count)
    torch.testing.assert_close(got[1], total / count)


def test_center_padding_pads_both_sides_and_cuts_back():
    """ClearCLIP/SegEarth-OV: a crop that is not a patch multiple is padded with zeros, half on each side."""
    seen = []

    def forward(crops):
        seen.append(crops)
        rows, cols = crops.shape[2] // 8, crops.shape[3] // 8
        return torch.arange(rows * cols, dtype=torch.float32).view(1, 1, rows, cols).expand(crops.shape[0], 2, -1, -1)

    image = torch.randn(1, 3, 5, 13)
    got = slide_logits(forward, image, 8, crop_size=32, stride=16, patch_padding="center")
    assert seen[0].shape == (1, 3, 8, 16)  # 5 -> 8 rows (1 above, 2 below), 13 -> 16 cols (1 left, 2 right)
    torch.testing.assert_close(seen[0][0, :, 1:6, 1:14], image[0])
    assert seen[0][0, :, 0].abs().sum() == 0 and seen[0][0, :, :, -2:].abs().sum() == 0
    full = F.interpolate(torch.tensor([[[[0.0, 1.0]]]]), size=(8, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got[0], full[0, 0, 1:6, 1:14])
    assert slide_logits(forward, image, 8, crop_size=None, patch_padding="center").shape == (2, 5, 13)


def test_no_padding_drops_the_remainder_and_stretches():
    """SCLIP/NACLIP/SFP: the patch grid ignores what does not fill a patch; logits cover the whole crop."""
    seen = []

    def forward(crops):
        seen.append(crops.shape)
        rows, cols = crops.shape[2] // 8, crops.shape[3] // 8
        return torch.arange(rows * cols, dtype=torch.float32).view(1, 1, rows, cols).expand(crops.shape[0], 1, -1, -1)

    image = torch.randn(1, 3, 13, 20)
    got = slide_logits(forward, image, 8, crop_size=None, patch_padding="none")
    assert seen == [(1, 3, 8, 16)]
    expected = F.interpolate(torch.tensor([[[[0.0, 1.0]]]]), size=(13, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, expected[0])
    with pytest.raises(ValueError, match="a 5x20 image is smaller than one 8x8 patch"):
        slide_logits(forward, torch.zeros(1, 3, 5, 20), 8, crop_size=None, patch_padding="none")
    with pytest.raises(ValueError, match="unknown patch_padding 'edge'"):
        slide_logits(forward, image, 8, patch_padding="edge")


def test_stride_larger_than_crop_is_rejected_and_windows_always_cover():
    with pytest.raises(ValueError, match="stride 300 is larger than crop_size 224"):
        window_boxes(500, 500, 224, 300)
    for height, width, crop, stride in [(500, 333, 224, 224), (7, 1000, 224, 1), (225, 449, 224, 112)]:
        covered = torch.zeros(height, width)
        for t, b, l, r in window_boxes(height, width, crop, stride):
            covered[t:b, l:r] += 1
        assert covered.min() >= 1


@pytest.mark.parametrize(("n_in", "n_out"), [(7, 20), (20, 7), (5, 5), (1, 4), (14, 500)])
def test_resize_bilinear_equals_interpolate(n_in, n_out):
    x = torch.randn(3, n_in, n_in + 3)
    size = (n_out, n_out + 2)
    expected = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(resize_bilinear(x, size), expected, rtol=1e-5, atol=1e-5)
    rows = slice(n_out // 3, n_out // 3 + 2)
    torch.testing.assert_close(resize_bilinear(x, size, rows), expected[:, rows], rtol=1e-5, atol=1e-5)


def test_predict_labels_chunked_matches_direct_computation():
    logits = torch.randn(5, 6, 9) * 3
    synonyms = torch.tensor([[0, 0], [1, 2], [3, 4]])  # class 1 = rows 1,2; class 2 = rows 3,4
    full = F.interpolate(logits[None], size=(37, 50), mode="bilinear", align_corners=False)[0].softmax(0)
    merged = torch.stack([full[0], full[1:3].amax(0), full[3:5].amax(0)])
    best, labels = merged.max(0)
    labels = torch.where(best < 0.5, torch.full_like(labels, 3), labels)
    got = predict_labels(
        logits, synonyms, (37, 50), 0.5, background_index=3, return_probabilities=True, max_chunk_elements=5 * 50 * 4
    )
    assert torch.equal(got.label_map, labels.int())
    torch.testing.assert_close(got.probabilities, merged, rtol=1e-5, atol=1e-6)
    for index in range(4):
        assert got.pixel_count[index] == (labels == index).sum()
        torch.testing.assert_close(got.score_sum[index].float(), best[labels == index].sum(), rtol=1e-4, atol=1e-4)


def test_background_threshold_needs_index():
    with pytest.raises(ValueError, match="needs a background_index"):
        predict_labels(torch.zeros(2, 2, 2), torch.tensor([[0], [1]]), (2, 2), 0.5)
