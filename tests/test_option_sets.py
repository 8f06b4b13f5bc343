"""One option vocabulary (tdet.client.optionfields): each option set is a dataclass whose fields carry the
help, range and setting name; the `tdet repo build` flags, the postprocess config parameters, the recipe
`eval` keys and the checks all come from those fields."""

import argparse
import dataclasses

import pytest

from tdet.client.errors import UserError
from tdet.client.optionfields import add_arguments, from_args, from_settings, settings
from tdet.client.options import DetectOptions, InvalidParameterError
from tdet.ensembles.options import DETECT_FIELDS, BuildOptions, VersionPolicy


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_arguments(p, BuildOptions)
    return p


def test_every_build_option_is_a_flag_and_the_flags_make_the_options():
    p = _build_parser()
    flags = {a.dest: a.option_strings[0] for a in p._actions if a.option_strings and a.dest != "help"}
    assert set(flags) == {f.name for f in dataclasses.fields(BuildOptions)}
    # the flags users know did not change with the field names
    assert (flags["conf"], flags["iou"], flags["max_det"], flags["clip"]) == (
        "--score-threshold", "--iou-threshold", "--max-detections", "--clip")
    assert from_args(BuildOptions, p.parse_args([])) == BuildOptions()
    got = from_args(BuildOptions, p.parse_args(["--score-threshold", "0.3", "--max-detections", "50", "--clip",
                                                 "--engine", "tensorrt", "--version-policy", "specific:1,3"]))
    assert got == BuildOptions(conf=0.3, max_det=50, clip=True, engine="tensorrt",
                               version_policy=VersionPolicy("specific", versions=(1, 3)))
    assert got.detect == DetectOptions(conf=0.3, iou=0.7, max_det=50, clip=True)
    assert {f.name for f in dataclasses.fields(DetectOptions)} >= set(DETECT_FIELDS)


@pytest.mark.parametrize("kw, message", [
    ({"conf": 1.5}, "--score-threshold=1.5 must be a number in [0, 1]"),
    ({"max_det": 0}, "--max-detections=0 must be a number >= 1"),
    ({"max_batch_size": 0}, "--max-batch-size=0 must be a number >= 1"),
    ({"ort_threads": -1}, "--ort-threads=-1 must be a number >= 0"),
    ({"queue_delay_us": 2.5}, "--queue-delay-us=2.5 must be an integer"),
    ({"engine": "tvm"}, "--engine 'tvm': use onnxruntime or tensorrt"),
    ({"precision": "int8"}, "--precision 'int8': use fp16 or fp32"),
])
def test_build_options_are_checked_when_made(kw, message):
    with pytest.raises(UserError) as err:
        BuildOptions(**kw)
    assert str(err.value) == message


def test_a_plan_precision_is_refused_for_an_onnxruntime_engine_and_fp16_when_not_given():
    # refused in the option set itself, so Python callers of build_repository get it too (not only the CLI)
    with pytest.raises(UserError, match=r"^--precision fp32 is the TensorRT plan's \(--engine tensorrt\)"):
        BuildOptions(precision="fp32")
    assert BuildOptions().precision is None
    assert BuildOptions(engine="tensorrt").plan_precision == "fp16"
    assert BuildOptions(engine="tensorrt", precision="fp32").plan_precision == "fp32"


def test_a_bad_build_flag_is_one_line_exit_2(tmp_path, capsys):
    from tdet.client.cli import main

    assert main(["repo", "build", "--onnx", str(tmp_path / "m.onnx"), "--score-threshold", "1.5"]) == 2
    assert capsys.readouterr().err == "tdet repo build: error: --score-threshold=1.5 must be a number in [0, 1]\n"


def test_detect_options_are_checked_in_one_place():
    with pytest.raises(InvalidParameterError, match=r"iou=-0.1 must be a number in \[0, 1\]"):
        DetectOptions(iou=-0.1)
    with pytest.raises(InvalidParameterError, match=r"max_det=0 must be a number >= 1"):
        DetectOptions(max_det=0)


def test_the_postprocess_config_parameters_round_trip():
    """The config keys and their text are what the served postprocess has always read."""
    opts = BuildOptions(conf=0.25, iou=0.5, max_det=30, clip=True)
    params = settings(opts.detect)
    assert params == {"score_threshold": "0.25", "iou_threshold": "0.5", "max_detections": "30", "clip": "true"}
    assert settings(BuildOptions().detect) == {"score_threshold": "0.05", "iou_threshold": "0.7",
                                               "max_detections": "100", "clip": "false"}
    assert DetectOptions.from_config({**params, "family": "damo-yolo", "input_hw": "640,640"}) == opts.detect
    with pytest.raises(UserError, match="config parameter clip='maybe' must be true or false"):
        DetectOptions.from_config({"clip": "maybe"})


def test_recipe_eval_keys_are_the_setting_names():
    pytest.importorskip("torch")
    from tdet.training.engine.evaluator import postprocess_kwargs

    assert postprocess_kwargs({"score_threshold": 0.05, "iou_threshold": 0.7, "max_detections": 100}) == {
        "conf": 0.05, "iou": 0.7, "max_det": 100}
    assert postprocess_kwargs({"max_detections": 100}) == {"max_det": 100}  # RT-DETRv2: no threshold given
    with pytest.raises(UserError, match=r"unknown recipe eval key\(s\) \['score_thr'\]"):
        postprocess_kwargs({"score_thr": 0.05})
    with pytest.raises(UserError, match="recipe eval key max_detections=2.5 must be an integer"):
        postprocess_kwargs({"max_detections": 2.5})
    assert from_settings(DetectOptions, {"iou_threshold": "0.6", "family": "x"}) == {"iou": 0.6}


def test_train_args_out_defaults_to_what_the_cli_shows():
    pytest.importorskip("torch")
    from tdet.client.cli import build_parser
    from tdet.training.engine.trainer import TrainArgs

    assert TrainArgs("damo-yolo-t", "a.json", "imgs").out == "runs/damo-yolo-t"
    assert TrainArgs("damo-yolo-t", "a.json", "imgs", out="elsewhere").out == "elsewhere"
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    help_text = next(a.help for a in train._actions if "--out" in a.option_strings)
    assert "runs/VARIANT" in help_text


def test_a_bad_recipe_eval_key_fails_when_the_recipe_loads(tmp_path):
    pytest.importorskip("torch")
    from tdet.training.recipe import load_recipe, recipe_path

    assert load_recipe("damo-yolo-t").eval == {"score_threshold": 0.05, "iou_threshold": 0.7, "max_detections": 100}
    bad = tmp_path / "r.yaml"
    bad.write_text(f"base: {recipe_path('damo-yolo-t')}\neval: {{score_threshold: 2}}\n")
    with pytest.raises(UserError, match=r"recipe eval key score_threshold=2 must be a number in \[0, 1\]"):
        load_recipe("damo-yolo-t", bad)
