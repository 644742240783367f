"""Parameter counts and cumulative per-exit FLOPs of every registered model at full CIFAR-100 size
(3x32x32, 100 classes), measured with torch.utils.flop_counter; writes bench/results/model_costs.json
and the README's model table.

    python -m bench.model_table
"""
import json
import pathlib

from bench.readme_sections import update_readme_section

from msd_fast.models import create_model, list_models

OUT = pathlib.Path(__file__).resolve().parent / "results" / "model_costs.json"


def main() -> None:
    rows = {}
    for name in list_models():
        model = create_model(name, num_classes=100)
        rows[name] = {**model.cost((3, 32, 32)), "feature_dim": model.feature_dim, "exits": model.num_exits}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"input": [3, 32, 32], "num_classes": 100, "flops_unit": "FLOPs (2 per MAC)",
                               "models": rows}, indent=2))
    lines = ["| model | exits | params (M) | feature dim | cumulative GFLOPs at exit 1 .. N |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        fl = " / ".join(f"{f / 1e9:.3f}" for f in r["exit_flops"])
        lines.append(f"| `{name}` | {r['exits']} | {r['params'] / 1e6:.2f} | {r['feature_dim']} | {fl} |")
    update_readme_section("model-table", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
