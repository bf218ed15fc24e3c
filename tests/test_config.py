"""The typed configuration: presets, overrides, errors that name the key, save and reload."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mlcl.config import (
    Config,
    describe_preset,
    from_dict,
    list_presets,
    load_config,
    with_overrides,
)
from mlcl.errors import ConfigError
from mlcl.methods import method_options, resolve_config
from mlcl.methods.baseline import BaselineOptions
from tests.test_engine_toys import ToyOptions


def load_checked(*args):
    """Load as the commands do: the method section checked against the method's options."""
    return resolve_config(load_config(*args))


def test_defaults_and_the_method_options():
    config = load_config()
    assert isinstance(config, Config)
    assert config.model.method == "baseline"
    assert config.method == {}  # plain data, as written
    assert isinstance(method_options(config), BaselineOptions)
    assert config.data.batch_size == 32 and config.optim.betas == (0.9, 0.999)


def test_a_preset_and_overrides():
    config = load_config(
        "baseline-quick",
        ["optim.lr=3e-4", "data.batch_size=4", "optim.betas=[0.8, 0.9]", "method.loss=bce"],
    )
    assert config.optim.lr == 3e-4  # "3e-4" is a number (YAML 1.1 would read a string)
    assert config.data.batch_size == 4
    assert config.optim.betas == (0.8, 0.9)
    assert method_options(config).loss == "bce"
    assert config.data.dataset == "synthetic"  # from the preset


def test_overrides_as_a_mapping_keep_their_types():
    config = load_config("baseline-quick", {"run.epochs": 2, "data.root": "/data/x", "run.ema": 0})
    assert config.run.epochs == 2 and config.data.root == "/data/x"
    assert config.run.ema == 0.0 and isinstance(config.run.ema, float)  # int → float


def test_words_like_off_stay_strings():
    assert load_config(None, ["run.amp=off"]).run.amp == "off"
    assert load_config(None, ["data.root=no"]).data.root == "no"
    assert load_config(None, ["run.progress=false"]).run.progress is False


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.imgsize=64", r"data\.imgsize: unknown key"),
        ("method.temperature=0.1", r"method\.temperature: unknown key"),
        ("trainer.epochs=3", r"trainer\.epochs: unknown section"),
        ("epochs=3", "keys are written section.key"),
        ("data.batch_size=many", r"data\.batch_size: expected an integer, got 'many'"),
        ("data.batch_size=2.5", r"data\.batch_size: expected an integer"),
        ("run.progress=1", r"run\.progress: expected true or false"),
        ("optim.lr=fast", r"optim\.lr: expected a number"),
        ("optim.betas=[0.9]", r"optim\.betas: expected 2 values"),
        (
            "optim.betas=[0.9, 0.99, 0.9]",
            r"^optim\.betas: expected 2 values, got \[0\.9, 0\.99, 0\.9\]$",
        ),
        ("optim.betas=[0.9, fast]", r"^optim\.betas: expected a number, got 'fast'$"),
        ("data.root=2026-12-03", r"^data\.root: datetime\.date\(2026, 12, 3\) is not a plain YAML"),
        ("run.amp=fp8", r"run\.amp: 'fp8' is not one of auto, bf16, fp16, off"),
        ("run.compile_mode=fast", r"run\.compile_mode: 'fast' is not one of default, reduce-ove"),
        ("data.decode=gpu", r"data\.decode: 'gpu' is not one of loader, device"),
        ("model.method=nonsense", r"model\.method: unknown method 'nonsense'"),
        ("data.image_size=-5", r"^data\.image_size: must be > 0, got -5$"),
        ("optim.betas=[0.9, 1.0]", r"^optim\.betas: must be in \[0, 1\), got \[0\.9, 1\.0\]$"),
        ("run.threshold=0", r"^run\.threshold: must be in \(0, 1\), got 0$"),
        ("optim.lr=.inf", r"^optim\.lr: must be >= 0, got inf$"),
        ("method.gamma_neg=-1", r"^method\.gamma_neg: must be >= 0, got -1$"),
        ("no-equals-sign", "an override reads section.key=value"),
    ],
)
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_checked("baseline-quick", [override])


