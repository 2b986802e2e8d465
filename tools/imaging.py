"""Atomic imaging tools every case can use: describe, render a slice, measure a mask, crop and resample.

Masks are BraTS label maps. Segmentation artifacts and adult cases use the GLI convention (1 necrotic core, 2 oedema,
3 enhancing tumour; pre-2023 data uses 4 for enhancing tumour); paediatric cases (``BraTS-PED`` names) use the PED
convention (1 ET, 2 non-enhancing tumour, 3 cyst, 4 oedema): see :mod:`macro.data.brats`. ``measure_volume`` prefers
the newest mask a segmentation tool wrote in the thread, falls back to the case's reference segmentation, and says
which it used.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from macro.case import Case
from macro.data.brats import convention_for, region_masks
from macro.errors import CaseError
from macro.tools.base import ANY_MODALITY, MacroTool, ToolContext, ToolExample, ToolFailure, ToolResult, ToolSpec

VOLUME_MODALITIES = ("mri-multiseq", "mr", "ct", "pet")
REGION_NAMES = {"ET": "enhancing tumour", "TC": "tumour core", "WT": "whole tumour"}
MODALITY_NAMES = {
    "mri-multiseq": "Multi-sequence brain MRI",
    "mr": "MR",
    "ct": "CT",
    "xray": "X-ray",
    "dermoscopy": "Dermoscopy",
    "fundus": "Fundus",
    "histology": "Histology",
    "us": "Ultrasound",
    "pet": "PET",
    "other": "Image of unstated modality",
}
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
MIN_RENDER_PX = 256
OVERLAY_RGB = {1: (255, 210, 0), 2: (0, 200, 80), 3: (230, 30, 30)}


def gli_labels(et: np.ndarray, tc: np.ndarray, wt: np.ndarray) -> np.ndarray:
    """Nested region masks → one GLI-convention label map (1 core without ET, 2 oedema, 3 ET)."""
    labels = np.zeros(wt.shape, np.uint8)
    labels[wt] = 2
    labels[tc] = 1
    labels[et] = 3
    return labels


def gli_map(raw: np.ndarray, convention: str) -> np.ndarray:
    """A label map in any supported convention (:func:`macro.data.brats.region_masks`) as a GLI label map."""
    regions = region_masks(raw, convention)
    return gli_labels(regions["ET"], regions["TC"], regions["WT"])


def _mask_source(ctx: ToolContext) -> tuple[np.ndarray, str, str]:
    """The label map to measure, where it came from, and its label convention."""
    art = ctx.latest("mask")
    if art is not None:
        import nibabel as nib

        labels = np.rint(np.asarray(nib.load(str(art.path)).dataobj)).astype(np.int16)
        if labels.shape != ctx.case.shape:
            raise CaseError(art.path, f"mask shape {labels.shape} differs from the case shape {ctx.case.shape}")
        return labels, f"segmentation {art.id}", "gli"
    if ctx.case.labels is not None:
        return (
            ctx.case.labels,
            f"reference segmentation {ctx.case.label_path.name}",
            convention_for(ctx.case.label_path.name),
        )
    raise CaseError(
        ctx.case.paths[0],
        "no tumour mask yet: run a segmentation tool first, or provide a case with a reference seg file",
    )


class NoArgs(BaseModel):
    pass


# Units of the stored intensities where the modality fixes them (CT in Hounsfield units; MR signal has none).
INTENSITY_UNITS = {"ct": " HU", "mr": " (arbitrary units)", "mri-multiseq": " (arbitrary units)"}


class DescribeScan(MacroTool):
    name: str = "describe_scan"
    description: str = "Modality, size, voxel spacing and intensity statistics of the scan."
    args_schema: type[BaseModel] = NoArgs
    spec = ToolSpec(
        modalities=(ANY_MODALITY,),
        outputs={"summary": "text"},
        version="1.2.1",
        deterministic=True,
        cases=(
            "brain-mri-demo",
            "wheel:nibabel/tests/data/anatomical.nii",
            "wheel:pydicom/data/test_files/CT_small.dcm",
            "cxr-phantom",
            "derm-phantom",
        ),
        examples=tuple(
            ToolExample(request=r)
            for r in (
                "What kind of scan is this?",
                "Describe this scan.",
                "Give me the basic facts about this image.",
                "What modality and resolution is this study?",
                "How big is this volume and what is the voxel size?",
                "Which sequences are included?",
                "Summarise the acquisition for me.",
                "What are the dimensions of the image?",
                "Tell me about the image intensities.",
                "Is this an MRI or a CT?",
                "What is the slice thickness?",
                "Can you characterise this study before we start?",
                "What's the spacing in mm?",
                "Give me an overview of the case.",
                "Report the image header information.",
                "How many channels does this scan have?",
                "What am I looking at here?",
                "Check the scan properties.",
                "List the sequences and their intensity ranges.",
                "What's the matrix size?",
                "Print the scan metadata.",
                "Before anything else, describe the data.",
                "What resolution was this acquired at?",
                "Give me shape, spacing and modality.",
                "what is this file?",
                "scan info",
                "Modality?",
                "Was für eine Aufnahme ist das?",
                "¿Qué tipo de estudio es este?",
                "Quelles sont les dimensions et la résolution ?",
                "Descrivi questa immagine.",
                "Tell me what kind of picture this is.",
                "Voxel size and shape?",
                "Is it 2D or 3D?",
                "What type of imaging is this?",
                "Tell me the acquisition details.",
                "Which modality, and what's the field of view?",
                "How many slices are there?",
                "what's in this file",
                "what sort of picture is this",
                "dims + spacing",
                "metadata pls",
                "Beschreibe die Aufnahme bitte.",
                "Beschreib mir dieses Bild.",
                "Welche Voxelgröße hat die Aufnahme?",
                "Décris l'examen.",
                "Décris-moi ce scanner.",
                "¿Puedes describir el estudio?",
                "Descrivi la scansione.",
                "Describe the study.",
                "Describe the image briefly.",
                "describe pls",
                "Basic image stats?",
                "Is this a volume or a single image?",
                "Give me the technical details of this study.",
                "Describe the data you have.",
                "Can you tell me about this image file?",
                "I have just been sent this study; what is it?",
                "Welche Modalität ist das?",
                "Was ist das für ein Bild und wie groß ist es?",
                "Qu'est-ce que c'est comme examen ?",
                "Dime la resolución y el tamaño de la imagen.",
                "Che tipo di esame è questo?",
                "Quick summary of the scan parameters before I start reading.",
                "Intensity range?",
                "What's the pixel spacing?",
                "Number of channels and their names?",
                "What format and size is this image?",
                "Kannst du das Bild beschreiben?",
                "Peux-tu décrire ce scanner ?",
                "Describe la imagen, por favor.",
                "Mi descrivi l'esame?",
                "what is this image of",
                "tell me about this scan",
                "what kind of file did you get?",
                "Describe it for me.",
                "Welche Auflösung hat das Bild?",
                "¿Qué modalidad es?",
                "Beschreiben Sie bitte die Untersuchung.",
                "Was zeigt diese Aufnahme? Bitte beschreiben.",
                "Décrivez cet examen.",
                "Fais-moi une description de l'image.",
                "Descríbeme este estudio.",
                "Descrivimi la scansione.",
            )
        ),
    )

    def execute(self, ctx: ToolContext, args: NoArgs) -> ToolResult:
        case = ctx.case
        stats = {}
        for name in case.channels:
            vox = case.channel(name)
            fg = vox[vox > np.percentile(vox, 5)] if vox.size > 100 else vox.ravel()
            stats[name] = {
                k: round(float(v), 2)
                for k, v in (
                    ("min", vox.min()),
                    ("max", vox.max()),
                    ("mean", fg.mean()),
                    ("std", fg.std()),
                    ("p1", np.percentile(fg, 1)),
                    ("p99", np.percentile(fg, 99)),
                )
            }
        data = {
            "case_id": case.id,
            "modality": case.modality,
            "dims": case.dims,
            "shape": list(case.shape),
            "spacing_mm": [round(s, 4) for s in case.spacing],
            "channels": list(case.channels),
            "has_reference_mask": case.label_path is not None,
            "intensity": stats,
        }
        unit = INTENSITY_UNITS.get(case.modality, "")
        ranges = "; ".join(f"{n} {s['p1']:g} to {s['p99']:g}{unit}" for n, s in stats.items())
        data["intensity_unit"] = unit.strip() or None
        shape, spacing = "x".join(map(str, case.shape)), "x".join(f"{v:g}" for v in case.spacing)
        reference = ", with a reference tumour mask" if case.label_path is not None else ""
        headline = (
            f"{MODALITY_NAMES[case.modality]} scan, {case.dims}D, {shape} voxels at {spacing} mm, "
            f"{len(case.channels)} channel{'s' if len(case.channels) > 1 else ''} ({', '.join(case.channels)})"
            f"{reference}."
        )
        return ToolResult(
            text=f"{case.summary()}. Intensity, 1st to 99th percentile: {ranges}.", headline=headline, data=data
        )


class RenderArgs(BaseModel):
    axis: Literal["axial", "coronal", "sagittal"] = Field("axial", description="slice orientation (3D only)")
    index: int | None = Field(None, description="slice index; default: largest tumour cross-section, else the middle")
    sequence: str | None = Field(None, description="channel to show, e.g. t1, t1ce, t2, flair")


class RenderSlice(MacroTool):
    name: str = "render_slice"
    description: str = (
        "Show the scan as a picture: a PNG of one slice (or the 2D image), the tumour overlaid when a mask exists."
    )
    args_schema: type[BaseModel] = RenderArgs
    spec = ToolSpec(
        modalities=(ANY_MODALITY,),
        outputs={"png": "render"},
        version="1.2.0",
        deterministic=True,
        cases=(
            "brain-mri-demo",
            "wheel:nibabel/tests/data/anatomical.nii",
            "wheel:pydicom/data/test_files/CT_small.dcm",
        ),
        examples=(
            ToolExample(request="Show me an axial slice.", args={"axis": "axial"}),
            ToolExample(request="Render the coronal view.", args={"axis": "coronal"}),
            ToolExample(request="Can I see a sagittal image?", args={"axis": "sagittal"}),
            ToolExample(request="Display the FLAIR image.", args={"sequence": "flair"}),
            ToolExample(request="Show the T1 post-contrast slice through the tumour.", args={"sequence": "t1ce"}),
            ToolExample(request="Make a picture of slice 40.", args={"index": 40}),
            ToolExample(
                request="Render axial slice 52 of the T2.", args={"axis": "axial", "index": 52, "sequence": "t2"}
            ),
            ToolExample(request="Give me a coronal picture of the T1.", args={"axis": "coronal", "sequence": "t1"}),
            ToolExample(request="Visualise the lesion.", args={}),
            ToolExample(request="Draw the scan with the tumour outlined.", args={}),
            ToolExample(request="Show me the image.", args={}),
            ToolExample(request="I'd like to see a sagittal cut at index 30.", args={"axis": "sagittal", "index": 30}),
            ToolExample(
                request="Export a PNG of the FLAIR in the coronal plane.", args={"axis": "coronal", "sequence": "flair"}
            ),
            ToolExample(request="Plot the middle axial slice.", args={"axis": "axial"}),
            ToolExample(request="Let me look at the T2-weighted image.", args={"sequence": "t2"}),
            ToolExample(request="Produce a screenshot of slice 61.", args={"index": 61}),
            ToolExample(request="Show the sagittal FLAIR.", args={"axis": "sagittal", "sequence": "flair"}),
            ToolExample(request="Overlay the segmentation on an axial image.", args={"axis": "axial"}),
            ToolExample(request="Can you render the contrast-enhanced T1?", args={"sequence": "t1ce"}),
            ToolExample(request="Picture of coronal slice 58, please.", args={"axis": "coronal", "index": 58}),
            ToolExample(request="Show where the tumour is.", args={}),
            ToolExample(request="View the native T1 axially.", args={"axis": "axial", "sequence": "t1"}),
            ToolExample(
                request="Render slice 45 in the sagittal plane from the T2.",
                args={"axis": "sagittal", "index": 45, "sequence": "t2"},
            ),
            ToolExample(request="Save an image of the scan.", args={}),
            ToolExample(request="Show the coronal T2.", args={"axis": "coronal", "sequence": "t2"}),
            ToolExample(request="I want to see the FLAIR sagittally.", args={"axis": "sagittal", "sequence": "flair"}),
            ToolExample(
                request="Can I see an image of the post-contrast T1 in the axial plane?",
                args={"axis": "axial", "sequence": "t1ce"},
            ),
            ToolExample(request="Display sagittal slice 50.", args={"axis": "sagittal", "index": 50}),
            ToolExample(request="Let me see the coronal plane.", args={"axis": "coronal"}),
            ToolExample(request="Show a picture of the T1 at slice 33.", args={"index": 33, "sequence": "t1"}),
            ToolExample(
                request="Render the FLAIR, coronal, slice 60.",
                args={"axis": "coronal", "index": 60, "sequence": "flair"},
            ),
            ToolExample(
                request="Could I look at a sagittal T1ce image?", args={"axis": "sagittal", "sequence": "t1ce"}
            ),
            ToolExample(
                request="Show me the axial T2 at index 47.", args={"axis": "axial", "index": 47, "sequence": "t2"}
            ),
            ToolExample(request="See the tumour on a coronal FLAIR.", args={"axis": "coronal", "sequence": "flair"}),
            ToolExample(request="show it", args={}),
            ToolExample(request="axial pic", args={"axis": "axial"}),
            ToolExample(request="Open the image for me.", args={}),
            ToolExample(request="let me see the scan", args={}),
            ToolExample(request="Zeig mir ein Schnittbild.", args={}),
            ToolExample(request="Montre-moi une coupe sagittale.", args={"axis": "sagittal"}),
            ToolExample(request="Fammi vedere la FLAIR.", args={"sequence": "flair"}),
            ToolExample(request="Enséñame la imagen.", args={}),
            ToolExample(request="Centre slice, please.", args={}),
            ToolExample(request="sagittal", args={"axis": "sagittal"}),
            ToolExample(request="Show me the scan.", args={}),
            ToolExample(request="I want to see it.", args={}),
            ToolExample(request="Can I have a look at the image?", args={}),
            ToolExample(request="Put up an image of the brain.", args={}),
            ToolExample(request="Bring up a slice.", args={}),
            ToolExample(request="Show a slice through the tumour.", args={}),
            ToolExample(request="Give me a view of the middle of the volume.", args={}),
            ToolExample(request="Picture please", args={}),
            ToolExample(request="show me pls", args={}),
            ToolExample(request="Display the image.", args={}),
            ToolExample(request="visualize it", args={}),
            ToolExample(request="draw it for me", args={}),
            ToolExample(request="Can you show me what it looks like?", args={}),
            ToolExample(request="I'd like a picture of the lesion.", args={}),
            ToolExample(request="Render an image I can look at.", args={}),
            ToolExample(request="Let me have a look.", args={}),
            ToolExample(request="Show me a picture so I can check it myself.", args={}),
            ToolExample(request="Show the coronal plane through the lesion.", args={"axis": "coronal"}),
            ToolExample(request="A sagittal view, please.", args={"axis": "sagittal"}),
            ToolExample(request="axial", args={"axis": "axial"}),
            ToolExample(request="coronal image", args={"axis": "coronal"}),
            ToolExample(request="sagittal image pls", args={"axis": "sagittal"}),
            ToolExample(request="Go to slice 20.", args={"index": 20}),
            ToolExample(request="slice 70", args={"index": 70}),
            ToolExample(request="Show slice number 25 of the FLAIR.", args={"index": 25, "sequence": "flair"}),
            ToolExample(request="Open the T1 post contrast.", args={"sequence": "t1ce"}),
            ToolExample(request="T2 image please", args={"sequence": "t2"}),
            ToolExample(request="Can I see the FLAIR sequence?", args={"sequence": "flair"}),
            ToolExample(request="I'd like to look at the T1.", args={"sequence": "t1"}),
            ToolExample(
                request="Coronal slice 44 of the T1, please.", args={"axis": "coronal", "index": 44, "sequence": "t1"}
            ),
            ToolExample(request="Zeig mir das Bild.", args={}),
            ToolExample(request="Zeig mir die koronare Ebene.", args={"axis": "coronal"}),
            ToolExample(request="Montre-moi l'image.", args={}),
            ToolExample(request="Affiche la coupe axiale.", args={"axis": "axial"}),
            ToolExample(request="Muestra la imagen en el plano sagital.", args={"axis": "sagittal"}),
            ToolExample(request="Mostrami una sezione assiale.", args={"axis": "axial"}),
            ToolExample(request="Vorrei vedere l'immagine.", args={}),
            ToolExample(request="Zeig mir die T2.", args={"sequence": "t2"}),
            ToolExample(request="Enséñame un corte coronal.", args={"axis": "coronal"}),
            ToolExample(request="Quiero ver la imagen.", args={}),
            ToolExample(request="Je voudrais voir une coupe.", args={}),
            ToolExample(request="Zeig mir einen axialen Schnitt.", args={"axis": "axial"}),
            ToolExample(request="Fammi vedere l'immagine.", args={}),
            ToolExample(request="can i see a picture of my scan", args={}),
            ToolExample(request="let me look at it", args={}),
            ToolExample(request="what does it look like?", args={}),
            ToolExample(request="Show slice 12.", args={"index": 12}),
            ToolExample(request="slice 88 please", args={"index": 88}),
            ToolExample(request="picture of slice 15", args={"index": 15}),
            ToolExample(request="Render index 64.", args={"index": 64}),
            ToolExample(request="sagittal view of the T1", args={"axis": "sagittal", "sequence": "t1"}),
            ToolExample(request="Show me the coronal.", args={"axis": "coronal"}),
            ToolExample(request="Just the FLAIR, please.", args={"sequence": "flair"}),
            ToolExample(request="middle slice please", args={}),
            ToolExample(request="Show the central slice.", args={}),
            ToolExample(request="Quiero ver un corte coronal.", args={"axis": "coronal"}),
            ToolExample(request="Enséñame el corte central.", args={}),
            ToolExample(request="Montre-moi la coupe coronale.", args={"axis": "coronal"}),
            ToolExample(request="Let me view the FLAIR.", args={"sequence": "flair"}),
            ToolExample(request="Can I look at the T1?", args={"sequence": "t1"}),
        ),
        follow_ups=(
            ToolExample(request="Now the coronal one.", args={"axis": "coronal"}),
            ToolExample(request="And sagittally?", args={"axis": "sagittal"}),
            ToolExample(request="Same on the FLAIR.", args={"sequence": "flair"}),
            ToolExample(request="What about the T2?", args={"sequence": "t2"}),
            ToolExample(request="And an axial one?", args={"axis": "axial"}),
            ToolExample(request="Try the post-contrast T1 instead.", args={"sequence": "t1ce"}),
        ),
    )

    def narrow(self, case: Case, parameters: dict) -> dict:
        """A 2D image has no orientation or slice to choose; a 3D one has as many slices as its longest side; a
        one-channel scan has no sequence to choose, a multi-sequence one exactly its own."""
        props = parameters["properties"]
        if case.dims == 2:
            del props["axis"], props["index"]
        else:
            props["index"]["anyOf"][0].update(minimum=0, maximum=max(case.shape) - 1)
        if len(case.channels) < 2:
            del props["sequence"]
        else:
            props["sequence"]["anyOf"][0]["enum"] = list(case.channels)
            props["sequence"]["description"] = "channel to show"
        return parameters

    def execute(self, ctx: ToolContext, args: RenderArgs) -> ToolResult:
        case = ctx.case
        if args.sequence is not None and args.sequence not in case.channels:
            raise CaseError(
                case.paths[0], f"no sequence {args.sequence!r} in this case", accepted=", ".join(case.channels)
            )
        labels = None
        if case.dims == 3:
            try:
                raw, _, convention = _mask_source(ctx)
                labels = gli_map(raw, convention)
            except CaseError:
                labels = None
        shown = args.sequence or ("flair" if "flair" in case.channels else "/".join(case.channels))
        if case.dims == 2:
            pixels = (
                np.moveaxis(case.image, 0, -1)
                if args.sequence is None and len(case.channels) == 3
                else case.channel(args.sequence)
            )
            plane, where = pixels, "2D image"
            mask_plane = None
        else:
            axis = AXES[args.axis]
            size = case.shape[axis]
            index = args.index if args.index is not None else default_index(labels, axis, size)
            if not 0 <= index < size:
                raise CaseError(case.paths[0], f"{args.axis} slice {index} is outside 0..{size - 1}")
            volume = case.channel(shown if shown in case.channels else None)
            plane = np.rot90(np.take(volume, index, axis=axis))
            mask_plane = None if labels is None else np.rot90(np.take(labels, index, axis=axis))
            where = f"{args.axis} slice {index}/{size - 1}"
        rgb, scale = upscaled(to_rgb(plane, mask_plane))
        art = ctx.store.save_png(
            rgb, "render", f"{args.axis}-{args.sequence or 'default'}", {"where": where, "scale": scale}
        )
        overlay = " with tumour overlay" if mask_plane is not None and mask_plane.any() else ""
        return ToolResult(
            text=f"Rendered {where} of {shown}{overlay} to {art.id}.",
            headline=f"Here is the {where} of {shown}{overlay}.",
            data={"where": where, "overlay": bool(overlay)},
            artifacts=[art.ref()],
        )


def default_index(labels: np.ndarray | None, axis: int, size: int) -> int:
    """The slice through the largest cross-section of the mask, else the middle one."""
    if labels is not None and labels.any():
        other = tuple(a for a in range(3) if a != axis)
        return int(np.argmax((labels > 0).sum(axis=other)))
    return size // 2


def to_rgb(plane: np.ndarray, mask: np.ndarray | None, opacity: float = 0.45) -> np.ndarray:
    """A plane (or an H x W x 3 picture) windowed to its 1st-99th percentiles, with the GLI labels of ``mask`` blended
    in their colours at ``opacity``. Shared by ``render_slice`` and the web UI's viewer."""
    lo, hi = np.percentile(plane, (1, 99))
    grey = np.clip((plane - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    rgb = grey.astype(np.uint8) if grey.ndim == 3 else np.repeat(grey[..., None], 3, axis=-1).astype(np.uint8)
    if mask is not None:
        for label, colour in OVERLAY_RGB.items():
            sel = mask == label
            rgb[sel] = ((1 - opacity) * rgb[sel] + opacity * np.asarray(colour)).astype(np.uint8)
    return rgb


def upscaled(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    """A small picture enlarged by an integer factor to at least MIN_RENDER_PX a side (pixel-exact), and the factor."""
    scale = max(1, -(-MIN_RENDER_PX // min(rgb.shape[:2])))
    return rgb.repeat(scale, axis=0).repeat(scale, axis=1), scale


class VolumeArgs(BaseModel):
    region: Literal["ET", "TC", "WT"] = Field("WT", description="ET enhancing tumour, TC tumour core, WT whole tumour")


class MeasureVolume(MacroTool):
    name: str = "measure_volume"
    description: str = "Tumour volume in mL: ET enhancing, TC core, WT whole."
    args_schema: type[BaseModel] = VolumeArgs
    spec = ToolSpec(
        modalities=VOLUME_MODALITIES,
        dims=(3,),
        inputs={"case": "image", "mask": "mask"},
        outputs={"volume_ml": "scalar"},
        version="1.2.1",
        deterministic=True,
        cases=("brain-mri-demo", "lowfield-sequences"),
        examples=(
            ToolExample(request="What is the tumour volume?", args={"region": "WT"}),
            ToolExample(request="How big is the whole tumour?", args={"region": "WT"}),
            ToolExample(request="Measure the total lesion volume in mL.", args={"region": "WT"}),
            ToolExample(request="How large is the enhancing tumour?", args={"region": "ET"}),
            ToolExample(request="What's the volume of the enhancing part?", args={"region": "ET"}),
            ToolExample(request="Quantify the contrast-enhancing component.", args={"region": "ET"}),
            ToolExample(request="How big is the tumour core?", args={"region": "TC"}),
            ToolExample(request="Give me the core volume (necrosis plus enhancing).", args={"region": "TC"}),
            ToolExample(request="Measure the tumor core in milliliters.", args={"region": "TC"}),
            ToolExample(request="How much oedema plus tumour is there in total?", args={"region": "WT"}),
            ToolExample(request="What's the whole-tumor volume including edema?", args={"region": "WT"}),
            ToolExample(request="Tumour burden in mL?", args={"region": "WT"}),
            ToolExample(request="Size of the enhancing rim?", args={"region": "ET"}),
            ToolExample(request="ET volume please.", args={"region": "ET"}),
            ToolExample(request="TC volume?", args={"region": "TC"}),
            ToolExample(request="WT volume?", args={"region": "WT"}),
            ToolExample(request="How many millilitres is the lesion?", args={"region": "WT"}),
            ToolExample(request="Calculate the volume of the active tumour.", args={"region": "ET"}),
            ToolExample(request="What is the size of the solid core?", args={"region": "TC"}),
            ToolExample(request="Measure the abnormal FLAIR region volume.", args={"region": "WT"}),
            ToolExample(request="How much enhancing tissue is there?", args={"region": "ET"}),
            ToolExample(request="Compute the necrotic and enhancing core volume.", args={"region": "TC"}),
            ToolExample(request="How large is the mass overall?", args={"region": "WT"}),
            ToolExample(request="Volume of the gadolinium-enhancing portion?", args={"region": "ET"}),
            ToolExample(request="How big is the active enhancing rim?", args={"region": "ET"}),
            ToolExample(request="Core volume, meaning necrosis and enhancement together?", args={"region": "TC"}),
            ToolExample(request="What is the total abnormal volume with oedema?", args={"region": "WT"}),
            ToolExample(request="Measure the active part of the tumour.", args={"region": "ET"}),
            ToolExample(request="Size of the lesion in mL, everything included?", args={"region": "WT"}),
            ToolExample(request="How many mL is the non-oedema core?", args={"region": "TC"}),
            ToolExample(request="Quantify the whole abnormality.", args={"region": "WT"}),
            ToolExample(request="Volume of the enhancing tumour only?", args={"region": "ET"}),
            ToolExample(request="How big is it?", args={"region": "WT"}),
            ToolExample(request="tumour size", args={"region": "WT"}),
            ToolExample(request="WT mL", args={"region": "WT"}),
            ToolExample(request="Wie viele Milliliter hat der Tumorkern?", args={"region": "TC"}),
            ToolExample(request="Quel est le volume de la tumeur ?", args={"region": "WT"}),
            ToolExample(request="¿Cuánto mide la parte que realza?", args={"region": "ET"}),
            ToolExample(request="how much space does the tumour take up?", args={"region": "WT"}),
            ToolExample(request="core vol", args={"region": "TC"}),
            ToolExample(request="What's the size of the tumour in millilitres?", args={"region": "WT"}),
            ToolExample(request="Total tumour volume?", args={"region": "WT"}),
            ToolExample(request="how large is the cancer", args={"region": "WT"}),
            ToolExample(request="volume of the lesion", args={"region": "WT"}),
            ToolExample(request="How big is the mass in cc?", args={"region": "WT"}),
            ToolExample(request="Give me the enhancing volume.", args={"region": "ET"}),
            ToolExample(request="enhancing tumour mL", args={"region": "ET"}),
            ToolExample(request="Volume of the contrast-enhancing part, please.", args={"region": "ET"}),
            ToolExample(request="necrotic core size", args={"region": "TC"}),
            ToolExample(request="What does the core measure?", args={"region": "TC"}),
            ToolExample(request="Wie groß ist der kontrastmittelaufnehmende Anteil?", args={"region": "ET"}),
            ToolExample(request="Quel est le volume du noyau tumoral ?", args={"region": "TC"}),
            ToolExample(request="¿Cuál es el volumen total del tumor?", args={"region": "WT"}),
            ToolExample(request="Qual è il volume della lesione?", args={"region": "WT"}),
            ToolExample(request="How much of it enhances?", args={"region": "ET"}),
            ToolExample(request="Measure the tumour.", args={"region": "WT"}),
            ToolExample(request="Size of the whole abnormal area including swelling?", args={"region": "WT"}),
            ToolExample(request="how big is it in total?", args={"region": "WT"}),
            ToolExample(request="what size is the tumour?", args={"region": "WT"}),
            ToolExample(request="how large has it grown?", args={"region": "WT"}),
            ToolExample(request="Wie viel Volumen hat die Läsion?", args={"region": "WT"}),
            ToolExample(request="Combien de millilitres fait la tumeur ?", args={"region": "WT"}),
            ToolExample(request="enhancing part volume", args={"region": "ET"}),
            ToolExample(request="Wie groß ist die Läsion?", args={"region": "WT"}),
            ToolExample(request="Welches Volumen hat der Tumor insgesamt?", args={"region": "WT"}),
            ToolExample(request="Wie groß ist die Raumforderung?", args={"region": "WT"}),
            ToolExample(request="Quelle est la taille de la tumeur ?", args={"region": "WT"}),
            ToolExample(request="¿Qué tamaño tiene el tumor?", args={"region": "WT"}),
            ToolExample(request="Quanto è grande il tumore?", args={"region": "WT"}),
            ToolExample(request="Wie groß ist der aktive Anteil?", args={"region": "ET"}),
        ),
        follow_ups=(
            ToolExample(request="And the core?", args={"region": "TC"}),
            ToolExample(request="What about the enhancing tumour?", args={"region": "ET"}),
            ToolExample(request="And the whole lesion?", args={"region": "WT"}),
            ToolExample(request="Same for the tumour core, please.", args={"region": "TC"}),
            ToolExample(request="How about the enhancing rim?", args={"region": "ET"}),
            ToolExample(request="And in total, with the oedema?", args={"region": "WT"}),
            ToolExample(request="Now the active part.", args={"region": "ET"}),
            ToolExample(request="What about the necrotic core?", args={"region": "TC"}),
            ToolExample(request="And the enhancing component?", args={"region": "ET"}),
            ToolExample(request="What about the enhancing bit?", args={"region": "ET"}),
            ToolExample(request="and ET?", args={"region": "ET"}),
            ToolExample(request="And the part that lights up with contrast?", args={"region": "ET"}),
            ToolExample(request="Und der Kern?", args={"region": "TC"}),
            ToolExample(request="Et la partie rehaussée ?", args={"region": "ET"}),
            ToolExample(request="What about the core, then?", args={"region": "TC"}),
            ToolExample(request="And the whole thing?", args={"region": "WT"}),
        ),
    )

    def execute(self, ctx: ToolContext, args: VolumeArgs) -> ToolResult:
        labels, source, convention = _mask_source(ctx)
        voxels = int(region_masks(labels, convention)[args.region].sum())
        volume = voxels * ctx.case.voxel_ml
        return ToolResult(
            text=f"{REGION_NAMES[args.region]} ({args.region}) volume: {volume:.2f} mL "
            f"({voxels} voxels, from the {source}).",
            headline=f"The {REGION_NAMES[args.region]} ({args.region}) volume is {volume:.2f} mL, measured on "
            + ("the case's reference mask." if source.startswith("reference") else "the agent's segmentation."),
            data={
                "region": args.region,
                "volume_ml": round(volume, 4),
                "voxels": voxels,
                "voxel_ml": ctx.case.voxel_ml,
                "mask_source": source,
            },
        )


MAX_RESAMPLED_VOXELS = 16_000_000  # per channel: a 1 mm 250^3 head; MONAI's resampling peaks near 70 bytes a voxel


class ResampleArgs(BaseModel):
    spacing_mm: float | None = Field(
        None, gt=0.2, le=10, description="isotropic output spacing in mm; default keeps the spacing"
    )
    crop: bool = Field(True, description="crop to the foreground (head/body) bounding box")


class CropResample(MacroTool):
    name: str = "crop_resample"
    description: str = "Crop to the foreground and/or resample to isotropic mm."
    args_schema: type[BaseModel] = ResampleArgs
    spec = ToolSpec(
        modalities=VOLUME_MODALITIES,
        dims=(3,),
        outputs={"volume": "image"},
        version="1.2.0",
        deterministic=True,
        cases=("brain-mri-demo", "wheel:nibabel/tests/data/anatomical.nii"),
        examples=(
            ToolExample(request="Resample the scan to 1 mm isotropic.", args={"spacing_mm": 1.0}),
            ToolExample(request="Crop away the empty background.", args={"crop": True}),
            ToolExample(request="Resample to 2 mm voxels.", args={"spacing_mm": 2.0}),
            ToolExample(request="Make the voxels 1.5 mm isotropic.", args={"spacing_mm": 1.5}),
            ToolExample(request="Trim the volume to the head.", args={"crop": True}),
            ToolExample(request="Downsample to 3 mm spacing.", args={"spacing_mm": 3.0}),
            ToolExample(request="Resample to 1mm without cropping.", args={"spacing_mm": 1.0, "crop": False}),
            ToolExample(request="Cut the image to its bounding box.", args={"crop": True}),
            ToolExample(request="Regrid the volume at 2.5 mm.", args={"spacing_mm": 2.5}),
            ToolExample(request="Prepare an isotropic 1 mm copy of the scan.", args={"spacing_mm": 1.0}),
            ToolExample(request="Remove the air around the head.", args={"crop": True}),
            ToolExample(request="Interpolate to 0.5 mm voxels.", args={"spacing_mm": 0.5}),
            ToolExample(request="Crop to the brain and resample at 2 mm.", args={"spacing_mm": 2.0, "crop": True}),
            ToolExample(request="Change the resolution to 4 mm.", args={"spacing_mm": 4.0}),
            ToolExample(request="Tight crop around the anatomy please.", args={"crop": True}),
            ToolExample(
                request="Resample at 1.25 mm but keep the full field of view.", args={"spacing_mm": 1.25, "crop": False}
            ),
            ToolExample(request="1 mm iso", args={"spacing_mm": 1.0}),
            ToolExample(request="Auf 2 mm resampeln.", args={"spacing_mm": 2.0}),
            ToolExample(request="Recorta el fondo.", args={"crop": True}),
            ToolExample(request="make the voxels bigger, 3 mm", args={"spacing_mm": 3.0}),
            ToolExample(request="Ricampiona a 1.5 mm.", args={"spacing_mm": 1.5}),
            ToolExample(request="strip the empty border", args={"crop": True}),
            ToolExample(request="Resample it to 2 mm.", args={"spacing_mm": 2.0}),
            ToolExample(request="isotropic 1.5 mm please", args={"spacing_mm": 1.5}),
            ToolExample(request="Can you change the voxel size to 1 mm?", args={"spacing_mm": 1.0}),
            ToolExample(request="Reslice at 2 mm.", args={"spacing_mm": 2.0}),
            ToolExample(request="Crop off the background.", args={"crop": True}),
            ToolExample(request="Remove the empty space around the patient.", args={"crop": True}),
            ToolExample(request="trim the borders", args={"crop": True}),
            ToolExample(request="Resample to 3 mm isotropic voxels.", args={"spacing_mm": 3.0}),
            ToolExample(request="Make it 2 mm isotropic, no crop.", args={"spacing_mm": 2.0, "crop": False}),
            ToolExample(request="downsample to 4mm", args={"spacing_mm": 4.0}),
            ToolExample(request="Zuschneiden auf den Kopf, bitte.", args={"crop": True}),
            ToolExample(request="Rogner le fond vide.", args={"crop": True}),
            ToolExample(request="Remuestrear a 1 mm.", args={"spacing_mm": 1.0}),
            ToolExample(request="Ritaglia lo sfondo.", args={"crop": True}),
            ToolExample(
                request="I need the volume at 2 mm isotropic resolution for another program.", args={"spacing_mm": 2.0}
            ),
            ToolExample(request="Get rid of the black margins.", args={"crop": True}),
            ToolExample(request="Interpolate the scan onto a 1.5 mm grid.", args={"spacing_mm": 1.5}),
            ToolExample(request="Recorta la imagen al cuerpo.", args={"crop": True}),
            ToolExample(request="Auf 1 mm isotrop umrechnen.", args={"spacing_mm": 1.0}),
        ),
    )

    def execute(self, ctx: ToolContext, args: ResampleArgs) -> ToolResult:
        import torch
        from monai.data import MetaTensor
        from monai.transforms import CropForeground, Spacing

        case = ctx.case
        affine = torch.as_tensor(case.affine if case.affine is not None else np.diag([*case.spacing, 1.0]))
        img = MetaTensor(torch.from_numpy(case.image), affine=affine)
        if args.crop:
            # allow_smaller: the margin stops at the image's edges, so a crop never pads the volume larger
            threshold = np.percentile(case.image[0], 20)
            img = CropForeground(select_fn=lambda x: x > threshold, margin=2, allow_smaller=True)(img)
        if args.spacing_mm is not None:
            current = np.sqrt((img.affine.numpy()[:3, :3] ** 2).sum(axis=0))
            voxels = int(np.prod(np.ceil(np.asarray(img.shape[1:]) * current / args.spacing_mm)))
            if voxels > MAX_RESAMPLED_VOXELS:  # refused before any work: memory and time grow with the output
                finest = float(np.cbrt(np.prod(np.asarray(img.shape[1:]) * current) / MAX_RESAMPLED_VOXELS))
                raise ToolFailure(
                    f"resampling to {args.spacing_mm:g} mm would make {voxels:,} voxels per channel (limit "
                    f"{MAX_RESAMPLED_VOXELS:,}); choose a spacing of at least {np.ceil(finest * 100) / 100:g} mm"
                )
            img = Spacing(pixdim=(args.spacing_mm,) * 3, mode="bilinear")(img)
        out = np.moveaxis(img.numpy().astype(np.float32), 0, -1)
        new_spacing = [round(float(s), 4) for s in np.sqrt((img.affine.numpy()[:3, :3] ** 2).sum(axis=0))]
        _check_geometry(case, affine.numpy(), out.shape[:3], new_spacing, args)
        art = ctx.store.save_nifti(
            out, img.affine.numpy(), "image", "resampled", {"spacing_mm": new_spacing, "channels": list(case.channels)}
        )
        shape = list(out.shape[:3])
        return ToolResult(
            text=f"Saved a {'x'.join(map(str, shape))} volume at {'x'.join(f'{s:g}' for s in new_spacing)} mm "
            f"to {art.id}.",
            headline=f"Resampled to {'x'.join(map(str, shape))} voxels at "
            f"{'x'.join(f'{s:g}' for s in new_spacing)} mm.",
            data={"shape": shape, "spacing_mm": new_spacing},
            artifacts=[art.ref()],
        )


def _check_geometry(case, affine: np.ndarray, shape: tuple[int, ...], spacing: list[float], args: ResampleArgs) -> None:
    """The output must be what was asked: a crop alone never grows the volume and keeps the input's voxel size (as
    its affine states it), a resampling hits its spacing."""
    if args.spacing_mm is None and any(n > m for n, m in zip(shape, case.shape)):
        raise ToolFailure(f"crop_resample produced {'x'.join(map(str, shape))} from {'x'.join(map(str, case.shape))}")
    own = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    expected = own if args.spacing_mm is None else (args.spacing_mm,) * 3
    if not np.allclose(spacing, expected, rtol=1e-3, atol=1e-4):
        raise ToolFailure(f"crop_resample produced {spacing} mm voxels, expected {list(expected)}")
