"""istio-iptables: a Python drop-in replacement for Istio's istio-init container.

When the image built the init path's bundle (bundle.py says why and how), the finder
below serves those modules from it; without the file, nothing changes.
"""

import os
import sys

__version__ = "0.1.0"
BUNDLE_NAME = f"init-path.{sys.implementation.cache_tag}.bundle"
BUNDLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__", BUNDLE_NAME)
BUNDLE_FORMAT = "istio-iptables bundle 2"  # bundle.py writes (BUNDLE_FORMAT, -O level, modules)


def _serve_bundle() -> None:
    """Put a finder for the bundle's modules first on sys.meta_path, if there is one."""
    import marshal

    try:
        with open(BUNDLE_PATH, "rb") as handle:
            form, optimize, entries = marshal.loads(handle.read())
    except (OSError, ValueError, EOFError, TypeError):  # none, unreadable or damaged: import as usual
        return
    if form != BUNDLE_FORMAT or optimize != sys.flags.optimize:  # `python -O` reads its own pycs
        return
    spec_class = type(sys.__spec__)  # importlib's ModuleSpec, without importing importlib

    class BundleFinder:
        """Finder and loader of the bundle's modules, each checked against its source."""

        @staticmethod
        def find_spec(name: str, path: object = None, target: object = None) -> object:
            entry = entries.get(name)
            if entry is None:
                return None
            origin, package, mtime, size = entry[:4]
            try:
                st = os.stat(origin)
            except OSError:
                return None
            # Whole seconds, as a pyc's check: image layers keep no finer mtimes.
            if int(st.st_mtime) != mtime or st.st_size != size:
                del entries[name]  # the source changed: the path finder compiles it
                return None
            # No has_location: importlib would then work out __cached__, the pyc's path
            # (~10 K instructions a module); exec_module sets __file__ itself.
            spec = spec_class(name, BundleFinder, origin=origin, is_package=package)  # type: ignore[arg-type]
            if package:
                spec.submodule_search_locations = [os.path.dirname(origin)]
            return spec

        @staticmethod
        def create_module(spec: object) -> None:
            return None

        @staticmethod
        def exec_module(module: object) -> None:
            entry = entries.pop(module.__name__)  # type: ignore[attr-defined]
            module.__file__ = entry[0]  # type: ignore[attr-defined]
            exec(entry[4], module.__dict__)

    sys.meta_path.insert(0, BundleFinder)  # type: ignore[arg-type]


_serve_bundle()
