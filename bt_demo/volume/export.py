"""The 3-D mask, written so it sits exactly on its source: NIfTI in the source's own voxel grid and
affine, and for DICOM series a DICOM SEG (highdicom) that references the source instances."""

from __future__ import annotations

import gzip

import numpy as np

from bt_demo.errors import InputError
from bt_demo.volume.series import Volume


def mask_in_source_grid(vol: Volume, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(data, affine): the display-ordered (Z, H, W) mask laid out in the source file's voxel grid."""
    import nibabel as nib

    if vol.source_affine is None or vol.source_shape is None:
        raise InputError("this volume has no source grid (it was stacked from 2-D images)")
    mask = np.asarray(mask, bool)
    if mask.shape != vol.shape:
        raise InputError(f"the mask is {mask.shape}, the volume {vol.shape}")
    canon_data = vol.to_canonical(mask).astype(np.uint8)
    src_ornt = nib.orientations.io_orientation(vol.source_affine)
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    back = nib.orientations.ornt_transform(ras, src_ornt)
    data = nib.orientations.apply_orientation(canon_data, back)
    if tuple(data.shape) != tuple(vol.source_shape):
        raise InputError("internal error: the mask does not fit the source grid")  # pragma: no cover
    return np.ascontiguousarray(data), vol.source_affine


def mask_nifti_3d(vol: Volume, mask: np.ndarray) -> bytes:
    """``.nii.gz`` bytes: uint8 0/1 in the source's shape and affine (sform/qform code 1); with no source
    grid, the display order with the volume's own affine, or voxel size unknown (pixdim 0) without one."""
    import nibabel as nib

    mask = np.asarray(mask, bool)
    if vol.source_affine is not None and vol.source_shape is not None:
        data, affine = mask_in_source_grid(vol, mask)
        code = 1
    else:
        data = np.ascontiguousarray(mask.transpose(2, 1, 0).astype(np.uint8))  # (col, row, z)
        affine, code = vol.affine, 1 if vol.affine is not None else 0
    img = nib.Nifti1Image(data, affine if code else None)
    img.header.set_data_dtype(np.uint8)
    img.header["descrip"] = b"bt_demo lesion mask (research demo)"
    if code:
        img.header.set_xyzt_units("mm")
        img.header.set_qform(affine, code=1)
        img.header.set_sform(affine, code=1)
    else:
        img.header["pixdim"][1:4] = 0.0
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def dicom_seg(vol: Volume, mask: np.ndarray, *, engine: str = "U-Net") -> bytes:
    """A DICOM SEG (binary, one segment "tumour") referencing the source series' instances (highdicom)."""
    import io

    import highdicom as hd
    from pydicom.sr.codedict import codes

    if vol.source not in ("dicom-series", "dicom-multiframe") or not vol.series:
        raise InputError("a DICOM SEG needs a DICOM source series")
    data, _ = mask_in_source_grid(vol, mask)  # (col, row, k) in the series' sorted order
    frames = np.ascontiguousarray(data.transpose(2, 1, 0)).astype(bool)  # (k, row, col)
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="tumour",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=f"bt_demo {engine}", version="1", family=codes.DCM.ArtificialIntelligence))
    try:
        seg = hd.seg.Segmentation(
            source_images=list(vol.series), pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[desc], series_instance_uid=hd.UID(), series_number=900,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="bt_demo (research demo)",
            manufacturer_model_name="bt_demo", software_versions="1", device_serial_number="none",
            series_description="bt_demo tumour mask (research demo, not for diagnosis)")
    except (AttributeError, KeyError) as e:  # highdicom reads attributes a DICOM SEG must copy from its source
        missing = str(e).split("attribute")[-1].strip(" '\"") if isinstance(e, AttributeError) else str(e)
        raise InputError(f"a DICOM SEG cannot be written for this series: its files lack {missing or 'an attribute'}, "
                         "which a SEG must copy from its source; the NIfTI mask is not affected") from None
    buf = io.BytesIO()
    seg.save_as(buf)
    return buf.getvalue()
