"""The method's core imports nothing but torch, numpy and itself (docs/development.md, "Layout")."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import textwrap

import nnunet_csse.method

BLOCKED = ("nnunetv2", "dynamic_network_architectures", "batchgenerators", "acvl_utils", "scipy", "matplotlib",
           "SimpleITK")


def core_modules() -> list[str]:
    return [f"nnunet_csse.method.{m.name}" for m in pkgutil.iter_modules(nnunet_csse.method.__path__)]


def test_the_core_has_the_method_modules():
    assert set(core_modules()) >= {f"nnunet_csse.method.{m}" for m in
                                   ("uafs", "receptive_field", "anchors", "pdcr", "settings")}


def test_the_core_imports_without_nnunet_or_the_glue():
    """Every core module imports in a fresh interpreter where nnU-Net, its network library and every other
    module of this package raise ImportError."""
    script = textwrap.dedent(f"""
        import importlib, importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                top = name.split(".")[0]
                glue = name.startswith("nnunet_csse.") and not name.startswith("nnunet_csse.method")
                if top in {BLOCKED!r} or glue:
                    raise ImportError(f"blocked: {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        for module in {core_modules()!r}:
            importlib.import_module(module)
        loaded = sorted(m for m in sys.modules if m.startswith("nnunet_csse"))
        print(" ".join(loaded))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = proc.stdout.split()
    assert set(loaded) == {"nnunet_csse", "nnunet_csse.method", *core_modules()}


def test_the_blocker_would_catch_an_upward_import():
    """The same blocker refuses the glue, so the test above cannot pass by accident."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {BLOCKED!r}:
                    raise ImportError(f"blocked: {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        import nnunet_csse.network
    """)], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "blocked: dynamic_network_architectures" in proc.stderr
