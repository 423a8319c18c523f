"""Runs inside Blender (``blender -b --factory-startup --python blender_scene.py -- JOB.json``), never imported by nscl.

Builds each scene of a job file with Blender's Python API (Blender 3.x; Debian 12 packages 3.4) and renders it with
Cycles, so that ``nscl generate --renderer blender`` writes images with the look of CLEVR's own renders. Only the
standard library and ``bpy`` are used: Blender runs its own Python. :mod:`nscl.generate.blender` writes the job file
and checks the results.

The scene follows CLEVR's base scene as described in CLEVR's generator: a 35 mm lens on a 32 mm sensor aimed at the
origin; three area lamps (key, fill, back) aimed at the origin with Blender 3.4 wattages; a grey studio floor that
curves up into a backdrop behind the objects (the same profile as the NumPy renderer's); a black world. Materials
as CLEVR's node groups: rubber is a diffuse/velvet mix under a faint grey Beckmann coat, each mixed by Fresnel;
metal is a 40/60 mix of two anisotropic GGX lobes (roughness 0.447 and 0.1) tinted by the object's colour. Cubes
and cylinders have bevelled edges (CLEVR's SmoothCube and SmoothCylinder); the object's ``size`` is its half extent.

Job file: ``{"threads": T, "images": [{"output", "width", "height", "samples", "seed", "camera": {"position",
"look_at", "lens_mm", "sensor_mm"}, "lamps": [{"position", "radius", "intensity", "color"}], "backdrop": {"bx",
"by", "s0", "radius"}, "objects": [{"shape", "center", "size", "rotation", "color", "material"}]}]}``; each image
is written to its ``output`` path (PNG, 8-bit RGB). The process exits non-zero on the first failure.
"""

from __future__ import annotations

import json
import math
import sys

import bpy  # type: ignore[import-not-found]
from mathutils import Vector  # type: ignore[import-not-found]

_BEVEL = 0.08  # edge bevel of cubes and cylinders, in units of the object's half extent
_BEVEL_SEGMENTS = 4
_GLOSSY_BLUR = 2.0  # CLEVR's cycles.blur_glossy
_RUBBER_COAT_ROUGHNESS = math.sqrt(0.35)
_SUN_STRENGTH = 0.45
_METAL_LOBES = ((0.4, 0.447), (0.6, 0.1))  # (weight, roughness)


def _reset() -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)


def _aim(obj, target: Vector) -> None:
    obj.rotation_euler = (target - obj.location).to_track_quat("-Z", "Y").to_euler()


def _settings(img: dict, threads: int) -> None:
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = int(img["samples"])
    scene.cycles.seed = int(img["seed"])
    scene.cycles.use_denoising = False  # Debian's Blender has no OpenImageDenoise
    scene.cycles.blur_glossy = _GLOSSY_BLUR
    scene.render.resolution_x = int(img["width"])
    scene.render.resolution_y = int(img["height"])
    scene.render.resolution_percentage = 100
    scene.render.threads_mode = "FIXED" if threads > 0 else "AUTO"
    if threads > 0:
        scene.render.threads = threads
    scene.view_settings.view_transform = "Standard"  # CLEVR was rendered before Filmic became the default
    scene.view_settings.look = "None"
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    scene.render.image_settings.color_depth = "8"
    world = bpy.data.worlds.new("world")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.0
    scene.world = world


def _camera(cam: dict) -> None:
    data = bpy.data.cameras.new("camera")
    data.lens = float(cam["lens_mm"])
    data.sensor_width = float(cam["sensor_mm"])
    data.sensor_fit = "AUTO"
    obj = bpy.data.objects.new("camera", data)
    obj.location = Vector(cam["position"])
    _aim(obj, Vector(cam["look_at"]))
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.scene.camera = obj


