"""Which checkpoint may start which run (mgd.checkpoint.strict), on key names and shapes only.

The checkpoints are built here from the key names of Detectron2's ResNet/RetinaNet (the
builders of scripts_support, checked there against torchvision and the converter);
the expected verdicts are the rules of docs/checkpoints.md, written out case by case.
Framework-free: no Detectron2, no torch.
"""

import pytest

from scripts_support import converted_student, d2_resnet_keys, rcnn_state_dict, retinanet_state_dict

from mgd.checkpoint import (
    CheckpointError,
    Role,
    check_checkpoint_role,
    check_model_load,
    check_weights_path,
    check_weights_state,
    checkpoint_kind,
    match_keys,
    plan_load,
    select_network,
    strip_prefix,
)

ANCHORS = 9  # 3 sizes x 3 aspect ratios per position


def detector(depth, classes=4, prefix=""):
    """``{key: shape}`` of a RetinaNet-R{depth}: shapes that matter are real, others (1,)."""
    shapes = {prefix + k: (1,) for k in retinanet_state_dict(depth)}
    shapes[prefix + "head.cls_score.weight"] = (ANCHORS * classes, 256, 3, 3)
    shapes[prefix + "head.cls_score.bias"] = (ANCHORS * classes,)
    return shapes


def rcnn(depth, classes=4, prefix="", mask=False):
    """``{key: shape}`` of a Faster (``mask``: Mask) R-CNN-R{depth}: the class-bound shapes real."""
    shapes = {prefix + k: (1,) for k in rcnn_state_dict(depth, mask)}
    shapes[prefix + "roi_heads.box_predictor.cls_score.weight"] = (classes + 1, 1024)
    shapes[prefix + "roi_heads.box_predictor.cls_score.bias"] = (classes + 1,)
    shapes[prefix + "roi_heads.box_predictor.bbox_pred.weight"] = (4 * classes, 1024)
    shapes[prefix + "roi_heads.box_predictor.bbox_pred.bias"] = (4 * classes,)
    if mask:
        shapes[prefix + "roi_heads.mask_head.predictor.weight"] = (classes, 256, 1, 1)
        shapes[prefix + "roi_heads.mask_head.predictor.bias"] = (classes,)
    return shapes


def backbone(depth, prefix=""):
    return {prefix + k: (1,) for k in converted_student(depth)["model"]}


def merged(teacher_depth=50, student_depth=18, classes=4):
    """What scripts/merge-models-into-one.py writes: a teacher RetinaNet, a student backbone."""
    return {**detector(teacher_depth, classes, "t_net."),
            **backbone(student_depth, "s_net.backbone.bottom_up.")}


def distilled(teacher_depth=50, student_depth=18, classes=4):
    """What the MGD training writes: both whole RetinaNets."""
    return {**detector(teacher_depth, classes, "t_net."),
            **detector(student_depth, classes, "s_net.")}


def refused(shapes, role, **expect):
    with pytest.raises(CheckpointError) as info:
        check_checkpoint_role(shapes, "w.pkl", role, num_anchors=ANCHORS, **expect)
    message = str(info.value)
    assert "\n" not in message and "'w.pkl'" in message
    return message


def accepted(shapes, role, **expect):
    check_checkpoint_role(shapes, "w.pkl", role, num_anchors=ANCHORS, **expect)


# ---- kinds ----------------------------------------------------------------------------------

def test_checkpoint_kinds():
    assert checkpoint_kind(merged()) == "distillation"
    assert checkpoint_kind(detector(18)) == "detector"
    assert checkpoint_kind(backbone(18)) == "backbone"
    assert checkpoint_kind(["layer1.0.conv1.weight", "conv1.weight"]) == "torchvision"
    assert checkpoint_kind(["fc.weight"]) == "unknown"


# ---- MGD training ---------------------------------------------------------------------------

MGD = dict(depth=18, teacher_depth=50, num_classes=4)


