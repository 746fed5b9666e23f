"""`python -m lora_course.finetune`: its help, its one-line errors, and one process = two."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_course import finetune, finetune_cli
from lora_course.architectures import build_config
from lora_course.counting import projection_shapes
from lora_course.finetune_cli import main, rank_problem

ROOT = Path(__file__).resolve().parents[1]
# the packaged weights and no hub, as `make test` and `make notebooks` have them
COURSE_ENV = {"LORA_COURSE_MODEL": "packaged", "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}


@pytest.fixture
def no_training(monkeypatch):
    """Any attempt to load the model or train fails the test: errors must come before."""

    def refuse(*args, **kwargs):
        raise AssertionError("the command went on to load the model or train")

    monkeypatch.setattr(finetune_cli, "train_to_folder", refuse)
    monkeypatch.setattr(finetune_cli, "warm_caches", refuse)
    monkeypatch.setattr("lora_course.models.load_smollm2", refuse)


def error_of(argv, capsys) -> str:
    """The one line `main(argv)` prints before it exits with argparse's code 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines  # the error alone, not 13 lines of usage above it
    assert lines[0].startswith("python -m lora_course.finetune: error: ")
    return lines[0]


def test_help_explains_the_effective_batch_and_how_to_launch_two_processes():
    result = subprocess.run(
        [sys.executable, "-m", "lora_course.finetune", "--help"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, **COURSE_ENV}, check=True,
    )  # fmt: skip
    text = " ".join(result.stdout.split())  # the words, whatever the terminal's width
    assert "batch_size x grad_accum x processes" in text
    assert "accelerate launch --multi_gpu --num_processes 2 -m lora_course.finetune" in text
    for option in ("--task", "--out", "--grad-accum", "--targets", "--method", "--overwrite"):
        assert option in text, option


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--task", "poems"], "invalid choice: 'poems' (choose from 'tickets', 'sql')"),
        (["--method", "qlora"], "invalid choice: 'qlora' (choose from 'lora', 'full')"),
        (["--schedule", "linear"], "invalid choice: 'linear' (choose from 'constant', 'cosine')"),
        (["--r", "0"], "--r 0 is out of range: the rank must be between 1 and 192"),
        # k_proj and v_proj are 576 -> 192 (grouped-query attention): the narrowest side
        (["--r", "193"], "between 1 and 192, the narrowest side of the targeted projections "
                         "(k_proj: 576 -> 192)"),
        (["--r", "577", "--targets", "q_proj,o_proj"], "--r 577 is out of range: the rank must "
                                                         "be between 1 and 576"),
        (["--targets", "q_proj,qkv_proj"], "argument --targets: unknown projection(s) qkv_proj"),
        (["--steps", "0"], "argument --steps: must be at least 1, got 0"),
        (["--grad-accum", "two"], "argument --grad-accum: expected a whole number, got 'two'"),
        (["--lr=-1e-3"], "argument --lr: must be in (0, inf), got -0.001"),
        (["--lora-dropout", "1"], "argument --lora-dropout: must be in [0, 1), got 1.0"),
        (["--steps", "10", "--warmup-steps", "10"], "--warmup-steps must be in [0, 10), got 10"),
        (["--batch-size", "5000"], "--batch-size 5000 is more than the 2000 rows"),
        (["--method", "full", "--r", "4"], "--r only apply to --method lora, not --method full"),
    ],
)  # fmt: skip
def test_a_bad_setting_stops_with_one_line_before_the_model_loads(
    argv, expected, tmp_path, capsys, no_training
):
    base = ["--task", "tickets", "--out", str(tmp_path / "run")]
    argv = base + argv if argv[0] != "--task" else argv + base[2:]
    assert expected in error_of(argv, capsys)


def test_the_output_folder_must_be_new_or_empty_unless_overwrite(tmp_path, capsys, no_training):
    (tmp_path / "old" / "training.json").parent.mkdir()
    (tmp_path / "old" / "training.json").write_text("{}")
    (tmp_path / "a_file").write_text("")
    argv = ["--task", "sql", "--out"]
    assert "is not empty: choose a new folder, or pass --overwrite" in error_of(
        [*argv, str(tmp_path / "old")], capsys
    )
    assert "exists and is not a folder" in error_of([*argv, str(tmp_path / "a_file")], capsys)
    assert "a_file is not a writable folder" in error_of(
        [*argv, str(tmp_path / "a_file" / "run")], capsys
    )
    assert finetune_cli._output_problem(tmp_path / "old", overwrite=True) is None
    assert finetune_cli._output_problem(tmp_path / "new" / "deeper", overwrite=False) is None


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_output_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert "is not writable" in finetune_cli._output_problem(locked, overwrite=False)
        assert "is not a writable folder" in finetune_cli._output_problem(locked / "run", False)
    finally:
        locked.chmod(0o700)


