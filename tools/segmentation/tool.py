"""``segment_brain_tumor``: ET/TC/WT segmentation of a multi-sequence brain MRI, with test-time adaptation.

Adaptation is continual within an agent thread: the adapted model lives in the thread's session, so a stream of
scans from one scanner keeps improving; ``reset=true`` starts again from the source weights. Default
``adapt="vista"``: on in-distribution scans it costs at most a fraction of a Dice point (see the model card in
the README), and on shifted scanners it is the method that helps. When the case ships a reference mask, the
result compares the segmentation with it (Dice per region, the reference's volumes), so an answer can say whether
the two agree (:mod:`macro.agent.consistency`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from macro.data.brats import convention_for, region_masks
from macro.tools.base import MacroTool, ToolContext, ToolExample, ToolResult, ToolSpec
from macro.tools.imaging import gli_labels
from macro.tools.segmentation.model import REGIONS, SLOT, load_weights, prepare
from macro.weights import MANIFEST, load_once


def source_model():
    """Source weights of the active copy, loaded once per process and again when they are retrained; adapters
    deep-copy what they change, so a thread's adapted model is unaffected."""
    folder = SLOT.active()
    return load_once("segmentation/source", lambda: load_weights(folder), folder / MANIFEST)


class SegmentArgs(BaseModel):
    adapt: Literal["vista", "tent", "none"] = Field("vista", description="test-time adaptation to the scanner")
    reset: bool = Field(False, description="restart adaptation from the source model")


