#!/usr/bin/env bash
# Recipe-search candidates side by side on a lent GPU machine (one call, a hard time limit).
#
#   bash benchmarks/device_recipe_search.sh NAME [NAME ...]
#
# What the machine lacks travels with the call (`carry`): wheels of the packages its image does
# not have in `.whl/` and the Whisper tiny.en encoder in `.devcarry/` (float16, lossless: the
# packaged weights are float16), since the machine has neither the package registry nor the
# weights' wheel. Both corpora are built once before any run starts (parallel builds of one
# cache folder would overwrite each other); then every candidate runs as its own
# `recipe_search.py --only NAME` process on the one GPU, each writing its row to its own table,
# and the rows are merged into $OUT/recipe_search_h200.json as they finish. At
# $DEADLINE seconds (default 500) whatever still runs is stopped, so the rows that finished come
# back even when a long one does not. Environment: STEPS (recipe_search --steps, for a quick
# local try), DEADLINE, OUT (default: a temporary folder), PY (python3), EVAL_DEVICE (cuda).
set -u
cd "$(dirname "$0")/.."
started=$(date +%s)
DEADLINE=${DEADLINE:-500}
OUT=${OUT:-$(mktemp -d)}
work=${WORK:-/tmp/merit-recipe-search}
mkdir -p "$work/rows" "$work/logs"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

PY=${PY:-python3}
if [ -d .whl ] && ! "$PY" -c "import datasets, soundfile, espeakng_loader" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'EOF' || exit 1
import torch, transformers
print("torch", torch.__version__, "transformers", transformers.__version__,
      "cuda", torch.cuda.is_available() and torch.cuda.get_device_name(0))
EOF

backbone=()
if [ -d .devcarry/whisper-tiny.en-encoder-fp16 ]; then
    "$PY" - "$work/encoder" <<'EOF' || exit 1
import sys, torch
from transformers.models.whisper.modeling_whisper import WhisperEncoder
encoder = WhisperEncoder.from_pretrained(".devcarry/whisper-tiny.en-encoder-fp16", dtype=torch.float32)
encoder.save_pretrained(sys.argv[1])
print("encoder", sum(p.numel() for p in encoder.parameters()), "parameters, float32")
EOF
    backbone=(--backbone "$work/encoder")
fi

# Both corpora, once, before any run reads them.
"$PY" -c "from merit.corpus import ensure_corpus; ensure_corpus()" >"$work/logs/corpus.log" 2>&1 &
"$PY" -c "from merit.corpus import ensure_corpus; ensure_corpus(extra_train_voices=24)" \
    >"$work/logs/corpus24.log" 2>&1 &
wait
echo "corpora built after $(($(date +%s) - started)) s"

steps=()
[ -n "${STEPS:-}" ] && steps=(--steps "$STEPS")
pids=()
for name in "$@"; do
    "$PY" benchmarks/recipe_search.py --only "$name" "${steps[@]}" --out "$work/runs" \
        --table "$work/rows/$name.json" --eval_device "${EVAL_DEVICE:-cuda}" "${backbone[@]}" \
        >"$work/logs/$name.log" 2>&1 &
    pids+=($!)
done

merge() {
    "$PY" - "$work/rows" "$OUT/recipe_search_h200.json" <<'EOF'
import json, sys
from pathlib import Path
rows = [row for p in sorted(Path(sys.argv[1]).glob("*.json")) for row in json.loads(p.read_text())]
Path(sys.argv[2]).write_text(json.dumps(rows, indent=2) + "\n")
print(f"{len(rows)} rows:", ", ".join(
    f"{r['name'].removeprefix('two-stage-x0.1-passthrough0.01-')} {r['val_f1_macro']:.3f}/"
    f"{r.get('val_swept_f1_macro') or 0:.3f}/{r.get('val_voices_f1_macro') or 0:.3f}"
    for r in rows))
EOF
}

while true; do
    running=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && running=$((running + 1)); done
    elapsed=$(($(date +%s) - started))
    echo "$elapsed s: $running of ${#pids[@]} still running"
    [ "$running" -eq 0 ] && break
    if [ "$elapsed" -ge "$DEADLINE" ]; then
        echo "deadline: stopping the $running runs still going"
        for pid in "${pids[@]}"; do pkill -TERM -P "$pid" 2>/dev/null; kill "$pid" 2>/dev/null; done
        sleep 3
        break
    fi
    sleep 20
done
merge
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv 2>/dev/null
for name in "$@"; do echo "== $name"; grep -E "Error|error|Traceback" "$work/logs/$name.log" | tail -3; done
tar -czf "$OUT/logs.tgz" -C "$work" logs rows 2>/dev/null
echo "done after $(($(date +%s) - started)) s"
