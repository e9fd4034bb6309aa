"""setuptools reads metadata from setup.cfg; cffi_modules must reach setup() itself
(setuptools ignores it in setup.cfg).  The C scanner is optional: without a
compiler the install still succeeds and netsnoop runs on its pure-Python scanner."""
from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def run(self):
        try:
            build_ext.run(self)
        except Exception as err:            # no compiler, no headers: go on without C
            self.warn("netsnoop: C scanner not built (%s); the pure-Python one will run" % err)

    def build_extension(self, ext):
        try:
            build_ext.build_extension(self, ext)
        except Exception as err:
            self.warn("netsnoop: C scanner not built (%s); the pure-Python one will run" % err)


setup(cffi_modules=["build_fastscan.py:ffibuilder"], install_requires=["cffi>=1.12"],
      cmdclass={"build_ext": OptionalBuildExt})
