"""Package data the Lib reads at run time, for wheels (all other metadata is in pyproject.toml).

In a checkout, Slicer's "Additional module paths" and an installed extension, the CRCSegmentation
module's run-time files sit in ``CRCSegmentation/Resources`` beside its Lib. A wheel has no such
folder beside the package, so the build copies them into the package as ``CRCSegmentationLib/Resources``,
where ``CRCSegmentationLib.core.resources`` looks first.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

MODULE_RESOURCES = Path(__file__).resolve().parent / "CRCSegmentation" / "Resources"
RUNTIME_RESOURCES = ("models.json", "Models",  # the model catalogue and the shipped models
                     "SegmentationCategoryTypeModifier-SlicerCRC.term.json")  # the segment codes, for Slicer


class BuildPyWithModuleResources(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "CRCSegmentationLib" / "Resources"
        target.mkdir(parents=True, exist_ok=True)
        for name in RUNTIME_RESOURCES:
            source = MODULE_RESOURCES / name
            if source.is_dir():
                shutil.copytree(source, target / name, dirs_exist_ok=True)
            else:
                shutil.copy2(source, target / name)


setup(cmdclass={"build_py": BuildPyWithModuleResources})
