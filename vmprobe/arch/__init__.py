"""What differs per guest architecture: QEMU, console, gdb names, compilers, probe-site bytes.

Every architecture difference lives in one :class:`ArchProfile` (``profiles``), with a
site decoder per arch (``sites``); the machine, gdb, module builds and the probe check
read it instead of testing arch names. This package sits at the bottom of the layers.
"""
from vmprobe.arch.profiles import PROFILES, ArchProfile, image_problem, profile_by_name, profile_for, profile_where
from vmprobe.arch.sites import SITE_WINDOW, Arm64Sites, Mechanism, Site, SiteDecoder, X86Sites, agrees_with_flags

__all__ = ["PROFILES", "SITE_WINDOW", "ArchProfile", "Arm64Sites", "Mechanism", "Site", "SiteDecoder",
           "X86Sites", "agrees_with_flags", "image_problem", "profile_by_name", "profile_for",
           "profile_where"]
