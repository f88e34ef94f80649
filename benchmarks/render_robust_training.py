"""Render docs/robust_training.json (from benchmarks/robust_training.py) as the README's
markdown table and docs/robust_training.png; the per-layer allocation's costs (polynomial
levels and ciphertext products) are computed here from the stored polynomials.

Usage: python benchmarks/render_robust_training.py [--json docs/robust_training.json]
       [--plot docs/robust_training.png]
Prints the markdown, then one JSON line with the allocation costs.
"""
from __future__ import annotations

import argparse
import json


def fmt(cell: list[float]) -> str:
    return f"{cell[0]:.1f} ± {cell[1]:.1f}"


def table(summary: dict) -> str:
    arms = list(summary["accuracy"])
    alphas = list(summary["accuracy"][arms[0]])
    head = (f"**{summary['model']} / {summary['activation']}** ({summary['seeds']} seeds; checkpoint "
            f"{fmt(summary['original'])}%, bar = control exact {summary['exact_accuracy']['control'][0]:.1f} - 0.5)\n\n"
            "| arm | exact | " + " | ".join(f"α={float(a):g}" for a in alphas) + " | smallest α |\n"
            "|---|---|" + "---|" * len(alphas) + "---|\n")
    rows = [f"| {arm} | {fmt(summary['exact_accuracy'][arm])} | "
            + " | ".join(fmt(summary["accuracy"][arm][a]) for a in alphas)
            + f" | {summary['smallest_alpha'][arm] if summary['smallest_alpha'][arm] is not None else '-'} |"
            for arm in arms]
    return head + "\n".join(rows) + f"\n\nbits_saved_vs_control: {summary['bits_saved_vs_control']}\n"


def allocation_costs(entry: dict) -> dict:
    """Polynomial levels (sum over layers, all on the main path) and ct x ct products per
    ciphertext of the uniform and the allocated PANN."""
    from polyact.nn.poly_act import PolyAct
    from polyact.train.allocate import layer_ct_ct_mults

    out = {}
    for label in ("uniform", "allocated"):
        layers = [PolyAct.from_spec(v["spec"], name=k) for k, v in entry[label]["layers"].items()]
        out[label] = {"poly_depth": sum(m.depth for m in layers), "ct_ct_mults": sum(layer_ct_ct_mults(m) for m in layers)}
    out["saved"] = {k: out["uniform"][k] - out["allocated"][k] for k in ("poly_depth", "ct_ct_mults")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="docs/robust_training.json")
    parser.add_argument("--plot", default="docs/robust_training.png")
    args = parser.parse_args()
    with open(args.json) as fh:
        report = json.load(fh)
    print("\n".join(table(s) for s in report["summary"]))
    costs = []
    for entry in report["allocation"]:
        c = allocation_costs(entry)
        costs.append({"model": entry["model"], "activation": entry["activation"], "uniform_alpha": entry["uniform_alpha"],
                      "alphas": sorted(set(entry["alphas"].values())), **c,
                      "accuracy_check_half": entry["accuracy_check_half"]})
        print(f"allocation {entry['model']}/{entry['activation']} from uniform α={entry['uniform_alpha']:g}: "
              f"levels {c['uniform']['poly_depth']} -> {c['allocated']['poly_depth']}, ct×ct "
              f"{c['uniform']['ct_ct_mults']} -> {c['allocated']['ct_ct_mults']}, check-half accuracy "
              f"{entry['accuracy_check_half']['uniform']:.1f} -> {entry['accuracy_check_half']['allocated']:.1f}")
    if args.plot:
        from polyact.plots import plot_robust

        plot_robust([{"model": s["model"], "activation": s["activation"], "accuracy": s["accuracy"],
                      "original": {"control exact": s["exact_accuracy"]["control"][0]}} for s in report["summary"]],
                    args.plot)
    print(json.dumps({"allocation": costs}))


if __name__ == "__main__":
    main()
