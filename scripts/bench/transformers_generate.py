"""The N-samples-per-prompt workload on transformers (PyTorch, CPU), for scripts/bench-compare.

Loads the same GGUF file steerflow runs (transformers dequantizes it to f32), renders the same
demo prompts with the model's chat template, and draws `samples` samples per prompt with the
same sampling settings (temperature 0.7, top-p 0.9), `batch` sequences per `generate` call:
batch 1 draws one sample per call, batch N draws a prompt's N samples in one call
(`num_return_sequences`). Prints one JSON line.
"""

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--prompts-file", required=True)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gguf = Path(args.gguf)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32
    )
    model.eval()
    records = [json.loads(l) for l in Path(args.prompts_file).read_text().splitlines() if l.strip()]
    prompts = []
    for i in range(args.prompts):
        r = records[i % len(records)]
        messages = r.get("messages") or [{"role": "user", "content": r["prompt"]}]
        prompts.append(
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        )
    eos = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    generated = 0
    prompt_tokens = 0
    torch.manual_seed(1)
    started = time.perf_counter()
    with torch.inference_mode():
        for ids in prompts:
            if hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            left = args.samples
            while left > 0:
                n = min(args.batch, left)
                out = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=True,
                    temperature=0.7,
                    top_p=0.9,
                    top_k=0,
                    max_new_tokens=args.max_new_tokens,
                    num_return_sequences=n,
                    pad_token_id=tokenizer.eos_token_id,
                )
                prompt_tokens += ids.shape[1] * n
                for row in out[:, ids.shape[1]:].tolist():
                    count = 0
                    for token in row:
                        if token in eos:
                            break
                        count += 1
                    generated += count
                left -= n
    wall = time.perf_counter() - started
    print(
        json.dumps(
            {
                "engine": "transformers",
                "batch": args.batch,
                "tokens_decoded": generated,
                "prompt_tokens": prompt_tokens,
                "wall_seconds": wall,
                "generated_tokens_per_wall_second": generated / wall,
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
