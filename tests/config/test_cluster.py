"""Config tier for conf/cluster/ and conf/hydra/launcher/: every cluster option composes for every
stage, the submitit_slurm launcher takes its resources from the cluster with exact values, and a
layout that does not fit the cluster fails when the launcher config resolves (before submission)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from nemotron_core.config import ClusterConfig
from nemotron_core.config.cluster import slurm_setup, validate_cluster
from nemotron_core.config.parallel import ParallelConfig
from nemotron_core.paths import CONF_DIR

# the deprecation warning Hydra prints for conf/hydra/launcher/submitit_slurm.yaml, which
# register_configs silences in scripts (pytest resets warning filters around each test)
pytestmark = pytest.mark.filterwarnings(r"ignore:\s*'hydra/launcher/submitit_(slurm|local)' is validated:UserWarning")

STAGES = ("stage0_pretrain", "stage1_sft")
CLUSTERS = sorted(p.stem for p in (CONF_DIR / "cluster").glob("*.yaml"))


def _launcher(stage: str, overrides: list[str], job_name: str = "train") -> dict:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=job_name):
            cfg = compose(stage, overrides=["hydra/launcher=submitit_slurm", *overrides], return_hydra_config=True)
            return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    finally:
        GlobalHydra.instance().clear()


def test_cluster_options_exist():
    assert {"default", "localhost", "my_cluster"} <= set(CLUSTERS)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("cluster", CLUSTERS)
def test_every_cluster_composes_for_every_stage(stage, cluster):
    layout = {"default": "single", "localhost": "dp2", "my_cluster": "tp4pp2"}.get(cluster, "single")
    launcher = _launcher(stage, [f"cluster={cluster}", f"parallel={layout}"])
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["name"] == f"{stage}.train"


def test_my_cluster_maps_onto_slurm_queue_conf():
    launcher = _launcher("stage1_sft", ["cluster=my_cluster", "parallel=tp4pp2", "cluster.partition=batch",
                                        "cluster.account=proj", "cluster.qos=high", "cluster.constraint=h100",
                                        "cluster.mem_gb=900", "cluster.time_min=30"])
    expected = {"partition": "batch", "account": "proj", "qos": "high", "constraint": "h100", "nodes": 1,
                "gpus_per_node": 8, "tasks_per_node": 8, "cpus_per_task": 16, "mem_gb": 900, "timeout_min": 30,
                "setup": ["export OMP_NUM_THREADS=8"], "additional_parameters": {}, "signal_delay_s": 120,
                "submitit_folder": "outputs/stage1_sft/nano3_tiny-tiny_chat/.submitit/%j"}
    assert {k: launcher[k] for k in expected} == expected


def test_localhost_is_two_cpu_tasks():
    launcher = _launcher("stage1_sft", ["cluster=localhost", "parallel=dp2"])
    assert {k: launcher[k] for k in ("partition", "nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task")} == {
        "partition": "debug", "nodes": 1, "tasks_per_node": 2, "gpus_per_node": None, "cpus_per_task": 1}


def test_two_nodes_with_derived_dp():
    launcher = _launcher("stage1_sft", ["cluster=my_cluster", "cluster.nodes=2", "parallel=tp4pp2", "parallel.dp=-1"])
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 8, 8)


def test_data_prep_is_one_task_on_one_node_without_gpus():
    launcher = _launcher("stage1_sft", ["cluster=my_cluster", "cluster.nodes=4", "parallel=tp4pp2"], job_name="data_prep")
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (1, 1, None)
    assert launcher["name"] == "stage1_sft.data_prep"


def test_a_layout_that_does_not_fit_fails_before_submission():
    with pytest.raises(Exception, match=r"parallel=tp2 needs pp x dp x tp = 2 ranks but cluster.nodes x cluster.tasks_per_node = 1 x 8 = 8"):
        _launcher("stage1_sft", ["cluster=my_cluster", "parallel=tp2"])


def test_container_and_srun_flags_wrap_srun_in_the_setup_block():
    launcher = _launcher("stage1_sft", ["cluster=my_cluster", "parallel=tp4pp2", "cluster.container=nvcr.io/nvidia/pytorch:25.09-py3",
                                        "cluster.container_mounts=/lustre:/lustre", 'cluster.srun_args=["--mpi=pmix"]'])
    assert launcher["setup"] == [
        "export OMP_NUM_THREADS=8\n"
        'srun() { command srun --container-image=nvcr.io/nvidia/pytorch:25.09-py3 --container-mounts=/lustre:/lustre '
        '--mpi=pmix "$@"; }  # cluster.container / cluster.srun_args'
    ]


def test_slurm_setup_values():
    assert slurm_setup([], None, None, []) == ""
    assert slurm_setup(["module load cuda", "source .venv/bin/activate"], None, None, None) == "module load cuda\nsource .venv/bin/activate"
    assert slurm_setup(None, None, None, ["--exclusive", "a b"]) == "srun() { command srun --exclusive 'a b' \"$@\"; }  # cluster.container / cluster.srun_args"
    with pytest.raises(ValueError, match="cluster.container_mounts='/a:/a' needs cluster.container"):
        slurm_setup([], None, "/a:/a", [])


@pytest.mark.parametrize(
    ("cluster", "parallel", "message"),
    [
        (ClusterConfig(name="c", nodes=0), None, "cluster.nodes=0 and cluster.tasks_per_node=1 must be >= 1"),
        (ClusterConfig(name="c", gpus_per_node=8, tasks_per_node=4), None, "cluster.tasks_per_node=4 but cluster.gpus_per_node=8"),
        (ClusterConfig(name="c", tasks_per_node=2), ParallelConfig(name="tp4pp2", tp=4, pp=2), "needs pp x dp x tp = 8 ranks"),
        (ClusterConfig(name="c", tasks_per_node=6), ParallelConfig(name="x", tp=4, dp=-1), r"\(dp=-1\) needs a multiple of pp x tp = 4 ranks"),
    ],
)
def test_validate_cluster_names_the_keys(cluster, parallel, message):
    with pytest.raises(ValueError, match=message):
        validate_cluster(cluster, parallel)


def test_validate_cluster_world_size():
    assert validate_cluster(ClusterConfig(name="c", nodes=2, gpus_per_node=8, tasks_per_node=8), ParallelConfig(name="x", tp=4, dp=-1)) == 16


def test_submitit_local_launcher_composes():
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="train"):
            cfg = compose("stage1_sft", overrides=["hydra/launcher=submitit_local"], return_hydra_config=True)
            launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    finally:
        GlobalHydra.instance().clear()
    assert launcher["_target_"].endswith("LocalLauncher")
    assert (launcher["tasks_per_node"], launcher["timeout_min"], launcher["name"]) == (1, 60, "stage1_sft.train")
