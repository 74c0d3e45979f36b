#!/usr/bin/env python
"""Download torchvision's ImageNet ResNet weights (the files the original MGD instructions use).

    python scripts/download_torchvision_resnet.py --depth 18|50 OUT.pth

Written to a temporary file and renamed, so an interrupted download leaves nothing behind.
Offline, it exits with one line saying where to put the file by hand.
"""
import argparse
import os
import sys
import tempfile
import urllib.request

URLS = {
    18: "https://download.pytorch.org/models/resnet18-5c106cde.pth",
    50: "https://download.pytorch.org/models/resnet50-19c8e357.pth",
}


def download(url: str, out: str, timeout_s: float = 30.0) -> None:
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=folder, prefix=".download-", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as sink, urllib.request.urlopen(url, timeout=timeout_s) as source:
            total = int(source.headers.get("Content-Length") or 0)
            done = 0
            while chunk := source.read(1 << 20):
                sink.write(chunk)
                done += len(chunk)
                if total:
                    print(f"\r{os.path.basename(out)}: {done / total:6.1%} of {total / 2**20:.0f} MiB",
                          end="", flush=True)
        print()
        os.replace(partial, out)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--depth", type=int, choices=sorted(URLS), required=True)
    parser.add_argument("out")
    args = parser.parse_args()
    url = URLS[args.depth]
    try:
        download(url, args.out)
    except OSError as error:
        sys.exit(f"error: cannot download {url} ({error}); offline, fetch that file elsewhere "
                 f"and put it at {args.out}, then run the same make target again")
    print(f"downloaded {url} -> {args.out}")


if __name__ == "__main__":
    main()
