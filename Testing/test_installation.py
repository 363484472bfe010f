"""The ways users install SlicerCRC, as far as they can be tried here (DESIGN.md, "What a Slicer installation holds").

- Slicer's "Additional module paths": a fresh Python that sees only copies of the two module folders
  and the third-party packages (no ``CRCTraining``, no editable install) runs the automatic
  segmentation with the catalogue's demonstration model.
- A non-editable wheel: holds the catalogue and the demonstration model as package data, and
  ``open_model("demo_phantom")`` works from it.
- A built extension: every file the modules read at run time is in their CMake install lists.
- The import direction, read from the source: ``OrganGuidanceLib`` <- ``CRCSegmentationLib`` <- ``CRCTraining``.
"""
from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path
from typing import Dict, Iterator, List, Set

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = {"OrganGuidance": REPO / "OrganGuidance", "CRCSegmentation": REPO / "CRCSegmentation"}
LIBS = {"OrganGuidanceLib": REPO / "OrganGuidance" / "OrganGuidanceLib",
        "CRCSegmentationLib": REPO / "CRCSegmentation" / "CRCSegmentationLib",
        "CRCTraining": REPO / "Training" / "CRCTraining"}
# A package may import only the ones to its left (DESIGN.md, "Dependency direction is one way").
ORDER = ("OrganGuidanceLib", "CRCSegmentationLib", "CRCTraining")


def python_files(folder: Path) -> Iterator[Path]:
    return (p for p in sorted(folder.rglob("*.py")) if "__pycache__" not in p.parts)


def imported_modules(path: Path) -> Iterator[tuple]:
    """(line, absolute module name, imported names) of every import in the file, also inside functions."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module, [alias.name for alias in node.names]


# --- import direction -------------------------------------------------------------------------
@pytest.mark.parametrize("package", ORDER[:2])
def test_libs_never_import_upwards(package):
    forbidden = ORDER[ORDER.index(package) + 1:]
    offences = [f"{path.relative_to(REPO)}:{line} imports {module}"
                for path in python_files(LIBS[package]) for line, module, _ in imported_modules(path)
                if module.split(".")[0] in forbidden]
    assert not offences, offences


def test_no_package_imports_another_packages_private_names():
    offences = []
    for package, folder in LIBS.items():
        for path in python_files(folder):
            for line, module, names in imported_modules(path):
                top = module.split(".")[0]
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if top in LIBS and top != package and (private or any(p.startswith("_") for p in module.split(".")[1:])):
                    offences.append(f"{path.relative_to(REPO)}:{line} from {module} import {private}")
    assert not offences, offences


def test_the_direction_rule_sees_an_upward_import(tmp_path):
    """The AST reader finds an import hidden inside a function (what a run-time import graph may miss)."""
    source = tmp_path / "late.py"
    source.write_text("def f():\n    from CRCTraining.nnunet.export import export_bundle\n")
    assert [m for _, m, _ in imported_modules(source)] == ["CRCTraining.nnunet.export"]


# --- trainer names the Lib resolves itself --------------------------------------------------------
def test_every_prediction_trainer_of_the_training_package_is_resolved_by_the_lib():
    """A new trainer in CRCTraining.trainers that the Lib cannot build would need CRCTraining to predict."""
    import importlib

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from CRCSegmentationLib.networks.nnunet_architectures import NNUNET_DEFAULT, RCSEGNEXT, TRAINER_ARCHITECTURES
    from CRCTraining.rcsegnext.mixins import RCSegNeXtNetworkMixin

    defined: Dict[str, type] = {}
    for path in python_files(LIBS["CRCTraining"] / "trainers"):
        module = importlib.import_module(f"CRCTraining.trainers.{path.stem}")
        defined.update({name: value for name, value in vars(module).items()
                        if isinstance(value, type) and issubclass(value, nnUNetTrainer) and value is not nnUNetTrainer})
    builders = {NNUNET_DEFAULT: nnUNetTrainer.build_network_architecture,
                RCSEGNEXT: RCSegNeXtNetworkMixin.build_network_architecture}
    built = {n: next((a for a, b in builders.items() if c.build_network_architecture is b), None)
             for n, c in defined.items()}
    pretraining = {n for n, a in built.items() if a is None}  # SSL trainers: a 1-channel reconstruction head
    assert pretraining == {"nnUNetTrainerAGSSL", "nnUNetTrainerSSLInpaint", "nnUNetTrainerSSLMAE"}
    assert TRAINER_ARCHITECTURES == {n: a for n, a in built.items() if a is not None}
    assert set(TRAINER_ARCHITECTURES.values()) == {NNUNET_DEFAULT, RCSEGNEXT}


# --- pip: package list and wheel --------------------------------------------------------------
def test_pyproject_lists_every_package():
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    roots = {name: REPO / folder for name, folder in config["package-dir"].items()}
    found = set()
    for name, root in roots.items():
        for init in root.rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                found.add(".".join([name, *init.parent.relative_to(root).parts]))
    assert listed == found


def repository_copy(target: Path) -> Path:
    """The tracked files of this checkout (what a fresh clone holds), without the venv or build outputs."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def third_party_only_python(path_entries: List[Path]) -> Dict[str, str]:
    """Environment for ``python -S``: no site processing, so this venv's editable install stays out."""
    site_packages = sysconfig.get_paths()["purelib"]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    environment["PYTHONPATH"] = os.pathsep.join([*map(str, path_entries), site_packages])
    environment["PYTHONNOUSERSITE"] = "1"
    return environment


