"""The package version, read from the installed package's metadata (pyproject.toml is its one source),
in a module of its own so any layer can read it."""
from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "cait-cli"  # the name pip installs (pyproject.toml's project.name)

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # the source tree on sys.path without being installed (pip install -e . fixes it)
    __version__ = "0+unknown"
