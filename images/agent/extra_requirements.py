"""Print one extra's requirements from pyproject.toml, one per line (for ``pip install -r``).

    python3 images/agent/extra_requirements.py pyproject.toml node

images/build.sh feeds the node agent image exactly the ``node`` extra this way, so the image's
dependencies are the package's declared ones and nothing is listed twice.
"""

import sys
import tomllib


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: extra_requirements.py PYPROJECT EXTRA", file=sys.stderr)
        return 2
    with open(argv[1], "rb") as f:
        extras = tomllib.load(f)["project"].get("optional-dependencies", {})
    if argv[2] not in extras:
        print(f"{argv[1]} declares no extra {argv[2]!r} (it has: {', '.join(sorted(extras))})", file=sys.stderr)
        return 2
    print("\n".join(extras[argv[2]]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