def _lamp(i: int, lamp: dict) -> None:
    data = bpy.data.lights.new(f"lamp{i}", type="AREA")
    data.shape = "SQUARE"  # as in CLEVR's base scene, whose lamp sizes (0.5 m, 1 m) are the squares' sides
    data.size = float(lamp["radius"])
    data.energy = float(lamp["intensity"])
    data.color = tuple(lamp["color"])
    obj = bpy.data.objects.new(f"lamp{i}", data)
    obj.location = Vector(lamp["position"])
    _aim(obj, Vector((0.0, 0.0, 0.0)))
    bpy.context.scene.collection.objects.link(obj)


def _sun(strength: float) -> None:
    """CLEVR's base scene also holds a weak sun lamp; straight down here, so its shadows stay under the objects."""
    data = bpy.data.lights.new("sun", type="SUN")
    data.energy = strength
    obj = bpy.data.objects.new("sun", data)
    bpy.context.scene.collection.objects.link(obj)


def _backdrop(b: dict) -> None:
    """Floor z = 0 for s < s0, a quarter cylinder of radius R up to a wall at s = s0 + R (s along (bx, by))."""
    s0, r = float(b["s0"]), float(b["radius"])
    profile = [(s, 0.0) for s in (-60.0, -20.0, -5.0, 0.0, s0)]
    steps = 24
    for k in range(1, steps + 1):
        a = 0.5 * math.pi * k / steps
        profile.append((s0 + r * math.sin(a), r - r * math.cos(a)))
    profile.append((s0 + r, 60.0))
    bx, by = float(b["bx"]), float(b["by"])
    tx, ty = -by, bx  # horizontal, across the view
    verts, faces = [], []
    for s, z in profile:
        for t in (-60.0, 60.0):
            verts.append((s * bx + t * tx, s * by + t * ty, z))
    for k in range(len(profile) - 1):
        a, c = 2 * k, 2 * (k + 1)
        faces.append((a, a + 1, c + 1, c))
    mesh = bpy.data.meshes.new("ground")
    mesh.from_pydata(verts, [], faces)
    mesh.update()
    for poly in mesh.polygons:
        poly.use_smooth = True
    mat, nodes, links, out = _material("ground")
    diffuse = nodes.new("ShaderNodeBsdfDiffuse")
    diffuse.inputs["Color"].default_value = (0.8, 0.8, 0.8, 1.0)
    links.new(diffuse.outputs[0], out.inputs["Surface"])
    mesh.materials.append(mat)
    obj = bpy.data.objects.new("ground", mesh)
    bpy.context.scene.collection.objects.link(obj)


def _material(name: str) -> tuple:
    """A new node material with only its output node: (material, nodes, links, output)."""
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    nodes.clear()
    return mat, nodes, links, nodes.new("ShaderNodeOutputMaterial")


def _fresnel_mix(nodes, links, ior: float, a, b):
    """A mix shader of nodes ``a`` and ``b`` weighted by a Fresnel node of this index of refraction."""
    fresnel = nodes.new("ShaderNodeFresnel")
    fresnel.inputs["IOR"].default_value = ior
    mix = nodes.new("ShaderNodeMixShader")
    links.new(fresnel.outputs[0], mix.inputs["Fac"])
    links.new(a.outputs[0], mix.inputs[1])
    links.new(b.outputs[0], mix.inputs[2])
    return mix


def _rubber(color: tuple) -> bpy.types.Material:
    mat, nodes, links, out = _material("rubber")
    diffuse = nodes.new("ShaderNodeBsdfDiffuse")
    velvet = nodes.new("ShaderNodeBsdfVelvet")
    velvet.inputs["Sigma"].default_value = 0.6
    for n in (diffuse, velvet):
        n.inputs["Color"].default_value = color
    base = _fresnel_mix(nodes, links, 1.4, diffuse, velvet)
    coat = nodes.new("ShaderNodeBsdfGlossy")
    coat.distribution = "BECKMANN"
    coat.inputs["Color"].default_value = (0.8, 0.8, 0.8, 1.0)
    coat.inputs["Roughness"].default_value = _RUBBER_COAT_ROUGHNESS
    top = _fresnel_mix(nodes, links, 1.2, base, coat)
    links.new(top.outputs[0], out.inputs["Surface"])
    return mat


