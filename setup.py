from setuptools import setup
setup(cffi_modules=["build_fastscan.py:ffibuilder"], install_requires=["cffi>=1.12"])
