"""The torch modules behind our own engines, in Hugging Face folder format.

Each class mixes in ``huggingface_hub.PyTorchModelHubMixin``: ``save_pretrained``
writes ``config.json`` (the ``__init__`` arguments, so input size and
normalisation travel with the weights) and ``model.safetensors``;
``from_pretrained`` takes a local folder or a hub id. ``train/`` writes exactly
what the app reads.
"""

from __future__ import annotations

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

DEFAULT_SEG_ENCODER = "tu-mobilenetv3_large_100"
DEFAULT_DECODER = (128, 64, 48, 32, 16)


def standardize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-image z-score over (C, H, W) of the image channel only.

    Models see the same statistics whatever the source's intensity units, so
    a DICOM, a NIfTI slice and an 8-bit PNG land in the same range.
    x: float (B, C, H, W); only channel 0 (the image) is standardised.
    """
    img = x[:, :1]
    mean = img.mean(dim=(1, 2, 3), keepdim=True)
    std = img.std(dim=(1, 2, 3), keepdim=True).clamp_min(eps)
    return torch.cat([(img - mean) / std, x[:, 1:]], dim=1)


class SegNet(nn.Module, PyTorchModelHubMixin, library_name="bt_demo", tags=["medical-imaging", "segmentation"]):
    """segmentation-models-pytorch network plus the inference settings it was trained with.

    ``task``: "segmentation" (input: the image, 1 channel) or "clicks" (input:
    image, positive-click map, negative-click map, previous mask: 4 channels).
    ``forward`` takes raw images in [0, 1] (B, C, H, W), H and W multiples of
    32, and returns logits (B, 1, H, W); standardisation happens inside so
    training and inference cannot drift apart.
    """

    def __init__(
        self,
        arch: str = "Unet",
        encoder_name: str = DEFAULT_SEG_ENCODER,
        encoder_depth: int = 5,
        decoder_channels: list[int] | tuple[int, ...] = DEFAULT_DECODER,
        in_channels: int = 1,
        task: str = "segmentation",
        input_size: int = 256,
        threshold: float = 0.5,
        min_component_px: int = 0,
        click_radius: float = 5.0,
        encoder_weights: str | None = None,
        decoder_attention_type: str | None = None,
        input_prep: str = "raw",
        zoom_in: bool = False,
    ):
        super().__init__()
        import segmentation_models_pytorch as smp

        from bt_demo.models.input_prep import PREPS

        if task not in ("segmentation", "clicks"):
            raise ValueError(f"task must be 'segmentation' or 'clicks', got {task!r}")
        self.task = task
        self.input_size = int(input_size)
        self.threshold = float(threshold)
        self.min_component_px = int(min_component_px)
        self.click_radius = float(click_radius)
        self.in_channels = int(in_channels)
        if input_prep not in PREPS:
            raise ValueError(f"input_prep must be one of {PREPS}, got {input_prep!r}")
        self.input_prep = input_prep  # numpy mapping applied by the engines before forward (input_prep.py)
        self.zoom_in = bool(zoom_in)  # click models: crop around the mask after the first click (click_step.py)
        extra = {"decoder_attention_type": decoder_attention_type} if decoder_attention_type else {}
        self.net = smp.create_model(
            arch,
            encoder_name=encoder_name,
            encoder_depth=encoder_depth,
            encoder_weights=encoder_weights,
            decoder_channels=list(decoder_channels),
            in_channels=in_channels,
            classes=1,
            **extra,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(standardize(x))


class PlainCNN(nn.Module):
    """A from-scratch CNN with timm's ``forward_features`` / ``forward_head`` face.

    ``style="small"``: one 3x3 conv + BN + ReLU per stage (seed 000's small CNN);
    ``style="vgg"``: two 3x3 convs per stage, VGG-style (seed 003). Stages halve
    the resolution; the head is global average pooling, dropout and a linear layer.
    """

    def __init__(self, style: str, in_chans: int, num_classes: int, drop_rate: float):
        super().__init__()
        widths = {"small": (16, 32, 64, 128, 192), "vgg": (16, 32, 64, 128, 256)}[style]
        convs_per_stage = 1 if style == "small" else 2
        layers: list[nn.Module] = []
        c = in_chans
        for w in widths:
            for _ in range(convs_per_stage):
                layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c = w
            layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers[:-1])  # the last stage keeps its resolution for Grad-CAM
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(c, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(feats.mean(dim=(2, 3))))


# backbones of our own (the rest are timm names)
PLAIN_BACKBONES = {"small_cnn": "small", "vgg_style": "vgg"}


def make_backbone(name: str, num_classes: int, drop_rate: float = 0.2, pretrained: bool = False) -> nn.Module:
    """A one-channel backbone with ``forward_features``/``forward_head``: ours or any timm name."""
    if name in PLAIN_BACKBONES:
        if pretrained:
            raise ValueError(f"{name!r} is our own from-scratch CNN; it has no pretrained weights (choose a timm name)")
        return PlainCNN(PLAIN_BACKBONES[name], 1, num_classes, drop_rate)
    import timm

    return timm.create_model(name, pretrained=pretrained, in_chans=1, num_classes=num_classes, drop_rate=drop_rate)


class ClassifierNet(nn.Module, PyTorchModelHubMixin, library_name="bt_demo", tags=["medical-imaging", "classification"]):
    """A backbone (timm or ours) classifying one gray channel into ``class_names``.

    ``forward`` takes images in [0, 1] (B, 1, S, S) and returns logits
    (B, n_classes) *before* temperature scaling; ``temperature`` (fitted on
    validation by ``train classifier``) divides the logits for calibrated
    probabilities. ``no_tumour_class`` names the class meaning "no tumour"
    (None for a head that only tells tumour types apart).
    """

    def __init__(
        self,
        backbone: str = "mobilenetv3_large_100",
        class_names: list[str] | tuple[str, ...] = ("glioma", "meningioma", "no_tumour", "pituitary"),
        no_tumour_class: str | None = "no_tumour",
        input_size: int = 224,
        temperature: float = 1.0,
        drop_rate: float = 0.2,
        pretrained: bool = False,
        fit: str = "letterbox",
    ):
        super().__init__()
        if fit not in ("letterbox", "head_square", "head_equalized"):
            raise ValueError(f"fit must be 'letterbox', 'head_square' or 'head_equalized', got {fit!r}")
        # how a slice becomes the square input (bt_demo.models.sizing.SquareFit): 'head_square' crops to
        # the head and stretches it to the square, so image borders and aspect ratio carry no class cue;
        # 'head_equalized' also equalises its histogram (the source's brightness/contrast neither)
        self.fit = fit

        self.class_names = list(class_names)
        if no_tumour_class is not None and no_tumour_class not in self.class_names:
            raise ValueError(f"no_tumour_class {no_tumour_class!r} is not among class_names {self.class_names}")
        self.no_tumour_class = no_tumour_class
        self.input_size = int(input_size)
        self.temperature = float(temperature)
        self.backbone = make_backbone(backbone, len(self.class_names), drop_rate, pretrained)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last convolutional feature map (B, C, h, w): Grad-CAM's target."""
        return self.backbone.forward_features(standardize(x))

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TumourClassifier(nn.Module, PyTorchModelHubMixin, library_name="bt_demo", tags=["medical-imaging", "classification"]):
    """Two calibrated heads in one weights folder: *is there a tumour?* and *which type?*

    ``presence`` and ``tumour_type`` are the ``ClassifierNet`` configs of two
    separate networks (each with its own input mapping and temperature):
    presence has classes ("no_tumour", "tumour"), type the tumour types. The
    four-class view follows: P(no tumour) = 1 - P(tumour), P(type) =
    P(tumour) * P(type | tumour).
    """

    def __init__(self, presence: dict | None = None, tumour_type: dict | None = None):
        super().__init__()
        presence = dict(presence or {"backbone": "small_cnn", "class_names": ["no_tumour", "tumour"],
                                     "no_tumour_class": "no_tumour", "input_size": 128})
        tumour_type = dict(tumour_type or {"backbone": "small_cnn", "class_names": ["glioma", "meningioma", "pituitary"],
                                           "no_tumour_class": None, "input_size": 128})
        presence.pop("pretrained", None), tumour_type.pop("pretrained", None)  # weights come from this folder
        self.presence = ClassifierNet(**presence)
        self.tumour_type = ClassifierNet(**tumour_type)
        if self.presence.class_names != ["no_tumour", "tumour"]:
            raise ValueError(f"the presence head's classes must be ['no_tumour', 'tumour'], got {self.presence.class_names}")
        if self.tumour_type.no_tumour_class is not None:
            raise ValueError("the type head tells tumour types apart; it has no 'no tumour' class")

    @property
    def type_names(self) -> list[str]:
        return list(self.tumour_type.class_names)