def _metal(color: tuple) -> bpy.types.Material:
    mat, nodes, links, out = _material("metal")
    lobes = []
    for _weight, roughness in _METAL_LOBES:
        n = nodes.new("ShaderNodeBsdfAnisotropic")
        n.distribution = "GGX"
        n.inputs["Color"].default_value = color
        n.inputs["Roughness"].default_value = roughness
        lobes.append(n)
    mix = nodes.new("ShaderNodeMixShader")
    mix.inputs["Fac"].default_value = _METAL_LOBES[1][0]
    links.new(lobes[0].outputs[0], mix.inputs[1])
    links.new(lobes[1].outputs[0], mix.inputs[2])
    links.new(mix.outputs[0], out.inputs["Surface"])
    return mat


def _object(i: int, o: dict) -> None:
    shape = o["shape"]
    if shape == "sphere":
        bpy.ops.mesh.primitive_uv_sphere_add(segments=64, ring_count=32, radius=1.0)
    elif shape == "cube":
        bpy.ops.mesh.primitive_cube_add(size=2.0)
    elif shape == "cylinder":
        bpy.ops.mesh.primitive_cylinder_add(vertices=64, radius=1.0, depth=2.0)
    else:
        raise ValueError(f"object {i}: unknown shape {shape!r}")
    obj = bpy.context.active_object
    obj.name = f"object{i}"
    if shape != "sphere":
        bevel = obj.modifiers.new("bevel", "BEVEL")
        bevel.width = _BEVEL
        bevel.segments = _BEVEL_SEGMENTS
        bevel.limit_method = "ANGLE"
        bevel.harden_normals = True
        obj.data.use_auto_smooth = True
        obj.data.auto_smooth_angle = math.radians(30.0)
    for poly in obj.data.polygons:
        poly.use_smooth = True
    size = float(o["size"])
    obj.scale = (size, size, size)
    obj.location = Vector(o["center"])
    obj.rotation_euler = (0.0, 0.0, float(o["rotation"]))
    color = (*(float(c) for c in o["color"]), 1.0)
    if o["material"] == "rubber":
        mat = _rubber(color)
    elif o["material"] == "metal":
        mat = _metal(color)
    else:
        raise ValueError(f"object {i}: unknown material {o['material']!r}")
    obj.data.materials.append(mat)


def render_job(job: dict) -> None:
    threads = int(job.get("threads", 0))
    for index, img in enumerate(job["images"]):
        try:
            _render_one(img, threads)
        except Exception as e:
            raise RuntimeError(f"image {index}: {type(e).__name__}: {e}") from e
        print(f"nscl-blender: wrote {img['output']}", flush=True)


def _render_one(img: dict, threads: int) -> None:
    _reset()
    _settings(img, threads)
    _camera(img["camera"])
    for i, lamp in enumerate(img["lamps"]):
        _lamp(i, lamp)
    _sun(_SUN_STRENGTH)
    _backdrop(img["backdrop"])
    for i, o in enumerate(img["objects"]):
        _object(i, o)
    bpy.context.scene.render.filepath = img["output"]
    bpy.ops.render.render(write_still=True)


def main(argv: list[str]) -> None:
    if bpy.app.version[0] != 3:
        raise RuntimeError(
            f"written for Blender 3.x (Debian 12's 3.4), found {bpy.app.version_string}: Blender 4 renamed the "
            "velvet and anisotropic shaders this scene uses"
        )
    args = argv[argv.index("--") + 1 :] if "--" in argv else []
    if len(args) != 1:
        raise SystemExit("usage: blender -b --factory-startup --python blender_scene.py -- JOB.json")
    with open(args[0], encoding="utf-8") as f:
        render_job(json.load(f))


if __name__ == "__main__":
    try:
        main(sys.argv)
    except Exception as e:  # Blender keeps running after a script error unless told otherwise
        print(f"nscl-blender: error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