def run_isolated(script: str, path_entries: List[Path], cwd: Path, timeout: int = 600) -> dict:
    result = subprocess.run([sys.executable, "-S", "-c", textwrap.dedent(script)], cwd=cwd, capture_output=True,
                            text=True, env=third_party_only_python(path_entries), timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_non_editable_wheel_holds_the_catalogue_and_the_demo_model(tmp_path):
    source = repository_copy(tmp_path / "clone")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("slicercrc-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    demo = REPO / "CRCSegmentation" / "Resources" / "Models" / "demo_phantom"
    shipped = {f"CRCSegmentationLib/Resources/Models/demo_phantom/{p.relative_to(demo).as_posix()}"
               for p in demo.rglob("*") if p.is_file()}
    assert "CRCSegmentationLib/Resources/models.json" in names and shipped <= names
    assert "CRCSegmentationLib/networks/usam/model.py" in names and "CRCTraining/trainers/agcrc_trainers.py" in names
    found = run_isolated("""
        import json, CRCSegmentationLib
        from CRCSegmentationLib import open_model
        from CRCSegmentationLib.dicom.terminology import terminology_file
        model = open_model("demo_phantom")
        print(json.dumps({"lib": CRCSegmentationLib.__file__, "folder": str(model.folder), "kind": model.kind,
                          "modality": model.modality, "tumor": model.tumor_labels,
                          "terminology": str(terminology_file()) if terminology_file().is_file() else ""}))
    """, [tmp_path / "site"], cwd=tmp_path)
    site = str((tmp_path / "site").resolve())
    assert found["lib"].startswith(site) and found["folder"].startswith(site)
    assert found["terminology"].startswith(site)  # the segment codes ship in the wheel too
    assert (found["kind"], found["modality"], found["tumor"]) == ("nnunet", "CT", [1])


# --- Slicer: "Additional module paths" ---------------------------------------------------------
@pytest.mark.slow
def test_additional_module_paths_route_segments_the_real_ct_without_the_training_package(tmp_path, shared_data):
    """Only the two module folders, as Slicer would put them on sys.path, plus the third-party packages."""
    modules = tmp_path / "modules"
    for name, folder in MODULES.items():
        shutil.copytree(folder, modules / name, ignore=shutil.ignore_patterns("__pycache__"))
    found = run_isolated(f"""
        import importlib.util, json, sys
        assert importlib.util.find_spec("CRCTraining") is None, "the training package must not be reachable"
        import CRCSegmentationLib, OrganGuidanceLib
        from CRCSegmentationLib.core.segmentation import SegmentationParameters
        from CRCSegmentationLib.logic import CRCSegmentationLogic, CRCSegmentationSettings
        from CRCSegmentationLib import open_model
        from CRCSegmentationLib.mrml import tumor_segment_id
        from OrganGuidanceLib.io import read_image
        from OrganGuidanceLib.logic import OrganGuidanceSettings, OrganSourceChoice
        from OrganGuidanceLib.mrml import add_volume_node, new_scene, segment_mask

        data = {str(shared_data)!r}
        scene = new_scene()
        ct = read_image(data + "/ts_example_ct.nii.gz")
        ct_node = add_volume_node(scene, ct, "CT")
        organs = OrganSourceChoice(kind="file", file_path=data + "/ts_example_ct_seg_total_v2.nii.gz",
                                   convention="totalsegmentator")
        settings = CRCSegmentationSettings(model="demo_phantom", guidance_source="compute",
                                           organ_guidance=OrganGuidanceSettings(primary=organs),
                                           segmentation=SegmentationParameters(device="cpu", mirroring=False))
        segmentation = CRCSegmentationLogic(scene).process(ct_node, settings)
        segment = tumor_segment_id(segmentation)
        mask = segment_mask(segmentation, segment, ct)
        print(json.dumps({{"libs": [CRCSegmentationLib.__file__, OrganGuidanceLib.__file__],
                           "model": str(open_model("demo_phantom").folder), "segment": segment,
                           "voxels": int(mask.sum()), "shape": list(mask.shape), "ct_shape": list(ct.shape),
                           "training_loaded": any(m.split(".")[0] == "CRCTraining" for m in sys.modules)}}))
    """, [modules / "OrganGuidance", modules / "CRCSegmentation"], cwd=tmp_path)
    root = str(modules.resolve())
    assert all(path.startswith(root) for path in found["libs"])
    assert found["model"].startswith(str((modules / "CRCSegmentation" / "Resources" / "Models").resolve()))
    assert found["segment"] and not found["training_loaded"]
    assert found["shape"] == found["ct_shape"] and found["voxels"] > 0  # the demo model finds "tumor" in the OOI


# --- Slicer: a built extension installs what the modules read --------------------------------------
def cmake_install_lists(cmake_file: Path) -> Set[str]:
    """The files ``slicerMacroBuildScriptedModule`` installs: its SCRIPTS and RESOURCES, variables and globs evaluated."""
    text = re.sub(r"#[^\n]*", "", cmake_file.read_text())
    root = cmake_file.parent
    variables: Dict[str, List[str]] = {}

    def expand(words: List[str]) -> List[str]:
        out: List[str] = []
        for word in words:
            while True:
                reference = re.search(r"\$\{(\w+)\}", word)
                if reference is None:
                    break
                values = variables.get(reference.group(1), [])
                if word == reference.group(0):  # a whole-word list variable
                    out.extend(values)
                    word = ""
                    break
                word = word.replace(reference.group(0), " ".join(values))
            if word:
                out.append(word)
        return out

    for command, body in re.findall(r"(\w+)\s*\(([^)]*)\)", text):
        words = body.split()
        if command == "set" and words:
            variables[words[0]] = expand(words[1:])
        elif command == "file" and words and words[0] in ("GLOB", "GLOB_RECURSE"):
            name, patterns = words[1], [w for w in expand(words[2:]) if w not in ("RELATIVE", "CONFIGURE_DEPENDS")
                                         and not w.startswith(str(root))]
            matches: List[str] = []
            for pattern in patterns:
                candidates = root.rglob("*") if words[0] == "GLOB_RECURSE" else root.glob(pattern)
                for path in candidates:
                    relative = path.relative_to(root).as_posix()
                    if path.is_file() and fnmatch.fnmatch(relative, pattern) and "__pycache__" not in relative:
                        if words[0] == "GLOB" or relative.startswith(pattern.split("*")[0]):
                            matches.append(relative)
            variables[name] = sorted(set(matches))
        elif command == "slicerMacroBuildScriptedModule":
            installed: Set[str] = set()
            section = None
            for word in words:
                if word in ("NAME", "SCRIPTS", "RESOURCES", "WITH_GENERIC_TESTS"):
                    section = word
                elif section in ("SCRIPTS", "RESOURCES"):
                    installed.update(expand([word]))
            return installed
    raise AssertionError(f"{cmake_file}: no slicerMacroBuildScriptedModule")


def runtime_files(module: str) -> Set[str]:
    """What the module reads at run time: its code, its UI and icon, and (CRCSegmentation) its catalogue and models."""
    folder = MODULES[module]
    files = {f"{module}.py", f"Resources/UI/{module}.ui", f"Resources/Icons/{module}.png"}
    files |= {p.relative_to(folder).as_posix() for p in python_files(folder / f"{module}Lib")}
    if module == "CRCSegmentation":
        from CRCSegmentationLib.core.resources import CATALOGUE_NAME, catalogue_file
        from CRCSegmentationLib.models.catalogue import list_models

        catalogue = catalogue_file()
        files.add(f"Resources/{CATALOGUE_NAME}")
        for entry in list_models(catalogue):
            if entry.path:
                shipped = catalogue.parent / entry.path
                files |= {p.relative_to(folder).as_posix() for p in shipped.rglob("*") if p.is_file()}
    return files


@pytest.mark.parametrize("module", sorted(MODULES))
def test_cmake_installs_every_file_the_module_reads(module):
    installed = cmake_install_lists(MODULES[module] / "CMakeLists.txt")
    needed = runtime_files(module)
    assert needed <= installed, sorted(needed - installed)
    missing_on_disk = [f for f in installed if not (MODULES[module] / f).is_file()]
    assert not missing_on_disk, missing_on_disk


def test_the_cmake_reader_sees_a_file_left_out(tmp_path):
    (tmp_path / "M" / "MLib" / "sub").mkdir(parents=True)
    for name in ("M.py", "MLib/a.py", "MLib/sub/b.py"):
        (tmp_path / "M" / name).write_text("")
    cmake = tmp_path / "M" / "CMakeLists.txt"
    cmake.write_text("set(MODULE_NAME M)\nfile(GLOB LIB RELATIVE ${CMAKE_CURRENT_SOURCE_DIR} ${MODULE_NAME}Lib/*.py)\n"
                     "slicerMacroBuildScriptedModule(NAME M SCRIPTS ${MODULE_NAME}.py ${LIB} RESOURCES)\n")
    assert cmake_install_lists(cmake) == {"M.py", "MLib/a.py"}  # a plain GLOB misses the sub-package
    cmake.write_text(cmake.read_text().replace("file(GLOB ", "file(GLOB_RECURSE "))
    assert cmake_install_lists(cmake) == {"M.py", "MLib/a.py", "MLib/sub/b.py"}


def cmake_source(path: Path) -> str:
    """CMake text without comments, ``${MODULE_NAME}`` expanded."""
    text = "\n".join(line.split("#", 1)[0] for line in path.read_text(encoding="utf-8").splitlines())
    match = re.search(r"set\(\s*MODULE_NAME\s+(\w+)\s*\)", text)
    return text.replace("${MODULE_NAME}", match.group(1)) if match else text


def test_extension_cmakelists_declares_modules_and_dependencies():
    text = cmake_source(REPO / "CMakeLists.txt")
    assert re.search(r"cmake_minimum_required\(VERSION 3\.16\.3\.\.\.3\.19\.7 FATAL_ERROR\)", text)
    assert re.search(r"project\(SlicerCRC\)", text)
    depends = re.search(r"set\(EXTENSION_DEPENDS\s+([^)]*)\)", text)
    assert depends and set(depends.group(1).split()) == {"PyTorch", "NNUNet", "TotalSegmentator"}
    for variable in ("CATEGORY", "CONTRIBUTORS", "DESCRIPTION"):
        assert re.search(rf"set\(EXTENSION_{variable}\s", text), variable
    # URLs are real or left out: no template placeholders (there is no public repository yet).
    for variable in ("HOMEPAGE", "ICONURL", "SCREENSHOTURLS"):
        for url in re.findall(rf"set\(EXTENSION_{variable}\s+\"([^\"]*)\"", text):
            assert url.startswith("https://") and "example.com" not in url and "/Extensions/SlicerCRC" not in url, url
    description = re.search(r'set\(EXTENSION_DESCRIPTION\s+"([^"]*)"', text).group(1)
    assert "Apache-2.0" in description and (REPO / "LICENSE").read_text().lstrip().startswith("Apache License")
    for missing in ("RCSegNeXt", "SANet", "HCF"):  # not implemented yet: the metadata must not claim them
        assert missing not in description
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in text, line
    for module in MODULES:
        assert f"add_subdirectory({module})" in text


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_cmakelists_registers_the_module_and_its_test(module):
    """Which files it installs is checked by test_installation.py (globs evaluated); here, the macros."""
    folder = REPO / module
    text = cmake_source(folder / "CMakeLists.txt")
    assert "slicerMacroBuildScriptedModule(" in text
    assert re.search(rf"slicer_add_python_unittest\(\s*SCRIPT\s+{module}\.py\s*\)", text)
    tokens = set(re.findall(r"[\w./-]+\.(?:py|ui|png|json)\b", text))
    assert f"{module}.py" in tokens
    for token in tokens:
        if "*" not in token:
            assert (folder / token).is_file(), f"{module}/CMakeLists.txt lists missing file {token}"
    assert f"Resources/Icons/{module}.png" in tokens