def test_loading_a_configuration_imports_no_method():
    """The configuration knows no method (no cycle through the registry, no torch import)."""
    code = (
        "import sys; from mlcl.config import load_config; "
        "config = load_config('sadcl-quick', ['method.nonsense=1']); "
        "assert config.method['nonsense'] == 1; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlcl', 'torch')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['mlcl', 'mlcl.config', 'mlcl.errors']"


def test_resolving_writes_every_option_out():
    config = load_config("sadcl-quick", ["method.sscl_weight=3"])
    resolved = resolve_config(config)
    assert resolved.method["sscl_weight"] == 3.0 and "pscl_temperature" in resolved.method
    assert method_options(resolved) == method_options(config)
    assert resolve_config(resolved) == resolved and resolved.hash() != config.hash()
    assert config.method == {**load_config("sadcl-quick").method, "sscl_weight": 3}  # untouched


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"no-such: no such preset.*baseline-quick"):
        load_config("no-such")
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config("missing/file.yaml")


def test_errors_in_a_yaml_file_name_the_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  batch_size: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"data\.batch_size: expected an integer"):
        load_config(path)
    path.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: a configuration must be a mapping"):
        load_config(path)
    path.write_text("# only a comment\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: empty configuration file"):
        load_config(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not a text file"):
        load_config(path)


def test_yaml_errors_are_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  root: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "\n" not in str(caught.value) and "line 3" in str(caught.value)


def test_a_value_on_a_ranges_edge_is_accepted():
    config = load_config(None, {"data.workers": 0, "run.ema": 0, "optim.betas": [0, 0.5]})
    assert (config.data.workers, config.run.ema, config.optim.betas) == (0, 0.0, (0.0, 0.5))


def test_base_presets_chain_and_cycles_are_caught(tmp_path):
    parent = tmp_path / "parent.yaml"
    child = tmp_path / "child.yaml"
    parent.write_text("base: baseline-quick\nrun:\n  epochs: 7\n  seed: 3\n")
    child.write_text(f"base: {parent}\nrun:\n  epochs: 9\nmethod:\n")  # empty section: defaults
    config = load_config(child)
    assert (config.run.epochs, config.run.seed) == (9, 3)
    assert config.data.image_size == load_config("baseline-quick").data.image_size
    parent.write_text(f"base: {child}\n")
    with pytest.raises(ConfigError, match="form a cycle"):
        load_config(child)


def test_full_presets_follow_the_papers():
    coco = load_config("baseline-coco")
    assert coco.data.dataset == "coco2014" and coco.model.backbone == "resnet101"
    assert coco.data.image_size == 448 and coco.model.pretrained
    assert coco.data.batch_size == 64 and coco.optim.lr == 1e-4 and coco.optim.weight_decay == 1e-4
    assert coco.optim.schedule == "onecycle" and coco.run.epochs == 80 and coco.run.early_stop > 0
    assert coco.run.ema == 0.9997 and coco.run.amp == "auto"
    assert coco.data.randaugment and coco.data.cutout == 0.5
    assert load_config("baseline-voc2007").data.dataset == "voc2007"
    assert load_config("baseline-nuswide").data.dataset == "nuswide"


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_loads_and_describes_itself(name):
    config = load_config(name)
    assert config.run.out_dir
    assert describe_preset(name), f"{name}.yaml needs a first comment line"


def test_save_and_load_round_trip(tmp_path):
    config = load_config("baseline-quick", ["run.amp=off", "optim.betas=[0.8, 0.95]"])
    path = tmp_path / "config.yaml"
    config.save(path)
    again = load_config(path)
    assert again == config
    assert again.hash() == config.hash()
    assert from_dict(config.to_dict()) == config


def test_hash_changes_with_any_value():
    config = load_config("baseline-quick")
    assert with_overrides(config, ["run.seed=1"]).hash() != config.hash()


def test_changing_the_method_drops_the_old_methods_options():
    config = load_config("baseline-quick", ["method.loss=bce"])
    assert with_overrides(config, {"run.seed": 2}).method["loss"] == "bce"  # same method: kept
    changed = with_overrides(config, {"model.method": "test-toy"})
    assert changed.method == {} and method_options(changed) == ToyOptions()
