"""Config tier: every option of every group composes for every stage; typos and wrong types fail
at compose time naming the key; the 30B-A3B values are the published ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

import nemotron_core.config as nc_config
from nemotron_core.config import PretrainDataConfig, SFTDataConfig
from nemotron_core.paths import CONF_DIR

STAGES = {"stage0_pretrain": PretrainDataConfig, "stage1_sft": SFTDataConfig}
GROUPS = ["model", "tokenizer", "data", "parallel", "peft", "optimizer", "scheduler", "train", "checkpoint", "logging", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.fixture(autouse=True)
def hydra_conf():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def _data_kind(option: str) -> type:
    node = OmegaConf.load(CONF_DIR / "data" / f"{option}.yaml")
    base = node.defaults[0]
    return {"base_sft_data": SFTDataConfig, "base_pretrain_data": PretrainDataConfig}[base]


STAGE_ONLY_GROUPS = {"peft": {"stage1_sft"}}


def _stage_options(stage: str, group: str) -> list[str]:
    opts = options(group)
    if stage not in STAGE_ONLY_GROUPS.get(group, {stage}):
        return []
    if group == "data":
        opts = [o for o in opts if _data_kind(o) is STAGES[stage]]
    if group == "experiment":
        opts = [o for o in opts if o.endswith({"stage0_pretrain": "_pretrain", "stage1_sft": "_sft"}[stage])]
    return opts


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), f"conf/{group}/ is empty"
    # every stage has at least one data option and one experiment
    for stage in STAGES:
        assert _stage_options(stage, "data") and _stage_options(stage, "experiment")


@pytest.mark.parametrize("stage", sorted(STAGES))
@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes(stage, group):
    opts = _stage_options(stage, group)
    if group in STAGE_ONLY_GROUPS and stage not in STAGE_ONLY_GROUPS[group]:
        pytest.skip(f"{group} is not a group of {stage}")
    assert opts
    for opt in opts:
        cfg = compose(stage, overrides=[f"{group}={opt}"])
        # Every value that is set resolves (tokenizer.path / data.input may be left for the user).
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        assert container["stage"] == stage
        if group != "experiment":
            assert cfg[group].get("name", opt) in (opt, cfg[group].get("name"))
        obj = OmegaConf.to_object(cfg.model)
        obj.layer_kinds()  # the pattern parses


def test_default_model_and_every_option_is_typed():
    cfg = compose("stage1_sft")
    for group in ["model", "tokenizer", "data", "parallel", "optimizer", "scheduler", "train", "checkpoint", "logging"]:
        assert OmegaConf.get_type(cfg[group]) is not dict, f"{group} has no schema"


@pytest.mark.parametrize(
    "override, key",
    [
        ("optimizer.lrr=1", "optimizer.lrr"),
        ("model.hiden_size=64", "model.hiden_size"),
        ("data.pack_sise=8", "data.pack_sise"),
        ("train.stpes=3", "train.stpes"),
    ],
)
def test_typo_fails_at_compose_naming_the_key(override, key):
    with pytest.raises(ConfigCompositionException, match=key.replace(".", r"\.")):
        compose("stage1_sft", overrides=[override])


@pytest.mark.parametrize("override", ["optimizer.lr=fast", "model.hidden_size=1.5", "train.steps=many", "parallel.fsdp=maybe"])
def test_wrong_type_fails_at_compose(override):
    with pytest.raises(ConfigCompositionException) as exc:
        compose("stage1_sft", overrides=[override])
    key = override.split("=")[0]
    assert key in str(exc.value) + str(exc.value.__cause__)


def test_data_option_of_the_wrong_kind_fails():
    with pytest.raises(ConfigCompositionException, match="PretrainDataConfig is not a subclass of SFTDataConfig"):
        compose("stage1_sft", overrides=["data=tiny_text"])


def test_yaml_typo_inside_an_option_file_fails(tmp_path: Path):
    # A group option file with a misspelt key is rejected by its schema.
    conf = tmp_path / "conf"
    import shutil

    shutil.copytree(CONF_DIR, conf)
    (conf / "optimizer" / "typo.yaml").write_text("defaults:\n  - base_optimizer\n  - _self_\nname: adamw\nlr: 1e-3\nwieght_decay: 0.1\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        with pytest.raises(ConfigCompositionException, match="wieght_decay"):
            compose("stage1_sft", overrides=["optimizer=typo"])


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_data_prep_output_is_train_input(stage):
    cfg = compose(stage)
    assert cfg.data.path == cfg.data.output_dir
    cfg = compose(stage, overrides=["data.output_dir=/tmp/elsewhere"])
    assert cfg.data.path == "/tmp/elsewhere"
    cfg = compose(stage, overrides=["data.path=/tmp/mine"])
    assert cfg.data.path == "/tmp/mine" and cfg.data.output_dir != "/tmp/mine"


def test_out_dir_is_a_function_of_the_config():
    a = compose("stage1_sft")
    b = compose("stage1_sft")
    assert a.out_dir == b.out_dir == "outputs/stage1_sft/nano3_tiny-tiny_chat"
    c = compose("stage1_sft", overrides=["run_name=lr-sweep"])
    assert c.out_dir == "outputs/stage1_sft/lr-sweep"
    assert compose("stage0_pretrain").out_dir == "outputs/stage0_pretrain/nano3_tiny-tiny_text"


def test_shipped_defaults_point_at_package_assets():
    cfg = compose("stage1_sft")
    assert Path(cfg.tokenizer.path).is_dir()
    assert Path(cfg.data.input).is_file()
    assert Path(compose("stage0_pretrain").data.input).is_file()


def test_tiny_and_30b_models_differ_only_by_values():
    tiny = OmegaConf.load(CONF_DIR / "model" / "nano3_tiny.yaml")
    big = OmegaConf.load(CONF_DIR / "model" / "nano3_30b_a3b.yaml")
    assert tiny.defaults == big.defaults
    assert set(tiny.keys()) == set(big.keys())


def test_tiny_model_divides_every_shipped_layout():
    m = OmegaConf.to_object(compose("stage1_sft").model)
    kinds = m.layer_kinds()
    assert set(kinds) == {"mamba", "moe", "attention", "mlp"} and len(kinds) >= 8
    assert 64 <= m.hidden_size <= 128
    assert (m.n_routed_experts, m.num_experts_per_tok) == (8, 2)
    assert m.mamba_num_heads % 4 == 0 and m.n_groups % 4 == 0
    assert (m.num_attention_heads, m.num_key_value_heads) == (4, 2)
    assert m.vocab_size % 8 == 0
    for opt in options("parallel"):
        p = OmegaConf.to_object(compose("stage1_sft", overrides=[f"parallel={opt}"]).parallel)
        assert m.num_attention_heads % p.tp == 0, opt
        assert m.mamba_num_heads % p.tp == 0 and m.n_groups % p.tp == 0, opt
        assert m.n_routed_experts % p.ep == 0, opt
        assert len(kinds) >= p.pp, opt
        if p.dp > 0:
            assert (p.dp * p.tp) % p.ep == 0, opt


def test_30b_model_values_are_the_published_ones():
    m = OmegaConf.to_object(compose("stage1_sft", overrides=["model=nano3_30b_a3b"]).model)
    assert m.hybrid_override_pattern == "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"
    kinds = m.layer_kinds()
    assert len(kinds) == 52
    assert (kinds.count("mamba"), kinds.count("moe"), kinds.count("attention")) == (23, 23, 6)
    assert [i for i, k in enumerate(kinds) if k == "attention"] == [5, 12, 19, 26, 33, 42]
    assert (m.hidden_size, m.vocab_size, m.tie_word_embeddings, m.layer_norm_epsilon) == (2688, 131072, False, 1e-5)
    assert (m.num_attention_heads, m.num_key_value_heads, m.head_dim) == (32, 2, 128)
    assert (m.mamba_num_heads, m.mamba_head_dim, m.mamba_d_inner, m.ssm_state_size, m.n_groups) == (64, 64, 4096, 128, 8)
    assert (m.conv_kernel, m.chunk_size, m.use_conv_bias) == (4, 128, True)
    in_proj = 2 * m.mamba_d_inner + 2 * m.n_groups * m.ssm_state_size + m.mamba_num_heads
    assert in_proj == 10304
    assert (m.n_routed_experts, m.num_experts_per_tok, m.moe_intermediate_size) == (128, 6, 1856)
    assert (m.moe_shared_expert_intermediate_size, m.routed_scaling_factor) == (3712, 2.5)
    assert m.init_std == 0.0173
    assert (m.time_step_min, m.time_step_max, m.time_step_floor) == (0.001, 0.1, 1e-4)


def test_30b_experiments_are_the_published_recipes():
    pt = compose("stage0_pretrain", overrides=["experiment=nano3_30b_a3b_pretrain"])
    assert pt.model.name == "nano3_30b_a3b" and pt.parallel.name == "tp1ep8"
    assert (pt.parallel.tp, pt.parallel.ep, pt.parallel.dp) == (1, 8, -1)
    assert (pt.optimizer.lr, pt.optimizer.min_lr, pt.optimizer.weight_decay) == (1.6e-3, 1.6e-5, 0.1)
    assert (pt.scheduler.name, pt.scheduler.warmup_steps, pt.scheduler.decay_fraction) == ("wsd", 333, 0.2)
    assert (pt.train.steps, pt.train.global_batch_size, pt.data.seq_length) == (39735, 1024, 8192)
    assert pt.train.moe_aux_loss_coeff == 1e-4 and pt.train.moe_expert_bias_update_rate > 0
    assert (pt.data.add_bos, pt.data.add_eos) == (False, True)

    sft = compose("stage1_sft", overrides=["experiment=nano3_30b_a3b_sft"])
    assert sft.model.name == "nano3_30b_a3b" and sft.parallel.name == "tp1ep8"
    assert (sft.optimizer.lr, sft.optimizer.beta2, sft.optimizer.weight_decay) == (5e-6, 0.95, 0.1)
    assert (sft.scheduler.name, sft.scheduler.warmup_steps) == ("cosine", 50)
    assert (sft.train.global_batch_size, sft.data.pack_size) == (128, 2048)
    assert sft.out_dir == "outputs/stage1_sft/nano3_30b_a3b_sft"
    # the experiment cannot silently train on the tiny data
    assert sft.data.input is None and pt.data.input is None


def test_experiment_values_beat_defaults_but_not_the_command_line():
    cfg = compose("stage1_sft", overrides=["experiment=nano3_30b_a3b_sft", "optimizer.lr=1e-5", "run_name=mine"])
    assert cfg.optimizer.lr == 1e-5 and cfg.run_name == "mine"


def test_register_configs_is_idempotent():
    nc_config.register_configs()
    nc_config.register_configs()
    assert compose("stage1_sft").model.name == "nano3_tiny"