def test_mgd_training_accepts_the_merged_file_and_its_own_output():
    accepted(merged(), Role.MGD_TRAINING, **MGD)
    accepted(distilled(), Role.MGD_TRAINING, **MGD)


def test_mgd_training_refuses_teacher_and_student_swapped():
    message = refused(merged(teacher_depth=18, student_depth=50), Role.MGD_TRAINING, **MGD)
    assert "teacher (t_net.*) is ResNet-18" in message and "MGD.TEACHER.DEPTH" in message
    assert "the student where the teacher is expected" in message


def test_mgd_training_refuses_a_student_of_the_wrong_depth():
    message = refused(merged(student_depth=34), Role.MGD_TRAINING, **MGD)
    assert "student (s_net.*) is ResNet-34" in message and "ResNet-18" in message


@pytest.mark.parametrize("shapes, words", [
    (detector(50), "a single RetinaNet"),
    (backbone(18), "a bare ResNet backbone"),
    (backbone(18, "s_net.backbone.bottom_up."), "no teacher (t_net.* keys)"),
    ({**backbone(50, "t_net.backbone.bottom_up."), **backbone(18, "s_net.backbone.bottom_up.")},
     "no detection head"),
])
def test_mgd_training_refuses_files_without_a_whole_teacher(shapes, words):
    assert words in refused(shapes, Role.MGD_TRAINING, **MGD)


def test_mgd_training_refuses_a_file_without_the_students_backbone():
    teacher_only = detector(50, 4, "t_net.")
    assert "no student backbone (s_net.backbone.bottom_up.* keys)" in refused(teacher_only, Role.MGD_TRAINING, **MGD)
    misplaced = {**detector(50, 4, "t_net."), **backbone(18, "s_net.bottom_up.")}  # a wrong prefix
    assert "no student backbone" in refused(misplaced, Role.MGD_TRAINING, **MGD)


def test_mgd_training_never_reinitialises_the_teachers_classifier():
    message = refused(merged(classes=80), Role.MGD_TRAINING, **MGD)
    assert "80 classes" in message and "NUM_CLASSES 4" in message and "never" in message


# ---- evaluation -----------------------------------------------------------------------------

def test_evaluation_of_the_right_net_is_accepted():
    accepted(detector(18), Role.STUDENT, depth=18, num_classes=4)
    accepted(detector(50), Role.TEACHER, depth=50, num_classes=4)
    accepted(strip_prefix(distilled(), "s_net."), Role.STUDENT, depth=18)
    accepted(strip_prefix(distilled(), "t_net."), Role.TEACHER, depth=50)


def test_evaluation_refuses_the_teacher_where_the_student_is_expected():
    message = refused(detector(50), Role.STUDENT, depth=18, num_classes=4)
    assert "ResNet-50" in message and "the student being evaluated is ResNet-18" in message
    assert "a teacher where the student is expected" in message and "--eval-teacher" in message


def test_evaluation_refuses_the_student_where_the_teacher_is_expected():
    message = refused(detector(18), Role.TEACHER, depth=50, num_classes=4)
    assert "the teacher being evaluated is ResNet-50" in message
    assert "the student where the teacher is expected" in message
    assert "drop --eval-teacher" in message


def test_evaluation_refuses_networks_without_a_trained_head():
    merged_student = strip_prefix(merged(), "s_net.")
    assert "merged input" in refused(merged_student, Role.STUDENT, depth=18)
    assert "a backbone" in refused(backbone(18), Role.RETINANET, depth=18)


def test_evaluation_refuses_another_class_count_but_training_accepts_it():
    message = refused(detector(18, classes=80), Role.RETINANET, depth=18, num_classes=4)
    assert "trained for 80 classes" in message and "NUM_CLASSES 4" in message
    accepted(detector(18, classes=80), Role.RETINANET_TRAINING, depth=18, num_classes=4)


