"""nscl: the Neuro-Symbolic Concept Learner on modern PyTorch."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nscl")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
