"""Put a trained detector teacher (RetinaNet, Faster or Mask R-CNN) and a converted torchvision student backbone in one file.

    python -m mgd_tools.merge_models TEACHER.pth|pkl STUDENT.pkl OUT.pkl \
        [--teacher-depth 50] [--student-depth 18]

TEACHER: a Detectron2 detector checkpoint (e.g. model_final.pth of the base training, or a
.pkl); its keys are saved as ``t_net.<key>``. STUDENT: a torchvision ResNet converted by
Detectron2's tools/convert-torchvision-to-d2.py (``stem.*``, ``res2.*`` ... keys); its keys are
saved as ``s_net.backbone.bottom_up.<key>``. OUT is a Detectron2 pickle
``{"model": ..., "__author__": "TORCHVISION", "matching_heuristics": True}`` for
``MODEL.WEIGHTS`` of the MGD training. Inputs are read as data only; OUT is written atomically.
If either input carries the random-initialisation mark (``make weights RANDOM_INIT=1``), so
does OUT, and the MGD run says so in its log. The teacher must be deeper than the student
(read from the keys) and another file; --allow-shallow-teacher allows a teacher as deep as the
student or shallower (experiments).
"""

import sys

from mgd.checkpoint import (
    DEPTH_LAYOUTS,
    D2_BACKBONE_PREFIX,
    STUDENT_BACKBONE_PREFIX,
    TEACHER_PREFIX,
    check_distinct_inputs,
    check_merge_inputs,
    check_output_path,
    detector_of,
    extract_state_dict,
    human_size,
    is_random_init,
    layout_text,
    load_checkpoint_object,
    merge_teacher_student,
    save_d2_pickle,
)
from mgd.cli import OneLineArgumentParser, run_cli


def build_parser(prog: str = "python -m mgd_tools.merge_models"):
    p = OneLineArgumentParser(
        prog=prog,
        description="Merge a detector teacher and a converted torchvision student backbone "
                    "into one Detectron2 pickle for MGD training.")
    p.add_argument("teacher", metavar="TEACHER", help="teacher detector checkpoint (.pth or .pkl)")
    p.add_argument("student", metavar="STUDENT",
                   help="student backbone converted by convert-torchvision-to-d2.py (.pkl)")
    p.add_argument("output", metavar="OUT", help="output pickle (.pkl)")
    depths = sorted(DEPTH_LAYOUTS)
    p.add_argument("--teacher-depth", type=int, choices=depths, default=None,
                   help="refuse a teacher whose ResNet is not this deep")
    p.add_argument("--student-depth", type=int, choices=depths, default=None,
                   help="refuse a student whose ResNet is not this deep")
    p.add_argument("--allow-shallow-teacher", action="store_true",
                   help="merge a teacher that is not deeper than the student (experiments)")
    return p


def main(argv=None, prog: str = "python -m mgd_tools.merge_models"):
    args = build_parser(prog).parse_args(argv)
    check_output_path(args.output, inputs=[args.teacher, args.student])
    check_distinct_inputs(args.teacher, args.student)

    teacher_file = load_checkpoint_object(args.teacher, what="teacher")
    teacher = extract_state_dict(teacher_file, args.teacher, what="teacher")
    student_file = load_checkpoint_object(args.student, what="student")
    student = extract_state_dict(student_file, args.student, what="student")
    check_merge_inputs(teacher, student, args.teacher, args.student, args.teacher_depth,
                       args.student_depth, args.allow_shallow_teacher)  # mgd.checkpoint.inputs decides

    merged = merge_teacher_student(teacher, student)
    random_init = [name for name, obj in (("teacher", teacher_file), ("student", student_file))
                   if is_random_init(obj)]
    size = save_d2_pickle(merged, args.output, random_init=bool(random_init))
    print(f"teacher {args.teacher}: {len(teacher)} tensors -> {TEACHER_PREFIX}* "
          f"({detector_of(teacher) or 'detector'}, {layout_text(teacher, D2_BACKBONE_PREFIX)})")
    print(f"student {args.student}: {len(student)} tensors -> {STUDENT_BACKBONE_PREFIX}* "
          f"({layout_text(student)})")
    print(f"wrote {args.output}: {len(merged)} tensors, {human_size(size)}"
          + (f"; marked as random init (the {' and '.join(random_init)} descend from "
             "RANDOM_INIT=1 weights)" if random_init else ""))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