def test_plain_runs_refuse_distillation_files_and_other_depths():
    assert "extract one net" in refused(merged(), Role.RETINANET_TRAINING, depth=18)
    assert "plain detector" in refused(distilled(), Role.RETINANET, depth=18)
    message = refused(backbone(50), Role.RETINANET_TRAINING, depth=18)
    assert "ResNet-50" in message and "ResNet-18" in message
    assert "unconverted torchvision" in refused({"layer1.0.conv1.weight": (1,)}, Role.RETINANET_TRAINING,
                                                depth=18)
    accepted(backbone(18), Role.RETINANET_TRAINING, depth=18)
    accepted(detector(18), Role.RETINANET_TRAINING, depth=18)


# ---- key matching, as Detectron2's loader pairs keys ----------------------------------------

def naive_heuristic_match(model_keys, ckpt_keys):
    """Detectron2's rule, spelled out: for each model key, among the checkpoint keys equal to
    it or ending it after a '.', the longest."""
    pairs = {}
    for mk in model_keys:
        candidates = [ck for ck in ckpt_keys if mk == ck or mk.endswith("." + ck)]
        if candidates:
            pairs[mk] = max(candidates, key=len)
    return pairs


def test_match_keys_follows_the_suffix_rule():
    model = d2_resnet_keys(18) + ["head.cls_score.weight", "backbone.fpn_lateral3.weight"]
    ckpt = [k[len("backbone.bottom_up."):] for k in d2_resnet_keys(18)] + [
        "conv1.weight", "lateral3.weight", "cls_score.weight", "x.head.cls_score.weight"]
    got = match_keys(model, ckpt, heuristics=True)
    assert got == naive_heuristic_match(model, ckpt)
    assert got["backbone.bottom_up.res2.0.conv1.weight"] == "res2.0.conv1.weight"
    assert got["head.cls_score.weight"] == "cls_score.weight"
    assert "backbone.fpn_lateral3.weight" not in got  # 'lateral3.weight' is no '.'-suffix
    assert match_keys(model, ckpt, heuristics=False) == {}


# ---- every tensor against the model ---------------------------------------------------------

def plan(model, ckpt, role, heuristics=False):
    return plan_load(model, ckpt, "w.pkl", role, heuristics=heuristics)


def plan_refused(model, ckpt, role):
    with pytest.raises(CheckpointError) as info:
        plan(model, ckpt, role)
    assert "\n" not in str(info.value) and "'w.pkl'" in str(info.value)
    return str(info.value)


def test_identical_shapes_load_as_they_are():
    assert plan(detector(18), detector(18), Role.RETINANET) == []
    assert plan(distilled(), merged(), Role.MGD_TRAINING) == []


def test_fine_tuning_on_another_label_set_reinitialises_only_the_classifier():
    assert plan(detector(18, 4), detector(18, 80), Role.RETINANET_TRAINING) == [
        "head.cls_score.bias", "head.cls_score.weight"]
    assert plan(distilled(classes=4), {**merged(classes=4), **detector(18, 80, "s_net.")},
                Role.MGD_TRAINING) == ["s_net.head.cls_score.bias", "s_net.head.cls_score.weight"]


def test_classifier_mismatch_is_refused_at_evaluation_and_for_the_teacher():
    message = plan_refused(detector(18, 4), detector(18, 80), Role.RETINANET)
    assert "'head.cls_score.bias' has shape (720,) in the file and (36,) in the model" in message
    assert "another number of classes" in message
    message = plan_refused(distilled(classes=4), merged(classes=80), Role.MGD_TRAINING)
    assert "does not fit the teacher" in message and "'t_net.head.cls_score.bias'" in message


def test_any_other_shape_mismatch_is_refused_naming_the_first_tensor():
    ckpt = detector(18, 80)
    ckpt["backbone.fpn_lateral3.weight"] = (128, 64, 1, 1)
    message = plan_refused(detector(18, 4), ckpt, Role.RETINANET_TRAINING)
    assert "'backbone.fpn_lateral3.weight' has shape (128, 64, 1, 1) in the file and (1,)" in message
    assert "3 tensors differ" in message and "the detector being trained" in message


