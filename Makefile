# Checks of the nemo engine in a separate environment (never the project's .venv).
#   make nemo-env      create it (about 3 GB, a few minutes): scripts/nemo-env.sh
#   make nemo-check    build every generated NeMo / ModelOpt / Aligner config object from the real code,
#                      and run every paper recipe's jobs (tiny checkpoints of the same architectures) on
#                      the CPU up to their first CUDA call (tests/nemo_env; NEMO_SRC: NeMo's scripts/),
#                      and read our Megatron shards with Megatron-Core's own IndexedDataset
NEMO_VENV ?= $(CURDIR)/.venv-nemo

.PHONY: nemo-env nemo-check

nemo-env:
	NEMO_VENV=$(NEMO_VENV) bash scripts/nemo-env.sh

nemo-check:
	@test -x $(NEMO_VENV)/bin/python || { echo "no NeMo environment at $(NEMO_VENV): run make nemo-env"; exit 2; }
	$(NEMO_VENV)/bin/python -m pytest tests/nemo_env -q -p no:cacheprovider
	PYTHONPATH=$(CURDIR) $(NEMO_VENV)/bin/python -m pytest tests/unit/factory/corpus/test_indexed.py -k megatron -q -p no:cacheprovider
