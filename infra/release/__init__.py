"""The release artifact, built on the control machine: the project's wheel plus a wheelhouse
of its locked dependencies for one target Python and platform."""

from infra.release.build import Release, Target, build_release

__all__ = ["Release", "Target", "build_release"]
