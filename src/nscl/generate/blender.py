"""The Blender back-end of ``nscl generate`` (``--renderer blender``): CLEVR's own renderer for the images.

Scenes, masks, boxes and questions are the same as with the NumPy renderer (the same random draws, and the masks come
from the NumPy renderer's object-id buffer of the same geometry); only the pixels come from Blender's Cycles, which is
what CLEVR was rendered with. One Blender process renders a whole chunk: this module writes a job file describing each
image (camera, lamps, backdrop, objects), runs ``blender -b --factory-startup --python blender_scene.py -- JOB`` and
moves each finished image into place atomically. :mod:`nscl.generate.blender_scene` is the script Blender runs.

Blender is optional: Debian and Ubuntu package it (``apt-get install blender``; 3.4 on Debian 12). Cycles on a CPU
is slow (CLEVR-FACTS' benchmark: about 3.6 s per 320x240 image at 64 samples on two cores), so this back-end is
meant for evaluation sets where the look matters, not for the bulk of training data.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import NSCLError
from .camera import Camera, Lamp
from .geometry import RenderObject, _Backdrop

__all__ = ["BlenderImage", "find_blender", "render_blender"]

_SCRIPT = Path(__file__).with_name("blender_scene.py")
_TIMEOUT_PER_IMAGE_S = 600.0


@dataclass(frozen=True)
class BlenderImage:
    """One image for Blender to render to ``output`` (a PNG path; written atomically)."""

    output: Path
    objects: Sequence[RenderObject]
    camera: Camera
    lamps: Sequence[Lamp]
    width: int
    height: int
    samples: int = 64
    seed: int = 0

    def job(self, tmp_output: Path) -> dict:
        b = _Backdrop.for_camera(self.camera)
        return {
            "output": str(tmp_output),
            "width": self.width,
            "height": self.height,
            "samples": self.samples,
            "seed": self.seed,
            "camera": asdict(self.camera),
            "lamps": [asdict(lamp) for lamp in self.lamps],
            "backdrop": {"bx": b.bx, "by": b.by, "s0": b.s0, "radius": b.radius},
            "objects": [asdict(o) for o in self.objects],
        }


def find_blender(executable: str = "blender") -> str:
    """The Blender executable's path; NSCLError when it is not installed."""
    path = shutil.which(executable)
    if path is None:
        raise NSCLError(
            f"--renderer blender: {executable!r} not found; install Blender (apt-get install blender) "
            "or pass --blender PATH"
        )
    return path


def render_blender(images: Sequence[BlenderImage], executable: str = "blender", threads: int = 0) -> None:
    """Render ``images`` in one Blender process; each lands at its ``output`` only once complete.

    Args:
        threads: Cycles' render threads (0: all cores).

    Raises:
        NSCLError: Blender is missing, fails, or leaves an image unwritten (its last error line is quoted).
    """
    if not images:
        return
    blender = find_blender(executable)
    with tempfile.TemporaryDirectory(prefix="nscl-blender-") as tmp:
        tmp_dir = Path(tmp)
        outputs = [tmp_dir / f"{i:06d}.png" for i in range(len(images))]
        job = {"threads": threads, "images": [im.job(out) for im, out in zip(images, outputs)]}
        job_path = tmp_dir / "job.json"
        job_path.write_text(json.dumps(job))
        cmd = [blender, "-b", "--factory-startup", "-noaudio", "--python", str(_SCRIPT), "--", str(job_path)]
        try:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=_TIMEOUT_PER_IMAGE_S * len(images),
                env={**os.environ, "PYTHONNOUSERSITE": "1"},
            )
        except subprocess.TimeoutExpired:
            raise NSCLError(
                f"blender: timed out rendering {len(images)} images ({images[0].output.name}, ...)"
            ) from None
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            why = next(
                (ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else "no output"
            )
            raise NSCLError(f"blender failed (exit {proc.returncode}) on {images[0].output.name}, ...: {why}")
        for im, out in zip(images, outputs):
            if not out.is_file():
                raise NSCLError(f"blender: {im.output.name} was not written")
        for im, out in zip(images, outputs):
            im.output.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(out), im.output.with_name(f".{im.output.name}.tmp"))
            os.replace(im.output.with_name(f".{im.output.name}.tmp"), im.output)
