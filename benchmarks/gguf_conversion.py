"""The embedded model's first use: converting its GGUF to a safetensors folder.

Every fresh artifacts folder pays it once: `make demo` on a fresh clone, each test worker,
a new user's first run. Side by side in one run, alternating, each in a fresh process
(imports included, as a first use pays them), into a temporary folder:

- now: `loading.embedded_model_dir`: one read of the GGUF for the weights and config
  (`convert_llama_gguf`), one by transformers for the tokenizer;
- before: transformers' GGUF path for the model (`from_pretrained(..., gguf_file=...)`,
  rebuilt from its config, `save_pretrained`) and for the tokenizer, as the conversion
  was done until now.

Both write the same files (tests/integration/test_local_oracle.py compares them).

.venv/bin/python benchmarks/gguf_conversion.py [--repeat 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NOW = """
import sys
from reflection_assets.engines.models.loading import embedded_model_dir
embedded_model_dir(sys.argv[1])
"""

BEFORE = """
import sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from reflection_assets.engines.models.loading import embedded_gguf
gguf = embedded_gguf()
tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
config = loaded.config
config.architectures = ["LlamaForCausalLM"]
if hasattr(config, "quantization_config"):
    del config.quantization_config
model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
model.load_state_dict(loaded.state_dict())
model.generation_config.eos_token_id = tokenizer.eos_token_id
model.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
model.save_pretrained(Path(sys.argv[1]))
tokenizer.save_pretrained(Path(sys.argv[1]))
"""


def timed(code: str) -> float:
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-W", "ignore", "-c", code, folder], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"before": [], "now": []}
    for _ in range(args.repeat):
        times["before"].append(timed(BEFORE))
        times["now"].append(timed(NOW))
    before, now = statistics.median(times["before"]), statistics.median(times["now"])
    print(f"before (transformers' GGUF path): {before:6.1f} s  {[round(t, 1) for t in times['before']]}")
    print(f"now    (convert_llama_gguf):      {now:6.1f} s  {[round(t, 1) for t in times['now']]}")
    print(f"the first use of the embedded model converts it {before / now:.2f}x faster")


if __name__ == "__main__":
    main()