def test_missing_tensors():
    heads = [k for k in detector(18) if k.startswith("head.")]
    no_head = {k: v for k, v in detector(18).items() if k not in heads}
    assert plan(detector(18), no_head, Role.RETINANET_TRAINING) == []  # ImageNet backbone into a fresh detector
    message = plan_refused(detector(18), no_head, Role.RETINANET)
    assert f"lacks tensor {sorted(heads)[0]!r} and {len(heads) - 1} more" in message
    incomplete = merged()
    del incomplete["t_net.head.bbox_pred.bias"]
    assert "the teacher, which MGD training needs whole" in plan_refused(
        distilled(), incomplete, Role.MGD_TRAINING)
    no_stem = merged()
    del no_stem["s_net.backbone.bottom_up.stem.conv1.weight"]
    message = plan_refused(distilled(), no_stem, Role.MGD_TRAINING)
    assert "'s_net.backbone.bottom_up.stem.conv1.weight'" in message
    assert "the student's backbone, which MGD training starts from" in message


def test_config_buffers_are_not_compared():
    model = {**detector(18), "pixel_mean": (3, 1, 1), "anchor_generator.cell_anchors.0": (9, 4)}
    ckpt = {**detector(18), "pixel_mean": (1, 1, 1)}
    assert plan(model, ckpt, Role.RETINANET) == []


# ---- roles and paths ------------------------------------------------------------------------

@pytest.mark.parametrize("mgd, eval_only, eval_teacher, role", [
    (True, False, False, Role.MGD_TRAINING),        # make distill, the probe
    (False, False, False, Role.RETINANET_TRAINING),  # make base
    (True, True, False, Role.STUDENT),              # make eval
    (True, True, True, Role.TEACHER),               # make eval EVAL_TEACHER=1
    (False, True, False, Role.RETINANET),           # evaluating a base run
])
def test_the_role_of_a_run(mgd, eval_only, eval_teacher, role):
    assert Role.of_run(mgd=mgd, eval_only=eval_only, eval_teacher=eval_teacher) is role
    assert role.mgd is mgd and role.training is (not eval_only)


def test_eval_teacher_needs_an_mgd_config():
    with pytest.raises(CheckpointError, match="--eval-teacher needs an MGD config"):
        Role.of_run(mgd=False, eval_only=True, eval_teacher=True)


def test_the_role_a_loader_serves_by_default():
    assert Role.of_loader(detector(18), "t_net.") is Role.TEACHER
    assert Role.of_loader(detector(18), "s_net.") is Role.STUDENT
    assert Role.of_loader(distilled()) is Role.MGD_TRAINING
    assert Role.of_loader(detector(18)) is Role.RETINANET_TRAINING
    assert (Role.TEACHER.prefix, Role.STUDENT.prefix, Role.RETINANET.prefix) == ("t_net.", "s_net.", "")


def test_roles_are_not_strings():
    with pytest.raises(TypeError):
        check_checkpoint_role(detector(18), "w.pkl", "eval-student", depth=18)


def test_weights_paths(tmp_path):
    weights = tmp_path / "w.pkl"
    assert check_weights_path("", Role.RETINANET_TRAINING) is False  # random initialisation
    for role, hint in ((Role.MGD_TRAINING, "make merge"), (Role.STUDENT, "make convert-all"),
                       (Role.TEACHER, "EVAL_TEACHER=1")):
        with pytest.raises(CheckpointError, match="MODEL.WEIGHTS is empty: this run needs trained weights"):
            check_weights_path("", role)
        with pytest.raises(CheckpointError, match=f"{weights} not found; .*{hint}"):
            check_weights_path(str(weights), role)
    with pytest.raises(CheckpointError, match="is a folder"):
        check_weights_path(str(tmp_path), Role.RETINANET)
    assert check_weights_path("detectron2://ImageNetPretrained/MSRA/R-50.pkl", Role.RETINANET_TRAINING) is False
    weights.write_bytes(b"x")
    assert check_weights_path(str(weights), Role.STUDENT) is True


