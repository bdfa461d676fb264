"""Prints scripts/bench-compare's results as a markdown table with steerflow's ratios."""

import json
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {(r["engine"], r["batch"]): r for r in rows}
batches = sorted({r["batch"] for r in rows})
print("| batch | engine | decode tokens/s | generated tokens per wall second | steerflow ÷ it |")
print("|---|---|---|---|---|")
for b in batches:
    ours = by.get(("steerflow", b))
    for engine in ("steerflow", "llama.cpp", "transformers"):
        r = by.get((engine, b))
        if r is None:
            continue
        decode = r.get("decode_tokens_per_second")
        wall = r["generated_tokens_per_wall_second"]
        if engine == "steerflow" or ours is None:
            ratio = ""
        elif decode is not None:  # decode against decode
            ratio = f"{ours['decode_tokens_per_second'] / decode:.2f}× (decode)"
        else:  # wall against wall: transformers reports no decode-only rate
            ratio = f"{ours['generated_tokens_per_wall_second'] / wall:.2f}× (wall)"
        decode_text = f"{decode:.1f}" if decode is not None else "—"
        print(f"| {b} | {engine} | {decode_text} | {wall:.1f} | {ratio} |")
