#!/usr/bin/env bash
# Convert every X.pth of an output folder to a Detectron2 X.pkl (the student), or with
# --eval-teacher to X.teacher.pkl (the teacher), printing "old -> new" per file; exits non-zero
# if any conversion fails.
#   scripts/convert-all.sh [OUTPUT_DIR] [--eval-teacher]        (default OUTPUT_DIR: output)
# Same loop as the original README's snippet, run in one Python process (scripts/convert_all.py).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python}" "$here/convert_all.py" "$@"
