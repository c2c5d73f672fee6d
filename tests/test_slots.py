"""The GPU slot pool's plain functions: --gpus parsed, `all` resolved, slots planned, exits told."""

from __future__ import annotations

import signal

import pytest

from tuner.errors import SpecError
from tuner.slots import Slot, describe_death, describe_exit, parse_gpus, plan_slots, visible_gpus


@pytest.mark.parametrize(
    "text, gpus",
    [("0-7", [str(i) for i in range(8)]), ("0,2,5", ["0", "2", "5"]), ("3", ["3"]), ("0-1,4", ["0", "1", "4"]), (" 2 , 0 ", ["2", "0"])],
)
def test_ranges_and_lists_give_the_ids_in_order(text, gpus):
    assert parse_gpus(text) == gpus


@pytest.mark.parametrize(
    "text, said",
    [
        ("3-1", "--gpus '3-1': the range 3-1 runs backwards; write it low to high, e.g. --gpus 1-3"),
        ("x", "--gpus 'x': 'x' is not a GPU id or a range of them; use --gpus all, a range --gpus 0-7, or a list --gpus 0,2,5"),
        ("0,,1", "--gpus '0,,1': '' is not a GPU id"),
        ("-1", "--gpus '-1': '-1' is not a GPU id"),
        ("0,0-1", "--gpus '0,0-1': GPU 0 is given twice; give each GPU once and --per-gpu N for N workers on it"),
    ],
)
def test_a_bad_gpus_value_is_one_line_naming_it_and_the_forms(text, said):
    with pytest.raises(SpecError) as e:
        parse_gpus(text)
    assert str(e.value).startswith(said) and "\n" not in str(e.value)


def test_all_takes_the_gpus_a_scheduler_left_visible(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert parse_gpus("all") == visible_gpus() == ["3", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f2e,GPU-11aa")  # UUIDs pass through as given
    assert parse_gpus("ALL") == ["GPU-8f2e", "GPU-11aa"]


@pytest.mark.parametrize("hidden", ["", "-1"])
def test_all_with_no_gpu_visible_is_one_clear_error(monkeypatch, hidden):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
    with pytest.raises(SpecError, match=r"^--gpus all: no GPU on this host \(CUDA_VISIBLE_DEVICES is empty\); give ids \(--gpus 0,1\)"):
        parse_gpus("all")


def test_all_without_cuda_visible_devices_asks_nvidia_smi_or_torch(monkeypatch):
    import shutil

    import torch

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    expected = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if shutil.which("nvidia-smi") is None and expected == 0:
        with pytest.raises(SpecError, match="nvidia-smi and torch see none"):
            parse_gpus("all")
    else:
        assert len(parse_gpus("all")) >= expected > 0


def test_slots_fill_each_gpu_per_gpu_times_spread_across_gpus_first():
    slots = plan_slots(["0", "1"], per_gpu=2, n_workers=None)
    assert slots == [Slot(0, "0"), Slot(1, "1"), Slot(2, "0"), Slot(3, "1")]
    assert [s.gpu for s in plan_slots(["0", "1", "2"], per_gpu=2, n_workers=3)] == ["0", "1", "2"]  # fewer workers: one each
    assert plan_slots(None, per_gpu=1, n_workers=3) == [Slot(0, None), Slot(1, None), Slot(2, None)]
    assert plan_slots(None, per_gpu=1, n_workers=None) == [Slot(0, None)]


@pytest.mark.parametrize(
    "gpus, per_gpu, n_workers, said",
    [
        (["0"], 0, None, "--per-gpu 0: each GPU needs at least one worker; use --per-gpu 1 or more"),
        (None, 2, None, "--per-gpu 2 needs --gpus: say which GPUs, e.g. --gpus all --per-gpu 2"),
        (["0", "1"], 2, 5, "--workers 5 is more than the 4 slots of 2 GPU(s) x --per-gpu 2; raise --per-gpu to 3 or drop --workers"),
    ],
)
def test_slot_counts_that_cannot_be_filled_are_refused(gpus, per_gpu, n_workers, said):
    with pytest.raises(SpecError) as e:
        plan_slots(gpus, per_gpu=per_gpu, n_workers=n_workers)
    assert str(e.value).startswith(said)


def test_an_exit_is_told_as_its_code_or_its_signal():
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(-signal.SIGSEGV) == "killed by SIGSEGV"


def test_a_death_is_told_with_its_worker_its_slot_and_its_last_words():
    death = {"slot": 3, "gpu": "1", "pid": 4242, "exit": "exit code 1", "last_stderr": "CUDA out of memory", "replaced": True}
    assert describe_death(death) == "worker pid 4242 on GPU 1 exit code 1 (last stderr: CUDA out of memory)"
    assert describe_death({**death, "gpu": None, "exit": "killed by SIGKILL", "last_stderr": ""}) == "worker pid 4242 in slot 3 killed by SIGKILL"