def test_select_network_takes_one_net_of_an_mgd_file():
    assert set(select_network(distilled(), "w.pkl", Role.TEACHER)) == set(detector(50))
    assert set(select_network(distilled(), "w.pkl", Role.STUDENT)) == set(detector(18))
    assert select_network(detector(18), "w.pkl", Role.STUDENT) == detector(18)  # a split file
    assert select_network(merged(), "w.pkl", Role.MGD_TRAINING) == merged()
    with pytest.raises(CheckpointError, match="without s_net.\\* tensors"):
        select_network(detector(50, 4, "t_net."), "w.pkl", Role.STUDENT)


def test_check_weights_state_judges_the_roles_net():
    check_weights_state(distilled(), "w.pkl", Role.TEACHER, depth=50)
    with pytest.raises(CheckpointError, match="the student being evaluated is ResNet-50"):
        check_weights_state(distilled(), "w.pkl", Role.STUDENT, depth=50)


def test_check_model_load_reads_the_depths_from_the_model():
    assert check_model_load(distilled(), merged(), "w.pkl", Role.MGD_TRAINING, heuristics=False) == []
    with pytest.raises(CheckpointError, match="its teacher \\(t_net.\\*\\) is ResNet-18"):
        check_model_load(distilled(), merged(teacher_depth=18, student_depth=50), "w.pkl",
                         Role.MGD_TRAINING, heuristics=False)
    module = {"module." + k: v for k, v in detector(18).items()}  # a DistributedDataParallel save
    assert check_model_load(detector(18), module, "w.pkl", Role.RETINANET, heuristics=False) == []


def test_a_scripts_input_gets_no_train_net_flags_in_its_hint():
    """scripts/measure_matched_cost.py names its input "teacher checkpoint": the hint names
    the depth, not --eval-teacher (a train_net.py flag)."""
    with pytest.raises(CheckpointError) as info:
        check_checkpoint_role(detector(18), "w.pkl", Role.TEACHER, depth=50, what="teacher checkpoint")
    message = str(info.value)
    assert message.startswith("teacher checkpoint 'w.pkl' is ResNet-18")
    assert "pass the teacher's checkpoint (ResNet-50)" in message and "--eval-teacher" not in message


# ---- other detectors: Faster / Mask R-CNN ----------------------------------------------------

FASTER, MASK, RETINA = "Faster R-CNN", "Mask R-CNN", "RetinaNet"


def test_the_detector_a_file_holds_is_read_from_its_head_keys():
    from mgd.checkpoint import detector_of

    assert checkpoint_kind(rcnn(50)) == "detector"
    assert (detector_of(rcnn(50)), detector_of(rcnn(50, mask=True)), detector_of(detector(50))) == (FASTER, MASK, RETINA)
    assert detector_of(backbone(18)) is None
    both = {**rcnn(50, prefix="t_net."), **backbone(18, "s_net.backbone.bottom_up.")}
    assert (detector_of(both, "t_net."), detector_of(both, "s_net.")) == (FASTER, None)


