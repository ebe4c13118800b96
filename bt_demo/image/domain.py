"""Is this slice like what the models were trained on (brain MRI)? What the file's own fields say.

Used beside the classifier's numbers and on the status line: a CT, an
ultrasound, a DICOM SEG object or an abdominal MR is read like any slice, and
the user is told that the models' answers do not apply to it.
"""

from __future__ import annotations

_BRAIN_PARTS = ("BRAIN", "HEAD", "SKULL", "CEREBRUM", "CRANIUM", "HEADNECK", "NEURO")


def notices(metadata: dict) -> tuple[str, ...]:
    """Why a slice is unlike what the models were trained on, from its file's own fields (DICOM Modality,
    BodyPartExamined; ``Slice.metadata`` keys ``modality`` and ``body_part``); () when nothing says so."""
    out = []
    modality = str(metadata.get("modality") or "").strip().upper()
    if modality and modality != "MR":
        names = {"CT": "a CT", "US": "an ultrasound", "SEG": "a segmentation object", "CR": "a radiograph",
                 "DX": "a radiograph", "PT": "a PET", "NM": "a nuclear-medicine", "MG": "a mammography",
                 "OT": "an 'other'-modality", "SC": "a secondary-capture"}
        what = f"This is {names.get(modality, 'a ' + modality)} image (DICOM Modality {modality})"
        out.append(what + "; the models here were trained on brain MRI only, so their answers do not apply.")
    part = str(metadata.get("body_part") or "").strip().upper().replace(" ", "")
    if part and not any(b in part for b in _BRAIN_PARTS):
        out.append(f"The file says the body part is {metadata.get('body_part')!s}; the models here were trained on "
                   "brain MRI only, so their answers do not apply.")
    return tuple(out)