class SegmentBrainTumor(MacroTool):
    name: str = "segment_brain_tumor"
    description: str = "Segment the brain tumour (ET/TC/WT masks, volumes in mL); adapt: vista|tent|none."
    args_schema: type[BaseModel] = SegmentArgs
    spec = ToolSpec(
        modalities=("mri-multiseq",),
        dims=(3,),
        outputs={"mask": "mask", "uncertainty": "heatmap"},
        timeout_s=900,  # test-time adaptation on a large scan on a slow laptop
        version="1.2.0",
        deterministic=True,
        cases=("brain-mri-demo", "lowfield-sequences"),
        weights=SLOT.name,
        examples=(
            ToolExample(request="Segment the tumour.", args={}),
            ToolExample(request="Run the tumour segmentation.", args={}),
            ToolExample(request="Delineate the glioma.", args={}),
            ToolExample(request="Segment it with VISTA adaptation.", args={"adapt": "vista"}),
            ToolExample(
                request="This comes from a low-field scanner, segment with test-time adaptation.",
                args={"adapt": "vista"},
            ),
            ToolExample(request="Segment using TENT.", args={"adapt": "tent"}),
            ToolExample(request="Quick segmentation without adaptation, please.", args={"adapt": "none"}),
            ToolExample(request="Outline the enhancing tumour, core and oedema.", args={}),
            ToolExample(request="Segment the lesion and adapt to this new scanner.", args={"adapt": "vista"}),
            ToolExample(request="Use the source model as is to segment.", args={"adapt": "none"}),
            ToolExample(request="Make tumour masks.", args={}),
            ToolExample(request="Start the adaptation over and segment again.", args={"reset": True}),
            ToolExample(request="Segment with entropy minimisation (TENT).", args={"adapt": "tent"}),
            ToolExample(request="Produce ET, TC and WT masks.", args={}),
            ToolExample(request="Find the tumour boundaries.", args={}),
            ToolExample(request="Segment without any test-time adaptation.", args={"adapt": "none"}),
            ToolExample(
                request="Paediatric scan from another site: segment it, adapting on the fly.", args={"adapt": "vista"}
            ),
            ToolExample(request="Segment, resetting the adapted model first.", args={"reset": True}),
            ToolExample(request="Label the tumour sub-regions.", args={}),
            ToolExample(request="Where exactly is the tumour? Segment it.", args={}),
            ToolExample(request="segment", args={}),
            ToolExample(request="mask the tumour", args={}),
            ToolExample(request="can you mark where the cancer is?", args={}),
            ToolExample(request="Tumor segmentieren, bitte mit VISTA.", args={"adapt": "vista"}),
            ToolExample(request="Segmente la tumeur.", args={}),
            ToolExample(request="Segmenta el tumor sin adaptación.", args={"adapt": "none"}),
            ToolExample(request="seg w/ tent", args={"adapt": "tent"}),
            ToolExample(request="Draw the tumour regions.", args={}),
            ToolExample(request="Segment the brain tumour please.", args={}),
            ToolExample(request="Can you find the tumour?", args={}),
            ToolExample(request="Where is the tumour?", args={}),
            ToolExample(request="Run the segmentation with TENT adaptation.", args={"adapt": "tent"}),
            ToolExample(request="Segment with no adaptation.", args={"adapt": "none"}),
            ToolExample(request="tumour mask", args={}),
            ToolExample(request="Draw the outline of the tumour.", args={}),
            ToolExample(request="Identify the tumour regions.", args={}),
            ToolExample(request="Segment the glioma using the source model only.", args={"adapt": "none"}),
            ToolExample(request="Apply VISTA and segment.", args={"adapt": "vista"}),
            ToolExample(request="Detect and segment the lesion.", args={}),
            ToolExample(request="Kannst du den Tumor markieren?", args={}),
            ToolExample(request="Peux-tu segmenter la lésion ?", args={}),
            ToolExample(request="Segmenta il tumore.", args={}),
            ToolExample(request="Reset the adaptation before segmenting.", args={"reset": True}),
            ToolExample(request="Show me where the tumour is with a mask.", args={}),
            ToolExample(request="Segment with the plain source model, no adaptation.", args={"adapt": "none"}),
            ToolExample(request="Just run the base model without adapting.", args={"adapt": "none"}),
            ToolExample(request="find the tumor for me", args={}),
            ToolExample(request="Segmentá el tumor, por favor.", args={}),
            ToolExample(request="segment it using tent", args={"adapt": "tent"}),
            ToolExample(request="TENT adaptation, then segment.", args={"adapt": "tent"}),
            ToolExample(request="Give me the unadapted source model's segmentation.", args={"adapt": "none"}),
        ),
    )

    @staticmethod
    def _stream(ctx: ToolContext, args: SegmentArgs) -> dict:
        """This thread's adaptation stream for the method: the adapted model (built on first use), the cases adapted
        on so far, and those a cached result stood in for that the model has not yet seen. ``reset`` starts anew."""
        key = f"segmentation:{args.adapt}"
        if args.reset or key not in ctx.session:
            ctx.session[key] = {"adapter": None, "seen": [], "pending": []}
        return ctx.session[key]

    def cache_state(self, ctx: ToolContext, args: SegmentArgs) -> str:
        """The result depends on the volumes this thread's stream adapted on before (none after a reset)."""
        stream = ctx.session.get(f"segmentation:{args.adapt}")
        return "" if args.reset or stream is None else ",".join(stream["seen"])

    def on_cache_hit(self, ctx: ToolContext, args: SegmentArgs) -> None:
        stream = self._stream(ctx, args)
        stream["seen"].append(ctx.case.id)
        stream["pending"].append(ctx.case)

    def execute(self, ctx: ToolContext, args: SegmentArgs) -> ToolResult:
        import torch

        from macro.tools.segmentation.evaluate import dice, to_regions
        from macro.tools.segmentation.model import from_grid
        from macro.tools.segmentation.tta import Adapter, TTAConfig, binary_entropy, hierarchy_fix

        model, cfg, manifest = source_model()
        stream = self._stream(ctx, args)
        if stream["adapter"] is None:
            import copy

            stream["adapter"] = Adapter(copy.deepcopy(model), TTAConfig(method=args.adapt))
        adapter = stream["adapter"]
        for earlier in stream["pending"]:  # volumes whose results came from the cache: adapt on them as a run would
            adapter(torch.from_numpy(prepare(earlier.image, cfg.grid)[0])[None])
        stream["pending"] = []
        image, window = prepare(ctx.case.image, cfg.grid)
        probs, stats = adapter(torch.from_numpy(image)[None])
        stream["seen"].append(ctx.case.id)
        regions = to_regions(probs, window)
        labels = gli_labels(*regions)
        entropy = from_grid(binary_entropy(hierarchy_fix(probs))[0].mean(0, keepdim=True).numpy(), window)[0]
        wt = regions[2]
        mean_unc = float(entropy[wt].mean()) if wt.any() else float(entropy.mean())
        volumes = {r: round(float(regions[i].sum()) * ctx.case.voxel_ml, 2) for i, r in enumerate(REGIONS)}
        meta = {"adapt": args.adapt, "labels": {"1": "NCR", "2": "ED", "3": "ET"}, "weights_sha256": manifest["sha256"]}
        mask = ctx.store.save_nifti(labels, ctx.case.affine, "mask", f"tumour-{args.adapt}", meta)
        unc = ctx.store.save_nifti(
            entropy.astype(np.float32), ctx.case.affine, "heatmap", "uncertainty", {"measure": "binary entropy"}
        )
        text = (
            f"Segmented (adapt={args.adapt}, {stats['steps']} steps, {stats['seconds']:.1f} s, volume "
            f"{adapter.volumes} of this thread's stream): "
            f"ET {volumes['ET']:.2f} mL, TC {volumes['TC']:.2f} mL, WT {volumes['WT']:.2f} mL; mean uncertainty "
            f"{mean_unc:.3f}."
        )
        reference = None
        if ctx.case.labels is not None:
            truth = region_masks(ctx.case.labels, convention_for(ctx.case.label_path.name))
            scores = {r: dice(regions[i], truth[r]) for i, r in enumerate(REGIONS)}
            reference = {
                "file": ctx.case.label_path.name,
                "dice": {r: None if d is None else round(d / 100, 3) for r, d in scores.items()},
                "volumes_ml": {r: round(float(truth[r].sum()) * ctx.case.voxel_ml, 2) for r in REGIONS},
            }
            shown = ", ".join(f"{r} {'n/a' if d is None else f'{d:.2f}'}" for r, d in reference["dice"].items())
            text += f" Against the case's reference mask {reference['file']}: Dice {shown}."
        data = {
            "volumes_ml": volumes,
            "reference": reference,
            "mean_uncertainty": round(mean_unc, 4),
            "adapt": args.adapt,
            "steps": stats["steps"],
            "seconds": round(stats["seconds"], 2),
            "stream_position": adapter.volumes,
        }
        headline = (
            f"Segmented the tumour: whole tumour {volumes['WT']:.2f} mL, tumour core {volumes['TC']:.2f} mL, "
            f"enhancing tumour {volumes['ET']:.2f} mL."
        )
        caveats = []
        if args.adapt != "none":
            caveats.append(
                f"The segmentation model adapted itself to this scanner ({args.adapt.upper()}, {stats['steps']} "
                f"steps, scan {adapter.volumes} of this thread)."
            )
        return ToolResult(text=text, headline=headline, caveats=caveats, data=data, artifacts=[mask.ref(), unc.ref()])
