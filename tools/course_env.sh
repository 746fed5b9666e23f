# Environment shared by `make test` and `make notebooks` (sourced, not run): the packaged
# SmolLM2 weights even where the hub or a hub cache is reachable, no hub access at all, quiet
# libraries and a fixed hash seed, so the committed outputs are the same on every machine.
export LORA_COURSE_MODEL=packaged HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONHASHSEED=0
