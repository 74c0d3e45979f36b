#!/usr/bin/env python
"""Get torchvision's ResNet-18 and -50 and convert them with the Detectron2 checkout's converter.

    python scripts/get_weights.py --weights-dir weights --checkout detectron2 [--random-init]

What `make weights` runs. For each depth: WEIGHTS_DIR/r-{depth}.pkl is kept when it holds the
kind asked for (ImageNet, or random init with --random-init: the mark of
scripts/random_init_marker.py tells them apart); random-init weights are replaced by ImageNet
ones; ImageNet weights are never overwritten by random ones (one ``error:`` line, exit 2).
A missing WEIGHTS_DIR/resnet{depth}[-random].pth is downloaded
(scripts/download_torchvision_resnet.py) or made (scripts/make_random_torchvision_weights.py),
then converted by the checkout's tools/convert-torchvision-to-d2.py into a temporary file,
marked with --random-init, and renamed. Each command run is printed with a leading ``+``.
"""
import glob
import os
import subprocess
import sys

from mgd.checkpoint import is_random_init, load_checkpoint_object
from mgd.cli import OneLineArgumentParser, run_cli
from mgd.errors import UserError
from mgd_tools.torchvision_convert import ConversionFailed, run_converter

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
DEPTHS = (18, 50)


class WeightsError(UserError):
    """A weights file that may not be replaced, or a step that failed."""


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    """Print ``+ cmd`` and run it; a failure (its own error line already printed) ends here."""
    print("+ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, **kwargs)
    if proc.returncode != 0:
        sys.exit(proc.returncode)
    return proc


def get_weights(weights_dir: str, checkout: str, random_init: bool) -> None:
    wanted = "random" if random_init else "pretrained"
    converter = os.path.join(checkout, "tools", "convert-torchvision-to-d2.py")
    if not glob.glob(os.path.join(checkout, "detectron2", "_C*.so")) or not os.path.isfile(converter):
        raise WeightsError(f"Detectron2 is not built in {checkout}; run 'make detectron2' first")
    os.makedirs(weights_dir, exist_ok=True)
    for depth in DEPTHS:
        pkl = os.path.join(weights_dir, f"r-{depth}.pkl")
        pth = os.path.join(weights_dir, f"resnet{depth}{'-random' if random_init else ''}.pth")
        if os.path.exists(pkl):
            kind = "random" if is_random_init(load_checkpoint_object(pkl, what="weights")) else "pretrained"
            if kind == wanted:
                print(f"{pkl} exists ({kind} weights), kept")
                continue
            if random_init:
                raise WeightsError(f"{pkl} holds ImageNet weights; put random-init ones in another folder: "
                                   "make weights RANDOM_INIT=1 WEIGHTS_DIR=weights/random")
            print(f"{pkl} holds random-init weights (made with RANDOM_INIT=1): replacing them with the ImageNet ones")
        if not os.path.exists(pth):
            maker = "make_random_torchvision_weights.py" if random_init else "download_torchvision_resnet.py"
            run([sys.executable, os.path.join(SCRIPTS, maker), "--depth", str(depth), pth])
        part = pkl + ".part"
        print(f"+ {sys.executable} {converter} {pth} {pkl}", flush=True)
        try:
            tensors = run_converter(converter, pth, part).count("->")
        except ConversionFailed as failure:
            raise WeightsError(f"converting {pth} failed ({failure}); delete it and run `make weights` again") from None
        if random_init:
            subprocess.run([sys.executable, os.path.join(SCRIPTS, "random_init_marker.py"), "mark", part],
                           check=True, stdout=subprocess.DEVNULL)
        os.replace(part, pkl)
        print(f"converted {pth} -> {pkl} ({tensors} tensors{'; marked random-init' if random_init else ''})")


def main(argv=None):
    p = OneLineArgumentParser(prog="get_weights.py", description=__doc__.splitlines()[0])
    p.add_argument("--weights-dir", default="weights")
    p.add_argument("--checkout", default=os.environ.get("MGD_DETECTRON2_DIR", "detectron2"),
                   help="the Detectron2 checkout whose converter is used")
    p.add_argument("--random-init", action="store_true", help="random-init ResNets, no download")
    args = p.parse_args(argv)
    get_weights(args.weights_dir, args.checkout, args.random_init)


if __name__ == "__main__":
    sys.exit(run_cli(main))
