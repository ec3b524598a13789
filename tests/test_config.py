"""Config, presets and typed overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from gantui import config
from gantui.config import Config, ConfigError

REQUIRED_PRESETS = {"ring-8", "mlp-mnist", "dcgan-mnist-plain", "cgan-mnist", "cdcgan-mnist",
                    "dcgan-celeba"}
STUDY_KNOBS = {"ngf", "ndf", "nz", "lr_g", "lr_d", "beta1", "beta2", "batch_size", "steps",
               "epochs", "weight_init", "loss", "d_steps", "label_smoothing", "seed",
               "log_every", "sample_every", "checkpoint_every"}


def test_every_required_preset_ships_with_a_description() -> None:
    assert REQUIRED_PRESETS <= set(config.preset_names())
    for name in config.preset_names():
        preset, cfg = config.load(name)
        assert preset == name
        assert cfg.description and "\n" not in cfg.description


def test_default_preset_is_dcgan_mnist_with_the_issue_values() -> None:
    name, cfg = config.load(None)
    assert name == "dcgan-mnist"
    assert (cfg.arch, cfg.dataset, cfg.ngf, cfg.ndf, cfg.nz) == ("dcgan", "mnist", 32, 32, 100)
    assert (cfg.lr_d, cfg.lr_g, cfg.beta1, cfg.weight_init) == (2e-4, 5e-4, 0.5, "dcgan")
    assert cfg.clusters == 50 and not cfg.conditional


def test_the_config_defaults_are_the_plain_dcgan_preset() -> None:
    _, cfg = config.load("dcgan-mnist-plain")
    assert cfg.replace(description="").to_dict() == config.Config(description="").to_dict()
    assert (cfg.clusters, cfg.ema) == (0, 0.0)


def test_celeba_preset_is_radford_dcgan() -> None:
    _, cfg = config.load("dcgan-celeba")
    assert (cfg.image_size, cfg.channels, cfg.ngf, cfg.ndf, cfg.nz) == (64, 3, 64, 64, 100)
    assert (cfg.batch_size, cfg.lr_g, cfg.lr_d, cfg.beta1) == (128, 2e-4, 2e-4, 0.5)


def test_every_study_knob_is_a_documented_key() -> None:
    names = set(config.field_names())
    assert STUDY_KNOBS <= names
    for name in names:
        assert config.field_doc(name), f"{name} has no docstring"


def test_set_overrides_are_typed() -> None:
    _, cfg = config.load("ring-8", ["lr_g=1e-4", "steps=1_000", "g_hidden=8, 16",
                                    "loss=hinge", "amp=true"])
    assert cfg.lr_g == 1e-4 and isinstance(cfg.lr_g, float)
    assert cfg.steps == 1000 and isinstance(cfg.steps, int)
    assert cfg.g_hidden == (8, 16)
    assert cfg.loss == "hinge" and cfg.amp is True


@pytest.mark.parametrize(("item", "fragment"), [
    ("lr_gg=1", "unknown key 'lr_gg'; valid keys: description, dataset"),
    ("lr_g=fast", "bad value 'fast' for lr_g: expected float"),
    ("steps=1.5", "expected int"),
    ("loss=wasserstein", "expected nonsaturating | saturating | hinge | lsgan"),
    ("lr_g=0", "lr_g must be in (0, 1]"),
    ("beta1=1.2", "beta1 must be in [0, 1)"),
    ("batch_size=0", "batch_size must be >= 1"),
    ("lr_g=nan", "bad value"),
    ("novalue", "expected KEY=VALUE"),
    ("d_steps=1e300", "d_steps must be <= 100"),
    ("seed=99999999999999999999", "seed must be <= 4,294,967,295"),
])
def test_bad_overrides_name_what_is_valid(item: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.load("ring-8", [item])
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_preset_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError,
                       match="unknown preset 'nope'; available: cdcgan-fashion, cdcgan-mnist"):
        config.load("nope")


def test_preset_file_with_unknown_key_or_bad_toml(tmp_path: Path) -> None:
    bad_key = tmp_path / "mine.toml"
    bad_key.write_text('dataset = "ring8"\narch = "mlp"\nwidth = 3\n')
    with pytest.raises(ConfigError, match="unknown key 'width'"):
        config.load(str(bad_key))
    broken = tmp_path / "broken.toml"
    broken.write_text("lr_g = = 1\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        config.load(str(broken))


def test_preset_from_a_path_overrides_only_what_it_names(tmp_path: Path) -> None:
    path = tmp_path / "wide.toml"
    path.write_text('description = "mine"\nngf = 48\n')
    name, cfg = config.load(str(path))
    assert name == "wide" and cfg.ngf == 48 and cfg.ndf == Config().ndf


def test_cross_field_checks() -> None:
    with pytest.raises(ConfigError, match="image_size 28 or 4"):
        config.load("dcgan-mnist-plain", ["image_size=30"])
    with pytest.raises(ConfigError, match="ring8 needs arch = mlp"):
        config.load("ring-8", ["arch=dcgan"])
    # the default preset pointed at a mixture is refused with the preset that trains it
    with pytest.raises(ConfigError, match=r"ring8 is 2-D points \(--preset ring-8 trains it\)"):
        config.load("dcgan-mnist", ["dataset=ring8"])
    with pytest.raises(ConfigError, match=r"grid25 needs arch = mlp \(--preset grid-25 "):
        config.load("dcgan-mnist-plain", ["dataset=grid25"])
    with pytest.raises(ConfigError, match="conditional models need labelled data"):
        config.load("ring-8", ["conditioning=onehot", "pack=1"])  # folders: class folders
    with pytest.raises(ConfigError, match="g_norm applies to the built-in MLP generator"):
        config.load("dcgan-mnist-plain", ["g_norm=batch"])
    with pytest.raises(ConfigError, match="g_norm = \"batch\" needs batch_size >= 2"):
        config.load("ring-8", ["g_norm=batch", "batch_size=1", "pack=1"])
    with pytest.raises(ConfigError, match="expected none \\| batch"):
        config.load("ring-8", ["g_norm=layer"])


def test_g_norm_batch_normalises_every_hidden_layer_of_the_mlp_generator() -> None:
    import torch
    from torch import nn

    from gantui.models.builtin import build_models

    g, _ = build_models(config.load("ring-8", ["g_norm=batch", "weight_init=dcgan"])[1])
    norms = [m for m in g.modules() if isinstance(m, nn.BatchNorm1d)]
    assert [n.num_features for n in norms] == list(config.load("ring-8")[1].g_hidden)
    assert all(abs(n.weight.mean().item() - 1) < 0.05 for n in norms)  # DCGAN init covers them
    plain, _ = build_models(config.load("ring-8")[1])
    assert not any(isinstance(m, nn.BatchNorm1d) for m in plain.modules())
    g.eval()  # samples and previews: the running statistics, so a batch of one works
    assert g(torch.randn(1, 2)).shape == (1, 2)


def test_live_keys_are_validated() -> None:
    assert config.parse_live("lr_d", "3e-4") == 3e-4
    with pytest.raises(ConfigError, match="cannot be changed while training"):
        config.parse_live("ngf", "8")


def test_toml_round_trip() -> None:
    import tomllib

    cfg = config.load("cgan-mnist")[1]
    text = config.to_toml(cfg.to_dict())
    assert config.from_dict(tomllib.loads(text)) == cfg


def test_explicit_steps_win_over_a_preset_epochs() -> None:
    assert config.load("dcgan-celeba")[1].epochs == 5
    cfg = config.load("dcgan-celeba", ["steps=400"])[1]
    assert (cfg.steps, cfg.epochs) == (400, 0)
    cfg = config.load("dcgan-celeba", ["steps=400", "epochs=2"])[1]
    assert (cfg.steps, cfg.epochs) == (400, 2)
