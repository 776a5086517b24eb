"""The release artifacts, built on the control machine: the project's wheel, and a dependency
layer (a wheelhouse of the locked dependencies for one target Python and platform)."""

from infra.release.build import Release, Target, build_release

__all__ = ["Release", "Target", "build_release"]