def test_a_two_stage_distillation_takes_its_own_kind_and_refuses_the_others():
    faster = dict(MGD, detector=FASTER, teacher_detector=FASTER)
    merged_faster = {**rcnn(50, prefix="t_net."), **backbone(18, "s_net.backbone.bottom_up.")}
    accepted(merged_faster, Role.MGD_TRAINING, **faster)
    accepted({**rcnn(50, prefix="t_net."), **rcnn(18, prefix="s_net.")}, Role.MGD_TRAINING, **faster)
    message = refused(merged_faster, Role.MGD_TRAINING, **dict(MGD, detector=RETINA, teacher_detector=RETINA))
    assert "holds a Faster R-CNN, but the config's teacher is a RetinaNet (MGD.TEACHER.META_ARCHITECTURE)" in message
    message = refused(merged(), Role.MGD_TRAINING, **faster)
    assert "holds a RetinaNet, but the config's teacher is a Faster R-CNN" in message
    mask_teacher = {**rcnn(50, prefix="t_net.", mask=True), **backbone(18, "s_net.backbone.bottom_up.")}
    assert "holds a Mask R-CNN, but the config's teacher is a Faster R-CNN" in refused(mask_teacher, Role.MGD_TRAINING,
                                                                                       **faster)
    # a resumed run's own file: the student's heads are of the config's kind too
    other_student = {**rcnn(50, prefix="t_net."), **detector(18, prefix="s_net.")}
    assert "the config's student is a Faster R-CNN" in refused(other_student, Role.MGD_TRAINING, **faster)
    # the teacher's class count is read from its box predictor (classes + background)
    assert "MODEL.ROI_HEADS.NUM_CLASSES 80" in refused(merged_faster, Role.MGD_TRAINING, **dict(faster, num_classes=80))


@pytest.mark.parametrize("role, depth", [(Role.STUDENT, 18), (Role.TEACHER, 50), (Role.RETINANET, 18)])
def test_an_evaluation_refuses_a_detector_of_another_kind(role, depth):
    accepted(rcnn(depth), role, depth=depth, num_classes=4, detector=FASTER)
    message = refused(rcnn(depth, mask=True), role, depth=depth, detector=FASTER)
    assert "holds a Mask R-CNN, but" in message and "is a Faster R-CNN" in message
    assert "holds a RetinaNet" in refused(detector(depth), role, depth=depth, detector=FASTER)
    assert "MODEL.ROI_HEADS.NUM_CLASSES 80" in refused(rcnn(depth), role, depth=depth, num_classes=80, detector=FASTER)


def test_a_plain_two_stage_training_starts_from_a_backbone_but_not_from_a_retinanet():
    accepted(backbone(18), Role.RETINANET_TRAINING, depth=18, detector=FASTER)
    accepted(rcnn(18), Role.RETINANET_TRAINING, depth=18, detector=FASTER)
    assert "holds a RetinaNet, but the detector being trained is a Faster R-CNN" in refused(
        detector(18), Role.RETINANET_TRAINING, depth=18, detector=FASTER)


def test_a_new_label_set_reinitialises_the_two_stage_classifiers_only():
    model, ckpt = rcnn(18, classes=4, mask=True), rcnn(18, classes=80, mask=True)
    dropped = plan_load(model, ckpt, "w.pkl", Role.RETINANET_TRAINING, heuristics=False)
    assert dropped == sorted(k for k in model if k.startswith(("roi_heads.box_predictor.", "roi_heads.mask_head.predictor.")))
    with pytest.raises(CheckpointError, match="another number of classes"):
        plan_load(model, ckpt, "w.pkl", Role.RETINANET, heuristics=False)
    teacher_model = {**rcnn(50, prefix="t_net."), **rcnn(18, prefix="s_net.")}
    teacher_file = {**rcnn(50, classes=80, prefix="t_net."), **rcnn(18, prefix="s_net.")}
    with pytest.raises(CheckpointError, match="does not fit the teacher"):
        plan_load(teacher_model, teacher_file, "w.pkl", Role.MGD_TRAINING, heuristics=False)


def test_a_loader_reads_the_models_detectors_from_its_keys():
    model = {**rcnn(50, prefix="t_net."), **rcnn(18, prefix="s_net.")}
    with pytest.raises(CheckpointError, match="holds a RetinaNet, but the config's teacher is a Faster R-CNN"):
        check_model_load(model, {**detector(50, prefix="t_net."), **backbone(18, "s_net.backbone.bottom_up.")},
                         "w.pkl", Role.MGD_TRAINING, heuristics=False)
    with pytest.raises(CheckpointError, match="holds a Mask R-CNN, but the detector being evaluated is a Faster R-CNN"):
        check_model_load(rcnn(18), rcnn(18, mask=True), "w.pkl", Role.RETINANET, heuristics=False)