def test_task_and_out_are_required_and_warm_stands_alone(capsys, no_training):
    assert "give --task and --out (or --warm)" in error_of([], capsys)
    assert "give --task and --out (or --warm)" in error_of(["--task", "sql"], capsys)
    assert "--warm takes no other options" in error_of(["--warm", "--task", "sql"], capsys)


def test_warm_runs_warm_caches_as_make_warm_did(monkeypatch):
    calls = []
    monkeypatch.setattr(finetune_cli, "warm_caches", lambda: calls.append("warm"))
    assert main(["--warm"]) == 0
    assert calls == ["warm"]
    makefile = (ROOT / "Makefile").read_text()
    assert "$(PY) -m lora_course.finetune --warm" in makefile.split("\nwarm:")[1].split("\n\n")[0]


def test_the_defaults_are_the_runtimes_recipe_and_options_override_them(tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr(finetune_cli, "train_to_folder", lambda *a, **k: trained.append((a, k)))
    main(["--task", "sql", "--out", str(tmp_path / "a")])
    main(["--task", "sql", "--out", str(tmp_path / "b"), "--targets", "v_proj,q_proj",
          "--r", "4", "--grad-accum", "2", "--schedule", "cosine", "--warmup-steps", "1",
          "--no-progress"])  # fmt: skip
    (default, _), (config, out), progress = trained[0][0], trained[1][0], trained[1][1]
    assert default == finetune.FinetuneConfig.for_runtime("sql")
    assert (config.targets, config.r, config.grad_accum) == (("q_proj", "v_proj"), 4, 2)
    assert (config.schedule, config.warmup_steps) == ("cosine", 1)
    assert (out, progress) == (tmp_path / "b", {"progress": False})


def test_the_rank_check_reads_smollm2s_own_projection_shapes(smollm2_folder):
    from transformers import AutoConfig

    real = AutoConfig.from_pretrained(smollm2_folder, local_files_only=True)
    assert projection_shapes(build_config("SmolLM2-135M")) == projection_shapes(real)
    assert rank_problem(real, ("q_proj",), 576) is None
    assert rank_problem(real, ("q_proj", "v_proj"), 192) is None
    assert "between 1 and 192" in rank_problem(real, ("q_proj", "v_proj"), 193)


def run_cli(args, out: Path, processes: int, env: dict) -> dict:
    """Run the command in `processes` processes (accelerate launch for 2); its training.json."""
    launcher = [sys.executable, "-m", "lora_course.finetune"]
    if processes > 1:  # --multi_gpu: accelerate's "several processes"; gloo without a GPU
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                    "--num_processes", str(processes), "--num_machines", "1",
                    "--dynamo_backend", "no", "--main_process_port", "0",
                    "-m", "lora_course.finetune"]  # fmt: skip
    result = subprocess.run(
        [*launcher, *args, "--out", str(out), "--no-progress"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    summaries = [line for line in result.stdout.splitlines() if line.startswith("final loss")]
    assert len(summaries) == 1, result.stdout  # the main process alone prints it
    return json.loads((out / "training.json").read_text())


@pytest.mark.slow  # two real fine-tunes of SmolLM2: about 60 s on 2 cores
def test_two_processes_train_as_one_process_accumulating_two_batches(tmp_path, smollm2_folder):
    """Same rows per step, same seed: the same losses and the same adapter.

    Measured on a 2-core CPU, bf16 autocast, 6 steps of 4 rows (tickets, all 7 projections, r=8):
    with one torch thread in every process the two runs agree exactly (losses and lora_B: 0.0
    difference). The thread count alone is not free: 1 process on 2 threads vs on 1 thread differ
    by up to 1.8e-3 in the loss at step 6 (1e-3 relative) and by 0.5% in lora_B's norm (bf16
    sums in another order). So both runs here take one thread per process, and the tolerance,
    1e-4, is far below what a real difference makes: normalizing the loss per process
    (TrainingArguments' average_tokens_across_devices=False) moved it by 3.6e-3 at step 1.
    """
    from safetensors.torch import load_file

    env = {**os.environ, **COURSE_ENV, "OMP_NUM_THREADS": "1", "LORA_COURSE_FAST": "0"}
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    recipe = ["--task", "tickets", "--steps", "4", "--batch-size", "2", "--seed", "0"]
    one = run_cli([*recipe, "--grad-accum", "2"], tmp_path / "one", processes=1, env=env)
    two = run_cli([*recipe, "--grad-accum", "1"], tmp_path / "two", processes=2, env=env)

    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["effective_batch_size"] == two["effective_batch_size"] == 4
    assert two["threads_per_process"] == 1
    assert len(one["losses"]) == len(two["losses"]) == 4
    assert max(abs(a - b) for a, b in zip(one["losses"], two["losses"], strict=True)) <= 1e-4
    assert one["losses"][-1] < one["losses"][0]  # it learned something, in both
    weights = [load_file(tmp_path / name / "adapter_model.safetensors") for name in ("one", "two")]
    for name, b_one in weights[0].items():
        if "lora_B" in name:
            difference = (b_one - weights[1][name]).abs().max() / b_one.abs().max()
            assert difference <= 1e-3, name
