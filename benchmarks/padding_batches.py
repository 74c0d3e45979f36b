"""How far apart are 1 process x 16 images and 8 processes x 2 images on mixed-size images?

Detectron2 pads every batch to its largest image (rounded up to the FPN's size divisibility),
and the padded border enters the features that MGD distils and matches. So the same 16 images
give other distillation losses and matching costs as one batch of 16 (1 GPU) than as 8
batches of 2 (8 GPUs x 2, each GPU padding its own pair). This script measures the difference
on one MGD model, with the 16 images of one orientation as the aspect-ratio grouping draws
them (mixed COCO aspect ratios), and on a control set whose images all have one size (there
the two splits may differ by float rounding only).

    python benchmarks/padding_batches.py --config-file CONFIG [--weights MGD_CHECKPOINT]
        [--images-from FOLDER] [--short 96] [KEY VALUE ...]

Prints, per distilled position: the distillation loss (after factor, before the divisor)
summed over the 16 images both ways, under one assignment, and their relative difference; the
mean matched cost of the matching solved from the 16 images both ways, and how many of its
pairs (one per teacher channel) differ. Without --weights the networks are randomly initialised.
"""
import argparse
import glob
import os

from mgd.bootstrap import use_detectron2_with_overlay

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
use_detectron2_with_overlay(REPO)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

#: width / height of COCO's common landscape shapes (640x480, 640x427, 640x360, 500x375, 612x612 ...)
ASPECTS = [4 / 3, 3 / 2, 16 / 9, 4 / 3, 1.0, 3 / 2, 4 / 3, 5 / 4]


def images(folder: str, count: int, short: int, mixed: bool):
    """``count`` images [3, H, W] (0..255), from the files in ``folder`` or random pixels,
    resized to a short side of ``short`` px and, if ``mixed``, COCO's aspect ratios."""
    files = sorted(glob.glob(os.path.join(folder, "*"))) if folder else []
    generator = torch.Generator().manual_seed(0)
    out = []
    for i in range(count):
        if files:
            from PIL import Image
            import numpy as np

            pixels = torch.from_numpy(np.asarray(Image.open(files[i % len(files)]).convert("RGB")).copy())
            image = pixels.permute(2, 0, 1).float()
        else:
            image = torch.rand(3, short, short, generator=generator) * 255
        aspect = ASPECTS[i % len(ASPECTS)] if mixed else 4 / 3
        size = (short, int(round(short * aspect)))
        out.append(F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0])
    return out


def batches(batch_images, per_batch: int):
    """The images in batches of ``per_batch``, as that many processes would each pad their own."""
    for start in range(0, len(batch_images), per_batch):
        yield [{"image": image, "height": image.shape[1], "width": image.shape[2]}
               for image in batch_images[start:start + per_batch]]


def matching(model, batch_images, per_batch: int):
    """(mean matched costs, assignments) of the matching solved from the images so batched."""
    model.distiller.reset_matching()
    for batch in batches(batch_images, per_batch):
        model.accumulate_matching(batch)
    costs = model.finish_matching()
    return costs, {k: v.clone() for k, v in model.distiller.assignments().items()}


def summed_losses(model, batch_images, per_batch: int):
    """{position: distillation loss summed over the images so batched} (current assignment)."""
    total = {}
    for batch in batches(batch_images, per_batch):
        for name, value in model.distillation_losses(batch).items():
            total[name] = total.get(name, 0.0) + float(value)
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", default="", help="an MGD checkpoint (t_net. and s_net.); default: random init")
    parser.add_argument("--images-from", default="", help="a folder of images (default: random pixels)")
    parser.add_argument("--short", type=int, default=96, help="short side in px (default 96)")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args()

    from detectron2.engine.mgd_config_file import load_config
    from detectron2.modeling import build_model
    import detectron2.modeling.meta_arch.mgd_retinanet  # noqa: F401

    cfg = load_config(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg)
    if args.weights:
        state = torch.load(args.weights, map_location="cpu", weights_only=False)
        missing, unexpected = model.load_state_dict(state.get("model", state), strict=False)
        if [k for k in missing if not k.startswith("distiller.")] or unexpected:
            raise SystemExit(f"error: {args.weights} does not fit the model ({len(missing)} missing, "
                             f"{len(unexpected)} unexpected)")
    model.eval()
    model.update_margins()
    with torch.no_grad():
        print(f"{args.config_file}, weights {args.weights or 'random init'}, short side {args.short} px, "
              f"size divisibility {model.s_net.backbone.size_divisibility}")
        for label, mixed in (("mixed aspect ratios (COCO's)", True), ("control: one size", False)):
            batch_images = images(args.images_from, 16, args.short, mixed)
            sizes = sorted({tuple(i.shape[1:]) for i in batch_images})
            costs_1, assigned_1 = matching(model, batch_images, 16)
            losses = {per_batch: summed_losses(model, batch_images, per_batch) for per_batch in (16, 2)}  # 1x16's matching
            costs_8, assigned_8 = matching(model, batch_images, 2)
            print(f"\n{label}: 16 images, sizes (h, w) {sizes}")
            print("distillation loss summed over the images (after factor, before the divisor; the 1x16 matching):")
            for (name, l1), l8 in zip(losses[16].items(), losses[2].values()):
                print(f"  {name:<12} 1x16 {l1:<12.6g} 8x2 {l8:<12.6g} relative difference {(l8 - l1) / abs(l1):+.2%}")
            print("matching solved from the 16 images:")
            for (name, c1), c8, a1, a8 in zip(costs_1.items(), costs_8.values(), assigned_1.values(), assigned_8.values()):
                print(f"  {name:<12} mean matched cost 1x16 {c1:.4f} 8x2 {c8:.4f} ({(c8 - c1) / abs(c1):+.2%}); "
                      f"{int((a1 != a8).sum())} of {a1.numel()} matched pairs differ")

if __name__ == "__main__":
    main()
