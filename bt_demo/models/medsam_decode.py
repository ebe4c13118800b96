"""LiteMedSAM's click step: prompts in the 256 frame -> low-res logits, batched (issue 22, part 3).

One function, ``decode``, used by ``MedSamEngine.predict`` (the app) and by ``python -m train medsam-clicks``
(training and validation), so the decoder is trained through exactly the step the app runs.

Frames: the model sees the slice resized (longest side to 256) and zero-padded at the bottom/right to
256 x 256; points and boxes are (x, y) in that frame (the prompt encoder adds SAM's +0.5 pixel-centre shift
itself). Masks come back as 256 x 256 logits in the same padded frame (the image is rows < new_h and
columns < new_w). Nothing here imports torch at import time.
"""

from __future__ import annotations

from typing import Any


def decode(prompt_encoder, mask_decoder, embeddings, points=None, labels=None, boxes=None, mask_prompt=None,
           multimask: bool = False) -> tuple[Any, Any]:
    """Run SAM's prompt encoder and mask decoder on a batch; returns (low_logits, iou).

    prompt_encoder, mask_decoder: LiteMedSAM's (``medsam.load_model().prompt_encoder`` or a fine-tuned copy).
    embeddings: torch float (B, 256, 64, 64), the image encoder's output (float16 is cast to float32).
    points: float (B, N, 2) as (x, y) in the padded 256 frame, or None; labels: (B, N) 1 tumour, 0 not tumour,
    -1 padding (a sample with fewer clicks than N is padded with label -1 at any position, as SAM does).
    boxes: float (B, 4) or (B, 1, 4) as (x0, y0, x1, y1) in the 256 frame, or None. Points and boxes apply to
    the whole batch: batch samples with and without a box separately. At least one of points / boxes.
    mask_prompt: float (B, 1, 256, 256) logits of a previous answer (SAM's mask prompt), or None.
    multimask: SAM's three candidates (K = 3) instead of the single mask (K = 1).

    Returns low_logits float32 (B, K, 256, 256) and iou float32 (B, K) (the decoder's predicted IoU).
    Gradients flow when called outside ``torch.no_grad`` (training); the caller chooses the mode.
    """
    import torch

    if points is None and boxes is None:
        raise ValueError("decode needs points or boxes")
    emb = embeddings.float()
    dev = emb.device
    pt = None
    if points is not None:
        if labels is None:
            raise ValueError("points need labels")
        pts = torch.as_tensor(points, dtype=torch.float32, device=dev)
        labs = torch.as_tensor(labels, dtype=torch.float32, device=dev)
        if pts.ndim != 3 or pts.shape[-1] != 2 or labs.shape != pts.shape[:2]:
            raise ValueError(f"points must be (B, N, 2) and labels (B, N), got {tuple(pts.shape)} and "
                             f"{tuple(labs.shape)}")
        pt = (pts, labs)
    bx = None
    if boxes is not None:
        bx = torch.as_tensor(boxes, dtype=torch.float32, device=dev)
        if bx.ndim == 2:
            bx = bx[:, None, :]
    mp = None if mask_prompt is None else torch.as_tensor(mask_prompt, dtype=torch.float32, device=dev)
    sparse, dense = prompt_encoder(points=pt, boxes=bx, masks=mp)
    low, iou = mask_decoder(image_embeddings=emb, image_pe=prompt_encoder.get_dense_pe(),
                            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                            multimask_output=bool(multimask))
    return low.float(), iou.float()


def pad_points(point_lists, label_lists):
    """Lists of per-sample (x, y) clicks and labels -> float32 arrays (B, N, 2), (B, N), padded with label -1.

    N is the longest list (at least 1); padding points are (0, 0) with label -1 (SAM's "not a point").
    """
    import numpy as np

    n = max([len(p) for p in point_lists] + [1])
    pts = np.zeros((len(point_lists), n, 2), np.float32)
    labs = -np.ones((len(point_lists), n), np.float32)
    for i, (p, lab) in enumerate(zip(point_lists, label_lists, strict=True)):
        if len(p):
            pts[i, :len(p)] = np.asarray(p, np.float32).reshape(-1, 2)
            labs[i, :len(p)] = np.asarray(lab, np.float32)
    return pts, labs


__all__ = ["decode", "pad_points"]
