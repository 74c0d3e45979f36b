"""The libraries behind this repository's command lines (scripts/): the demo's synthetic COCO
generator (synthetic_coco), the results tables (results_table), the plots (plots) and the CUDA
build environment (cuda_build_env). They may import mgd/; mgd/ never imports them, and nothing
imports scripts/.
"""
