"""The seeds' vLLM command lines, read by vLLM 0.32's own argument parser (tinyformer.serving.command_lines).

No server starts: ``make_arg_parser`` needs only ``import vllm``. Each seed line is asserted whole: its shell
variables, Docker's options, the program, and every setting vLLM's parser takes from it, or the message vLLM
exits with.
"""

from __future__ import annotations

import pytest

from tinyformer.serving.command_lines import (
    CommandLineError,
    image_entrypoint,
    read_command_line,
    seed_command_lines,
)

pytestmark = pytest.mark.vllm  # imports vLLM (its parser); starts nothing

OPENAI = "python -m vllm.entrypoints.openai.api_server"
IMAGE = "python3 -m vllm.entrypoints.openai.api_server"

# id -> (program, shell variables, what vLLM 0.32's parser sets, words it does not know)
EXPECTED = {
    "log04": (
        "python3 -m vllm.entrypoints.openai.api_server",
        {},
        {
            "model": "meta-llama/Llama-2-7b-hf",
            "tensor_parallel_size": 1,
            "enable_lora": True,
            "max_loras": 4,
            "max_cpu_loras": 12,
        },
        [],
    ),
    "log06": (
        "vllm serve",
        {},
        {
            "model_tag": "/root/autodl-tmp/deepseek-ai/DeepSeek-R1-Distill-Qwen-14B",
            "trust_remote_code": True,
            "tensor_parallel_size": 2,  # written --tensor_parallel_size: vLLM reads _ as -
            "gpu_memory_utilization": 0.98,
        },
        [],
    ),
    "log07": (
        "vllm serve",
        {"VLLM_USE_V1": "0"},
        {
            "model_tag": "gaunernst/gemma-3-27b-it-int4-awq",
            "max_model_len": 4096,
            "gpu_memory_utilization": 0.98,
            "distributed_executor_backend": "ray",
            "dtype": "float16",
        },
        [],
    ),
    "log09": (
        "vllm serve",
        {"CUDA_VISIBLE_DEVICES": "0,1,2,3"},
        {
            "model_tag": "/path/to/Qwen3-235B-A22B-FP8",
            "tensor_parallel_size": 4,
            "kv_transfer_config": {"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"},
        },
        [],
    ),
    "log10": ("vllm serve", {}, {"model_tag": "openai/gpt-oss-120b", "async_scheduling": True}, []),
    "log14": (
        "python3 -m vllm.entrypoints.openai.api_server",
        {},
        {
            "port": 8000,
            "model": "meta-llama/Llama-3.3-70B-Instruct",
            "tensor_parallel_size": 4,
            "pipeline_parallel_size": 2,
            "enable_prefix_caching": True,
        },
        [],
    ),
    "log16": (
        "python -m vllm.entrypoints.api_server",
        {"CUDA_VISIBLE_DEVICES": "0,1"},
        {
            "model": "/cm/deepseek-coder-6.7b-instruct/",
            "tensor_parallel_size": 2,
            "trust_remote_code": True,
            "dtype": "float16",
        },
        [],
    ),
    "log17": (
        OPENAI,
        {"CUDA_VISIBLE_DEVICES": "6,7"},
        {"model": "/data/models/Qwen3-Next-80B-A3B-Instruct", "tensor_parallel_size": 2},
        [],
    ),
    "log18": (
        IMAGE,
        {},
        {
            "model_tag": "32",  # --swap-space is unknown, so argparse takes its value for the model
            "tensor_parallel_size": 4,
            "gpu_memory_utilization": 0.93,
            "dtype": "float16",
            "max_model_len": 65536,
            "enforce_eager": True,
            "max_num_batched_tokens": 8192,
        },
        ["--swap-space"],
    ),
    "log20": (
        OPENAI,
        {},
        {
            "served_model_name": ["ui-tars"],
            "model": "/weights/checkpoints/UI-TARS",
            "tensor_parallel_size": 1,  # -tp is --tensor-parallel-size's short form
            "max_model_len": 8192,
        },
        [],
    ),
    "vllm-docs": (IMAGE, {}, {"model": "Qwen/Qwen3-0.6B"}, []),  # = vLLM's default model, named on the line
}

SEEDS = {entry["id"]: entry for entry in seed_command_lines()["lines"]}


def test_every_seed_line_has_an_expectation_and_a_source():
    assert set(SEEDS) == set(EXPECTED)
    assert all(entry["source"] for entry in SEEDS.values())


@pytest.mark.parametrize("line_id", sorted(EXPECTED))
def test_seed_line_as_vllm_reads_it(line_id):
    program, environment, sets, unknown = EXPECTED[line_id]
    read = read_command_line(SEEDS[line_id]["line"])
    assert (read.program, read.environment, read.sets, read.unknown) == (program, environment, sets, unknown)
    prog = "vllm serve" if program == "vllm serve" else "api_server.py"
    assert read.refusal == (f"{prog}: error: unrecognized arguments: {' '.join(unknown)}" if unknown else None)


def test_docker_options_are_dockers_and_the_rest_goes_to_the_image_entry_point():
    read = read_command_line(SEEDS["vllm-docs"]["line"])
    assert read.docker == [
        ("--runtime", "nvidia"),
        ("--gpus", "all"),
        ("-v", "~/.cache/huggingface:/root/.cache/huggingface"),
        ("--env", "HF_TOKEN=$HF_TOKEN"),
        ("-p", "8000:8000"),
        ("--ipc", "host"),
    ]
    assert read.image == "vllm/vllm-openai:latest" and read.vllm_args == ["--model", "Qwen/Qwen3-0.6B"]
    assert image_entrypoint() == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert read_command_line(SEEDS["log18"]["line"]).image == "vllm/vllm-openai:v0.8.5"


def test_the_old_demo_server_module_is_gone_and_the_openai_one_is_there():
    assert not read_command_line(SEEDS["log16"]["line"]).module_exists
    assert read_command_line(SEEDS["log14"]["line"]).module_exists


def test_task_is_refused_with_vllms_hint_for_vllm_serve():
    read = read_command_line("vllm serve m --task embed")
    assert read.unknown == ["--task", "embed"]
    assert read.refusal == (
        "vllm serve: error: unrecognized arguments: --task embed\n\nHint: --task is not a vllm serve option. For "
        "embedding, reranking, or reward models, use --runner pooling. To adapt a generative model for pooling, also "
        "use --convert embed, --convert classify, or --convert reward."
    )


def test_elided_words_are_dropped_and_said():
    assert read_command_line(SEEDS["log17"]["line"]).elided
    assert not read_command_line(SEEDS["log14"]["line"]).elided


@pytest.mark.parametrize(
    "line, match",
    [
        ("ollama serve llama3", "not a vLLM server command line"),
        ("docker run --cap-add SYS_ADMIN vllm/vllm-openai:latest", "unknown docker run option '--cap-add'"),
    ],
)
def test_other_lines_are_refused_clearly(line, match):
    with pytest.raises(CommandLineError, match=match):
        read_command_line(line)
