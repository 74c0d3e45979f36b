"""The libraries behind this repository's command lines (scripts/): the demo's synthetic COCO
generator (synthetic_coco), the results tables (results_table), the plots (plots), the CUDA
build environment (cuda_build_env), the study, and the two checkpoint tools of the original
repository (``python -m mgd_tools.merge_models`` / ``convert_output``; ``scripts/`` keeps the
original's names, merge-models-into-one.py and convert-output-to-d2.py, as shims). They may import mgd/; mgd/ never imports them, and nothing
imports scripts/.
"""
