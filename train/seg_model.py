"""Model building for the segmentation trainers (`train segmentation`, `train clicks`) and the study.

``build_model`` turns the trainers' arguments into a ``SegNet`` (optionally started from a weights folder),
``seg_loss`` is their Dice + BCE loss, ``encoder_freezer`` freezes the encoder for the first epochs.
"""

from __future__ import annotations

import torch


def seg_loss():
    """Dice + BCE on logits, as ``f(logits, y, x)`` (the loop's loss signature; x unused)."""
    import segmentation_models_pytorch as smp

    dice = smp.losses.DiceLoss(mode="binary", from_logits=True)
    bce = torch.nn.BCEWithLogitsLoss()

    def f(logits, y, x):
        return dice(logits, y) + bce(logits, y)
    return f


def build_model(args, in_channels: int, task: str):
    """A ``SegNet`` from the trainers' arguments (``segmentation.add_args``); with ``--init-from``, started from
    that weights folder (the same network, or every tensor the two share)."""
    from bt_demo.models.nets import SegNet

    dec = [int(c) for c in args.decoder_channels.split(",")]
    model = SegNet(arch=args.arch, encoder_name=args.encoder, decoder_channels=dec, encoder_depth=len(dec),
                   in_channels=in_channels, task=task, input_size=args.input_size,
                   encoder_weights="imagenet" if args.pretrained and not args.init_from else None,
                   decoder_attention_type=args.decoder_attention, input_prep=args.input_prep)
    if args.init_from:
        src = SegNet.from_pretrained(args.init_from, strict=True).float().train()
        if src.task != task:
            raise SystemExit(f"--init-from {args.init_from} is a {src.task!r} model, not {task!r}")
        theirs, mine = src.state_dict(), model.state_dict()
        if theirs.keys() == mine.keys() and all(theirs[k].shape == mine[k].shape for k in mine):
            for prm in src.parameters():  # the same network: fine-tune it with its own settings
                prm.requires_grad_(True)
            return src
        # another decoder (e.g. scSE attention added): start from every tensor the two networks share
        copied = copy_matching_tensors(src, model)
        if copied < 0.8 * len(theirs):
            raise SystemExit(f"--init-from {args.init_from}: only {copied} of its {len(theirs)} tensors fit "
                             f"this network; pick weights with the same encoder")
        print(f"--init-from {args.init_from}: {copied} of {len(theirs)} tensors copied, "
              f"{len(mine) - copied} new", flush=True)
    return model


def copy_matching_tensors(src, dst) -> int:
    """Copy every tensor of ``src`` whose name and shape ``dst`` shares; return how many."""
    theirs = src.state_dict()
    mine = dst.state_dict()
    fit = {k: v for k, v in theirs.items() if k in mine and mine[k].shape == v.shape}
    dst.load_state_dict(fit, strict=False)
    return len(fit)


def encoder_freezer(model):
    """``f(frozen)``: sets ``requires_grad`` of the encoder's parameters (the loop's freeze hook)."""
    def f(frozen: bool):
        for p in model.net.encoder.parameters():
            p.requires_grad = not frozen
    return f
