"""The anchors' segmentors (slide or whole-image inference and post-processing), re-implemented from their
official files for the end-to-end parity tests. Each takes a normalised image [1, 3, h, w] (from
``common.preprocess``), the original size, a ``feature`` function (crop -> projected patch features
[1, N, P], or ``(cls, features)`` for SegEarth-OV) and the query features, and returns the label map [H, W]
and the class probabilities [C, H, W] it was taken from."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import merge_synonyms


def _patch_logits(features: torch.Tensor, query: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    features = features / features.norm(dim=-1, keepdim=True)
    logits = features @ query.T
    return logits.permute(0, 2, 1).reshape(-1, logits.shape[-1], rows, cols)


def _windows(h_img: int, w_img: int, crop: int, stride: int):
    """mmseg slide windows (SCLIP clip_segmentor.py:96-108)."""
    h_grids = max(h_img - crop + stride - 1, 0) // stride + 1
    w_grids = max(w_img - crop + stride - 1, 0) // stride + 1
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * stride, w_idx * stride
            y2, x2 = min(y1 + crop, h_img), min(x1 + crop, w_img)
            yield max(y2 - crop, 0), y2, max(x2 - crop, 0), x2


def _slide_average(img, forward_feature, num_queries: int, crop: int, stride: int) -> torch.Tensor:
    """mmseg's slide loop as SCLIP (clip_segmentor.py:96-117), NACLIP (naclip.py:87-107) and ClearCLIP
    (clearclip_segmentor.py:154-188) write it:
    each window's logits (already the window's size) are padded into place and the sums divided by the counts."""
    _, _, h_img, w_img = img.shape
    preds = img.new_zeros((1, num_queries, h_img, w_img))
    count = img.new_zeros((1, 1, h_img, w_img))
    for y1, y2, x1, x2 in _windows(h_img, w_img, crop, stride):
        crop_logit = forward_feature(img[:, :, y1:y2, x1:x2])
        preds += F.pad(crop_logit, (x1, w_img - x2, y1, h_img - y2))
        count[:, :, y1:y2, x1:x2] += 1
    return preds / count


def sclip_predict(
    img, ori_shape, feature, query, query_idx, patch, logit_scale=40, prob_thd=0.0, area_thd=None,
    slide_crop=224, slide_stride=112,
):  # fmt: skip
    """wangf3014/SCLIP@b56bd30:clip_segmentor.py:59-179 (also Kimsure/SFP@2804f5b:SFP_ICCV/SFP_segmentor.py:69-190,
    the same lines): crops run as they are (the patch grid drops the remainder), logits stretched over the
    crop, averaged, resized to the original size, ``logit_scale``, softmax, synonyms, ``area_thd``, ``prob_thd``."""

    def forward_feature(crop, logit_size=None):
        rows, cols = crop.shape[-2] // patch, crop.shape[-1] // patch
        logits = _patch_logits(feature(crop), query, rows, cols)
        return F.interpolate(logits, size=crop.shape[-2:] if logit_size is None else logit_size, mode="bilinear")

    if slide_crop > 0:
        seg_logits = _slide_average(img, forward_feature, query.shape[0], slide_crop, slide_stride)
        seg_logits = F.interpolate(seg_logits, size=ori_shape, mode="bilinear")
    else:
        seg_logits = forward_feature(img, ori_shape)
    seg_logits = (seg_logits[0] * logit_scale).softmax(0)
    seg_logits = merge_synonyms(seg_logits, query_idx)
    num_cls = seg_logits.shape[0]
    if area_thd is not None:
        predictions = F.one_hot(seg_logits.argmax(0), num_cls).to(seg_logits.dtype)
        area_pred = predictions[:, :, 1:].sum((0, 1), keepdim=True)
        area_pred = (area_pred > area_thd * area_pred.sum()).to(seg_logits.dtype)
        seg_logits[1:] *= area_pred.transpose(0, -1)
    seg_pred = seg_logits.argmax(0, keepdim=True)
    seg_pred[seg_logits.max(0, keepdim=True)[0] < prob_thd] = 0
    return seg_pred[0], seg_logits


def naclip_predict(
    img, ori_shape, feature, query, query_idx, patch, logit_scale=40, prob_thd=0.0, slide_crop=224, slide_stride=112,
    pamr_steps=10, pamr_stride=(8, 16),
):  # fmt: skip
    """sinahmr/NACLIP@0cac3a6:naclip.py:54-160: like SCLIP's slide (no padding, logits stretched), then the
    resize to the original size, PAMR on the resized normalised image, ``logit_scale``, softmax, synonyms,
    ``prob_thd``."""

    def forward_feature(crop):
        rows, cols = crop.shape[-2] // patch, crop.shape[-1] // patch
        logits = _patch_logits(feature(crop), query, rows, cols)
        return F.interpolate(logits, size=crop.shape[-2:], mode="bilinear", align_corners=False)

    if slide_crop > 0:
        seg_logits = _slide_average(img, forward_feature, query.shape[0], slide_crop, slide_stride)
    else:
        seg_logits = forward_feature(img)
    seg_logits = F.interpolate(seg_logits, size=ori_shape, mode="bilinear", align_corners=False)
    if pamr_steps > 0:
        guide = F.interpolate(img, size=ori_shape, mode="bilinear", align_corners=False)
        seg_logits = PAMR(pamr_steps, pamr_stride)(guide, seg_logits)
    seg_probs = torch.softmax(seg_logits[0] * logit_scale, dim=0)
    seg_probs = merge_synonyms(seg_probs, query_idx)
    seg_pred = seg_probs.argmax(0, keepdim=True)
    seg_pred[seg_probs.max(0, keepdim=True)[0] < prob_thd] = 0
    seg_probs /= seg_probs.sum(0, keepdim=True)  # naclip.py:153, after the labels are chosen
    return seg_pred[0], seg_probs


def clearclip_predict(
    img, ori_shape, feature, query, query_idx, patch, logit_scale=50, prob_thd=0.0, slide_crop=448, slide_stride=224,
    cls_token_lambda=0.0, bg_idx=0, upsampler=None,
):  # fmt: skip
    """mc-lan/ClearCLIP@ad68a40:clearclip_segmentor.py:113-241 and likyoo/SegEarth-OV@3e22a96:
    segearth_segmentor.py:162-325 (which adds ``cls_token_lambda``, ``bg_idx`` and SimFeatUp): crops padded on
    both sides to a patch multiple, logits cut back, averaged, resized, ``logit_scale``, softmax, synonyms,
    ``prob_thd`` -> ``bg_idx``."""

    def forward_feature(crop):
        out = feature(crop)
        cls, features = out if isinstance(out, tuple) else (None, out)
        rows, cols = crop.shape[-2] // patch, crop.shape[-1] // patch
        if upsampler is not None:
            grid = features.permute(0, 2, 1).reshape(1, features.shape[-1], rows, cols)
            features = upsampler(grid, crop).reshape(1, features.shape[-1], -1).permute(0, 2, 1)
            rows, cols = crop.shape[-2], crop.shape[-1]
        features = features / features.norm(dim=-1, keepdim=True)
        logits = features @ query.T
        if cls_token_lambda != 0:
            cls = cls / cls.norm(dim=-1, keepdim=True)
            logits = logits + (cls @ query.T)[:, None, :] * cls_token_lambda
        logits = logits.permute(0, 2, 1).reshape(-1, logits.shape[-1], rows, cols)
        return F.interpolate(logits, size=crop.shape[-2:], mode="bilinear")

    def padded_forward(crop):
        height, width = crop.shape[2:]
        l = r = t = b = 0
        if width % patch:
            lr = patch - width % patch
            l, r = lr // 2, lr - lr // 2
        if height % patch:
            tb = patch - height % patch
            t, b = tb // 2, tb - tb // 2
        if l or r or t or b:
            crop = F.pad(crop, (l, r, t, b))
        crop_logit = forward_feature(crop)
        if l or r or t or b:
            crop_logit = crop_logit[:, :, t : t + height, l : l + width]
        return crop_logit

    seg_logits = _slide_average(img, padded_forward, query.shape[0], slide_crop, slide_stride)
    seg_logits = F.interpolate(seg_logits, size=ori_shape, mode="bilinear")
    seg_logits = (seg_logits[0] * logit_scale).softmax(0)
    seg_logits = merge_synonyms(seg_logits, query_idx)
    seg_pred = seg_logits.argmax(0, keepdim=True)
    seg_pred[seg_logits.max(0, keepdim=True)[0] < prob_thd] = bg_idx
    return seg_pred[0], seg_logits


# ---- PAMR, from sinahmr/NACLIP@0cac3a6:pamr.py (TU Darmstadt, Apache-2.0) -------------------------


class _LocalAffinity(nn.Module):
    def __init__(self, dilations, kernel):
        super().__init__()
        self.dilations = dilations
        self.register_buffer("kernel", kernel)

    def forward(self, x):
        b, k, h, w = x.size()
        x = x.view(b * k, 1, h, w)
        affs = [F.conv2d(F.pad(x, [d] * 4, mode="replicate"), self.kernel, dilation=d) for d in self.dilations]
        return torch.cat(affs, 1).view(b, k, -1, h, w)


def _shift_kernel(with_centre: bool, centre_one: bool) -> torch.Tensor:
    positions = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]
    if with_centre:
        positions = positions[:4] + [(1, 1)] + positions[4:]
    weight = torch.zeros(len(positions), 1, 3, 3)
    for i, (r, c) in enumerate(positions):
        if centre_one:  # LocalAffinity: centre 1, neighbour -1
            weight[i, 0, 1, 1] = 1
            weight[i, 0, r, c] = -1
        else:
            weight[i, 0, r, c] = 1
    return weight


class PAMR(nn.Module):
    """pamr.py ``PAMR``: ``LocalAffinityAbs`` (|x - x_p|), ``LocalStDev`` (std over the 3x3 windows),
    ``LocalAffinityCopy`` (the neighbours' mask values)."""

    def __init__(self, num_iter=1, dilations=(1,)):
        super().__init__()
        self.num_iter = num_iter
        self.aff_x = _LocalAffinity(dilations, _shift_kernel(False, True))
        self.aff_m = _LocalAffinity(dilations, _shift_kernel(False, False))
        self.aff_std = _LocalAffinity(dilations, _shift_kernel(True, False))

    def forward(self, x, mask):
        mask = F.interpolate(mask, size=x.size()[-2:], mode="bilinear", align_corners=True)
        x_std = self.aff_std(x).std(2, keepdim=True)
        x = -torch.abs(self.aff_x(x)) / (1e-8 + 0.1 * x_std)
        x = F.softmax(x.mean(1, keepdim=True), 2)
        for _ in range(self.num_iter):
            mask = (self.aff_m(mask) * x).sum(2)
        return mask
