"""``nas-service examples [DEST]``: copies the example specs and the cluster configs out of the installation.

From a checkout they are its ``examples/`` and ``cluster/{kuberay,launcher}/``; from an installed wheel the
same files under ``<prefix>/share/nas-service/`` (the wheel's data files, see pyproject.toml).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

# What is copied, relative to the checkout (and to <prefix>/share/nas-service in an installed wheel).
SHIPPED = ("examples", "cluster/kuberay", "cluster/launcher")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("examples", help="copy the example specs and cluster configs into a folder")
    p.add_argument("dest", nargs="?", default="nas-service-examples", help="the folder to create or fill")
    p.add_argument("--force", action="store_true", help="overwrite files that exist")
    p.set_defaults(func=_examples)


def shipped_root() -> Path:
    """Where this installation keeps the shipped files: the checkout, else ``<prefix>/share/nas-service``."""
    checkout = Path(__file__).resolve().parents[2]
    for root in (checkout, Path(sys.prefix) / "share" / "nas-service"):
        if (root / "examples" / "quickstart.yaml").is_file():
            return root
    raise FileNotFoundError(f"examples: none shipped with this installation (looked in {checkout} and "
                            f"{Path(sys.prefix) / 'share' / 'nas-service'})")  # fmt: skip


def _examples(args: argparse.Namespace) -> int:
    root, dest = shipped_root(), Path(args.dest)
    files = [f for part in SHIPPED for f in sorted((root / part).rglob("*.yaml"))]
    targets = {f: dest / f.relative_to(root) for f in files}
    existing = [str(t) for t in targets.values() if t.exists()]
    if existing and not args.force:
        raise ValueError(f"examples: would overwrite {existing[:3]}{' ...' if len(existing) > 3 else ''}; "
                              "pass --force or another folder")  # fmt: skip
    for source, target in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    print(f"{len(files)} files into {dest}/ ({', '.join(SHIPPED)}); try: nas-service validate "
          f"{dest / 'examples' / 'quickstart.yaml'}")
    return 0
