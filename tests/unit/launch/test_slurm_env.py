"""nemotron_core/launch/slurm.py: rank layout from a Slurm step's environment, exact values."""

from __future__ import annotations

import pytest

from nemotron_core.launch.slurm import (
    PORT_BASE,
    PORT_SPAN,
    SlurmEnv,
    expand_hostlist,
    master_port_for_job,
    slurm_env,
)

# What srun sets for task 5 of `srun -N 2 --ntasks-per-node=4` on node02,node03 (job 123456, step 0)
STEP = {
    "SLURM_JOB_ID": "123456",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_NTASKS": "8",
    "SLURM_JOB_NODELIST": "node[02-03]",
    "SLURM_STEP_NODELIST": "node[02-03]",
    "SLURM_TASKS_PER_NODE": "4(x2)",
    "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
}


def test_hostlist_ranges_lists_and_plain_names():
    assert expand_hostlist("node[01-04,07],gpu-a1") == ["node01", "node02", "node03", "node04", "node07", "gpu-a1"]
    assert expand_hostlist("vm") == ["vm"]
    assert expand_hostlist("a1,b2") == ["a1", "b2"]
    assert expand_hostlist("n[8-11]") == ["n8", "n9", "n10", "n11"]  # no padding in the lower bound: none added
    assert expand_hostlist("n[098-101]") == ["n098", "n099", "n100", "n101"]
    assert expand_hostlist("r[1-2]n[1-2]") == ["r1n1", "r1n2", "r2n1", "r2n2"]
    assert expand_hostlist("gpu[3]-ib") == ["gpu3-ib"]


@pytest.mark.parametrize(
    ("hostlist", "message"),
    [
        ("", "SLURM_JOB_NODELIST is empty"),
        ("node[01-04", r"'\[' is never closed"),
        ("node01]", r"'\]' without '\['"),
        ("node[0[1]]", r"nested '\['"),
        ("node[04-01]", "runs backwards"),
        ("node[a-b]", "is not N or N-M"),
        ("node[]", "is not N or N-M"),
        ("a,,b", "empty host name"),
    ],
)
def test_malformed_hostlist_names_the_variable(hostlist, message):
    with pytest.raises(ValueError, match=message) as err:
        expand_hostlist(hostlist)
    assert "SLURM_JOB_NODELIST" in str(err.value)


def test_port_is_a_function_of_the_job_id_in_an_unprivileged_range():
    assert master_port_for_job(123456) == 23456
    assert master_port_for_job(7) == 20007
    assert master_port_for_job(29999) == 29999
    assert master_port_for_job(30000) == 20000
    assert (PORT_BASE, PORT_BASE + PORT_SPAN - 1) == (20000, 29999)  # above 1023, below 32768 (ephemeral)
    assert {master_port_for_job(j) for j in range(40000)} == set(range(20000, 30000))


def test_task_of_a_two_node_step():
    assert slurm_env(STEP) == SlurmEnv(
        rank=5, local_rank=1, world_size=8, local_world_size=4, node_rank=1,
        master_addr="node02", master_port=23456, job_id=123456,
    )


def test_uneven_tasks_per_node_and_the_step_node_list_first():
    env = slurm_env({**STEP, "SLURM_NTASKS": "7", "SLURM_PROCID": "6", "SLURM_LOCALID": "2", "SLURM_NODEID": "2",
                     "SLURM_JOB_NODELIST": "gpu-a1,node[01-04,07]", "SLURM_STEP_NODELIST": "node[01,04,07]",
                     "SLURM_STEP_TASKS_PER_NODE": "2(x2),3", "SLURM_TASKS_PER_NODE": "8(x6)"})
    assert (env.rank, env.local_rank, env.local_world_size, env.node_rank, env.master_addr) == (6, 2, 3, 2, "node01")


def test_job_node_list_when_the_step_has_none():
    env = {k: v for k, v in STEP.items() if k != "SLURM_STEP_NODELIST"}
    assert slurm_env({**env, "SLURM_JOB_NODELIST": "gpu-a1,node[01-04,07]"}).master_addr == "gpu-a1"


def test_master_addr_and_port_already_set_win():
    env = slurm_env({**STEP, "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "29500"})
    assert (env.master_addr, env.master_port) == ("10.0.0.7", 29500)


@pytest.mark.parametrize(
    "environ",
    [
        {},  # not Slurm
        {k: v for k, v in STEP.items() if k != "SLURM_STEP_ID"},  # the batch script: SLURM_NTASKS=8, PROCID=0, no step
        {**STEP, "SLURM_STEP_ID": "4294967291"},  # the batch step's id
        {**STEP, "SLURM_STEP_ID": "batch"},
        {**STEP, "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_STEP_TASKS_PER_NODE": "1"},
    ],
    ids=["no-slurm", "batch-script", "batch-step-id", "batch-step-name", "one-task"],
)
def test_none_outside_a_multi_task_step(environ):
    assert slurm_env(environ) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"SLURM_PROCID": "x"}, "SLURM_PROCID='x' is not an integer"),
        ({"SLURM_PROCID": "8"}, "SLURM_PROCID=8 is not below SLURM_NTASKS=8"),
        ({"SLURM_PROCID": "-1"}, "SLURM_PROCID='-1' must be >= 0"),
        ({"SLURM_NTASKS": "eight"}, "SLURM_NTASKS='eight' is not an integer"),
        ({"SLURM_LOCALID": None}, "SLURM_LOCALID is not set"),
        ({"SLURM_LOCALID": "4"}, r"SLURM_LOCALID=4 is not below the 4 tasks on this node \(SLURM_STEP_TASKS_PER_NODE\)"),
        ({"SLURM_JOB_ID": "12a"}, "SLURM_JOB_ID='12a' is not an integer"),
        ({"SLURM_STEP_TASKS_PER_NODE": "4(2)"}, r"SLURM_STEP_TASKS_PER_NODE='4\(2\)': '4\(2\)' is not N or N\(xM\)"),
        ({"SLURM_NODEID": "2"}, "SLURM_NODEID=2 but SLURM_STEP_TASKS_PER_NODE='4\\(x2\\)' lists 2 nodes"),
        ({"SLURM_STEP_NODELIST": "node[02-"}, r"SLURM_STEP_NODELIST='node\[02-': '\[' is never closed"),
        ({"SLURM_STEP_NODELIST": None, "SLURM_JOB_NODELIST": None}, "SLURM_JOB_NODELIST is not set"),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT=70000 is not a TCP port"),
    ],
)
def test_malformed_variables_are_named(change, message):
    environ = {**STEP, **{k: v for k, v in change.items() if v is not None}}
    for k in [k for k, v in change.items() if v is None]:
        environ.pop(k)
    with pytest.raises(ValueError, match=message):
        slurm_env(environ)
