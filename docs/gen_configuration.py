"""Write ``docs/configuration.md`` from :class:`diffmix_aug.config.DiffMixConfig` (the options' one owner).

Run after changing an option::

    python docs/gen_configuration.py          # rewrites docs/configuration.md
    python docs/gen_configuration.py --check  # exit 1 when the file is out of date

``tests/unit/test_config.py`` checks that the file agrees with the class.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from diffmix_aug.config import options_reference  # noqa: E402

TARGET = ROOT / "docs" / "configuration.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the file is up to date")
    args = parser.parse_args(argv)
    text = options_reference()
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET} is out of date: run `python docs/gen_configuration.py`", file=sys.stderr)
            return 1
        return 0
    from diffmix_aug._io import atomic_write_text

    atomic_write_text(TARGET, text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
