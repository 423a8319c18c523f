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
import re
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


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: Blender gets SIGTERM when the process that started it dies (a killed ``nscl generate``)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _why(output: str, images: Sequence[BlenderImage]) -> str:
    """The script's own error line (naming the image it failed on), else Blender's last line that says error."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for ln in reversed(lines):
        m = re.match(r"nscl-blender: error: image (\d+): (.*)", ln)
        if m and int(m.group(1)) < len(images):
            return f"{images[int(m.group(1))].output.name}: {m.group(2)}"
        if ln.startswith("nscl-blender: error:"):
            return ln.removeprefix("nscl-blender: error:").strip()
    said = [ln for ln in lines if "error" in ln.lower()]
    return (said or lines or ["no output"])[-1]


def render_blender(
    images: Sequence[BlenderImage],
    executable: str = "blender",
    threads: int = 0,
    work_dir: Path | None = None,
) -> None:
    """Render ``images`` in one Blender process; each lands at its ``output`` only once complete.

    Args:
        threads: Cycles' render threads (0: all cores).
        work_dir: where the job file and the unfinished images live (a ``.blender-*.tmp`` folder inside it; the
            system's temporary folder if None). ``nscl generate`` passes the split's folder, whose ``.*.tmp``
            leftovers a rerun removes.

    Raises:
        NSCLError: Blender is missing, fails, or leaves an image unwritten (naming the image and Blender's error).
    """
    if not images:
        return
    blender = find_blender(executable)
    with tempfile.TemporaryDirectory(prefix=".blender-", suffix=".tmp", dir=work_dir) as tmp:
        tmp_dir = Path(tmp)
        outputs = [tmp_dir / f"{i:06d}.png" for i in range(len(images))]
        job = {"threads": threads, "images": [im.job(out) for im, out in zip(images, outputs)]}
        job_path = tmp_dir / "job.json"
        job_path.write_text(json.dumps(job))
        cmd = [blender, "-b", "--factory-startup", "-noaudio", "--python-exit-code", "1"]
        cmd += ["--python", str(_SCRIPT), "--", str(job_path)]
        # Blender runs its own Python: a virtual environment's settings must not reach it.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env["PYTHONNOUSERSITE"] = "1"
        limit = _TIMEOUT_PER_IMAGE_S * len(images)
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=limit, env=env, preexec_fn=_die_with_parent
            )
        except subprocess.TimeoutExpired:
            raise NSCLError(
                f"blender: {len(images)} images ({images[0].output.name} to {images[-1].output.name}) took more "
                f"than {limit:.0f} s"
            ) from None
        if proc.returncode != 0:
            why = _why(proc.stdout + "\n" + proc.stderr, images)
            raise NSCLError(f"blender failed (exit {proc.returncode}): {why}")
        for im, out in zip(images, outputs):
            if not out.is_file():
                raise NSCLError(f"blender: {im.output.name} was not written")
        for im, out in zip(images, outputs):
            im.output.parent.mkdir(parents=True, exist_ok=True)
            tmp_name = im.output.with_name(f".{im.output.name}.tmp")
            shutil.move(str(out), tmp_name)
            os.replace(tmp_name, im.output)
