"""Train Sparse MERIT, a baseline, or a companion method.

    python train.py [--variant sparse|dense|naive-mtl|ser-only|se-only] ...   (merit.training)
    python train.py --method mlkd ...      multi-level knowledge distillation (merit.distillation)
    python train.py --method adapter ...   adapter with local attributes (merit.adapter_training)

``python train.py [--method M] --help`` lists each method's arguments. Works the same under
``accelerate launch train.py``.
"""

import importlib
import sys

METHODS = {
    "merit": "merit.training",
    "mlkd": "merit.distillation",
    "adapter": "merit.adapter_training",
}


def main(argv: list[str] | None = None) -> object:
    argv = list(sys.argv[1:] if argv is None else argv)
    method = "merit"
    matches = [i for i, a in enumerate(argv) if a == "--method" or a.startswith("--method=")]
    if matches:
        i = matches[0]
        if "=" in argv[i]:
            method = argv.pop(i).split("=", 1)[1]
        elif i + 1 < len(argv):
            method = argv[i + 1]
            del argv[i : i + 2]
        else:
            raise SystemExit("--method needs a value: " + ", ".join(METHODS))
    if method not in METHODS:
        raise SystemExit(f"Unknown --method '{method}'; choose from: {', '.join(METHODS)}")
    return importlib.import_module(METHODS[method]).main(argv)


if __name__ == "__main__":
    main()
