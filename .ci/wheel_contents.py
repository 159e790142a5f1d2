"""Fail when the wheel holds anything but the package and its metadata (tests, results, examples),
or lacks the license and the README it is published with."""
import sys
import zipfile
from email.parser import Parser

PACKAGE = "cait_cli/"


def main(wheel: str) -> int:
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    info = next((n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA")), None)
    strays = [n for n in names if not n.startswith(PACKAGE) and not (info and n.startswith(info + "/"))]
    problems = [f"not part of the package: {n}" for n in strays]
    if info is None:
        problems.append("no .dist-info/METADATA")
    else:
        metadata = Parser().parsestr(archive.read(f"{info}/METADATA").decode())
        if not any(n.startswith(f"{info}/licenses/LICENSE") for n in names):
            problems.append("no LICENSE in the wheel's .dist-info/licenses")
        if metadata.get("Description-Content-Type") != "text/markdown" or "cait" not in metadata.get_payload():
            problems.append("README.md is not the wheel's description")
    if PACKAGE + "interface/cli.py" not in names:
        problems.append("cait_cli/interface/cli.py is missing")
    for line in problems:
        print(f"{wheel}: {line}", file=sys.stderr)
    print(f"{wheel}: {len(names)} files, {'bad' if problems else 'only the package and its metadata'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(max(main(w) for w in sys.argv[1:]))
